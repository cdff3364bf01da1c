"""A genome-scale screen to run the whole analysis on: up to 10,000 KDs, a planted truth, a model small enough for
2 CPU cores (issue 21's world).

The demo's world scaled up, built rather than trained (`known_answers`' construction: a real
`StateTransitionPerturbationModel` whose weights are set by hand, GPT2 blocks that are identities on the residual
stream, a final LayerNorm kept linear by a large basal offset, a Linear → ReLU → Linear output head):

- KDs are real gene symbols, the genes of the bundled GO biological-process library. Modules are GO terms, disjoint,
  their sizes drawn log-normal (median `MODULE_MEDIAN`, clipped to [`MODULE_MIN`, `MODULE_MAX`]) and taken from the
  terms of about that size, until `CLUSTERED_SHARE` of the KDs belong to one; the other KDs are the long tail of
  weak effects. So the KD-target enrichment of a cluster should name its module's term.
- p_k = a_k·m_module + β·v_k for a module KD (a_k ~ U(0.8, 1.2), m orthonormal module directions, v_k a random unit
  direction of the KD-specific subspace, β = `KD_SPECIFIC`), and p_k = `WEAK_SCALE`·v_k for a weak KD.
- The head has one unit per module, open only for its KDs (input a_k − 0.4 > 0), writing the module's response
  programme; `OPEN_UNITS` units open for every KD read the KD-specific subspace and write small random deviations.
  So J_k = W2·diag(module unit of k, open units)·W1: routing common to every KD plus a part shared within each
  module → the planted answer is cluster circuits, geometry used (the module centroid opens the module's unit).

The KD order is one seeded permutation of all `N_KDS` KDs, so a screen of K KDs holds the first K of it: screens of
1,000, 3,000 and 10,000 KDs are nested (the cost curve of `benchmarks/bench_scale.py`). The .h5ad holds control
cells and `PERTURBED_CELLS` cells per KD (names only: below the quality stage's minimum, so Part 0 lists every KD
as unscored rather than running cell-eval on 10,000 KDs).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import GENESETS_DIR, AnalysisConfig, load_config
from ..store import cache
from . import demo, known_answers
from .known_answers import PROGRAMME_NORM, PlantedModel

N_KDS = 10_000  # the largest screen; smaller ones are its first K KDs
HIDDEN = 64  # H (and the head's width: modules + OPEN_UNITS ≤ H; module directions + KD-specific subspace = H − 3)
N_GENES = 150  # G, output genes (real symbols from the demo world)
N_MODULES = 48  # at most; the draw below stops at CLUSTERED_SHARE (47 modules)
OPEN_UNITS = 12
MODULE_MEDIAN, MODULE_MIN, MODULE_MAX = 130, 10, 500  # module sizes (KDs) in the full screen
CLUSTERED_SHARE = 0.55  # share of the 10,000 KDs in a module (above half: the weak-effect rule is × the median ‖ΔY‖)
KD_SPECIFIC = 0.5  # β
WEAK_SCALE = 0.15
PERTURBED_CELLS = 2
N_CONTROLS = 200
WORLD_SEED = 0


@functools.lru_cache(maxsize=2)
def _modules(seed: int = WORLD_SEED) -> tuple[tuple, tuple]:
    """(kd_names [N_KDS], kd_module [N_KDS]) in the screen's seeded order; module "" for the weak tail."""
    import gseapy

    library = gseapy.read_gmt(str(GENESETS_DIR / "GO_Biological_Process_2021.gmt"))
    rng = np.random.default_rng(seed)
    terms = sorted(library)
    sizes = {t: len(set(library[t])) for t in terms}
    used: set[str] = set()
    members: dict[str, list[str]] = {}
    target_total = CLUSTERED_SHARE * N_KDS
    while len(members) < N_MODULES and sum(len(m) for m in members.values()) < target_total:
        want = int(np.clip(rng.lognormal(np.log(MODULE_MEDIAN), 0.7), MODULE_MIN, MODULE_MAX))
        near = [t for t in terms if t not in members and 0.8 * want <= sizes[t] <= 1.25 * want]
        for term in rng.permutation(near):
            genes = sorted(set(library[term]) - used)
            if len(genes) >= 0.6 * sizes[term] and len(genes) >= MODULE_MIN:  # mostly new genes: modules stay disjoint
                members[term] = genes
                used |= set(genes)
                break
    pool = sorted({g for genes in library.values() for g in genes} - used)
    n_weak = N_KDS - len(used)
    weak = list(rng.choice(pool, size=n_weak, replace=False))
    names = [g for term in members for g in members[term]] + weak
    modules = [term for term in members for _ in members[term]] + [""] * n_weak
    order = rng.permutation(len(names))
    return tuple(names[i] for i in order), tuple(modules[i] for i in order)


def planted_screen(n_kds: int, seed: int = 0) -> PlantedModel:
    """The p-space weights of the screen's first `n_kds` KDs (module docstring)."""
    if not 10 <= n_kds <= N_KDS:
        raise ValueError(f"n_kds must be in [10, {N_KDS}], got {n_kds}")
    all_names, all_modules = _modules(WORLD_SEED)
    kd_names, kd_module = all_names[:n_kds], all_modules[:n_kds]
    terms = sorted({m for m in all_modules if m})
    rng = np.random.default_rng([seed, 21])
    # orthonormal p-space basis, zero on the offset coordinates 0 and 1 and zero-mean (as known_answers')
    raw = rng.normal(size=(HIDDEN, HIDDEN - 3))
    raw[:2] = 0.0
    raw[2:] -= raw[2:].mean(axis=0)
    basis = np.linalg.qr(raw)[0].T  # [H − 3, H]
    module_dirs, specific = basis[:len(terms)], basis[len(terms):]
    genes = tuple(demo.build_world(WORLD_SEED).gene_names[:N_GENES])
    programmes = rng.normal(size=(len(terms), N_GENES)) * (rng.random((len(terms), N_GENES)) < 0.2)
    programmes *= PROGRAMME_NORM / np.linalg.norm(programmes, axis=1, keepdims=True)

    full_v = rng.normal(size=(N_KDS, len(specific)))  # drawn for all 10,000 so nested screens share them
    full_a = rng.uniform(0.8, 1.2, size=N_KDS)
    v = (full_v / np.linalg.norm(full_v, axis=1, keepdims=True))[:n_kds] @ specific
    index = {t: j for j, t in enumerate(terms)}
    in_module = np.array([m != "" for m in kd_module])
    module_index = np.array([index.get(m, 0) for m in kd_module])
    pert_repr = np.where(in_module[:, None], full_a[:n_kds, None] * module_dirs[module_index] + KD_SPECIFIC * v,
                         WEAK_SCALE * v)

    w1, b1, w2 = np.zeros((HIDDEN, HIDDEN)), np.full(HIDDEN, -1.0), np.zeros((N_GENES, HIDDEN))
    unit_kind = ["off"] * HIDDEN
    for j, term in enumerate(terms):
        w1[j], b1[j], w2[:, j], unit_kind[j] = module_dirs[j], -0.4, programmes[j], f"module:{term}"
    for i in range(OPEN_UNITS):
        u = len(terms) + i
        direction = rng.normal(size=len(specific)) @ specific
        column = rng.normal(size=N_GENES)
        w1[u], b1[u] = direction / np.linalg.norm(direction), 3.0
        w2[:, u], unit_kind[u] = 0.3 * PROGRAMME_NORM * column / np.linalg.norm(column), f"open:{i}"
    planted = PlantedModel("screen", tuple(kd_names), tuple(m or "weak" for m in kd_module), genes, pert_repr, w1,
                           b1, w2, tuple(unit_kind), seed)
    _check_gating(planted)
    return planted


def _check_gating(planted: PlantedModel) -> None:
    """Every KD opens its module's unit (none for a weak KD) and every open unit; the control opens the open units
    only."""
    on = planted.pert_repr @ planted.w1.T + planted.b1 > 0  # [K, U]
    kinds = np.array(planted.unit_kind)
    is_open = np.char.startswith(kinds.astype(str), "open:")
    for k, module in enumerate(planted.kd_module):
        expected = is_open | (kinds == f"module:{module}")
        if not np.array_equal(on[k], expected):
            raise AssertionError(f"screen: KD {planted.kd_names[k]} opens {sorted(kinds[on[k]])}")
    if not np.array_equal(planted.b1 > 0, is_open):
        raise AssertionError("screen: the control opens a module unit")


# Statistics sized for K up to 10,000 on 2 cores: 64 KDs and all H directions per JVP call (a small model's chunks
# are cheap; more rows per call amortise its per-op cost), few clustering bootstraps and permutations.
STATISTICS = dict(set_size=0, n_draws=1, shard_kds=512, kds_per_call=64, tangents_per_call=HIDDEN,
                  n_permutations=199, n_bootstrap=20, cluster_bootstrap=5, prerank_permutations=100,
                  max_clusters=N_MODULES + 10, device="cpu", dtype="float32")


def config_text(n_kds: int) -> str:
    """The screen's TOML (relative paths)."""
    return known_answers.planted_config_text(
        f"Genome-scale screen written by analysis.datasets.screen ({n_kds} KDs; weights set by hand, see truth/).",
        "cells.h5ad", STATISTICS)


def build_screen(folder, n_kds: int = N_KDS, seed: int = 0, **overrides) -> AnalysisConfig:
    """Write the screen of the first `n_kds` KDs into `folder` (run/, cells.h5ad, truth/, screen.toml) and return
    its config (`overrides` replace config fields)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planted = planted_screen(n_kds, seed)
    known_answers.write_planted_run(planted, folder / "run", f"screen-{n_kds}",
                                    {"screen": {"n_kds": n_kds, "seed": seed}}, seed)
    rng = np.random.default_rng(seed + 1)
    world = demo.build_world(WORLD_SEED)
    sub = demo.DemoWorld(planted.gene_names, world.kd_names, world.kd_module, world.true_delta[:, :N_GENES],
                         world.gene_log_mean[:N_GENES], seed)
    controls = demo.simulate_cells(sub, np.zeros(N_GENES), N_CONTROLS, rng)
    perturbed = dict(zip(planted.kd_names, demo.simulate_cells(sub, np.zeros(N_GENES), PERTURBED_CELLS * n_kds, rng)
                         .reshape(n_kds, PERTURBED_CELLS, N_GENES)))
    demo.write_h5ad(planted.gene_names, {demo.CELL_LINE: (controls, perturbed)}, folder / "cells.h5ad")
    truth = folder / "truth"
    truth.mkdir(exist_ok=True)
    cache.write_parquet(truth / "kd_modules.parquet", pd.DataFrame({"kd": planted.kd_names, "module": planted.kd_module}))
    (folder / "screen.toml").write_text(config_text(n_kds))
    return load_config(folder / "screen.toml", **overrides)
