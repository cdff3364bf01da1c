"""Known answers: arc-state models whose routing is planted by hand, so the verdict is known in advance.

Each model is a real `StateTransitionPerturbationModel` (GPT2 backbone, one-hot perturbations, the
model's own `forward`), built small and with weights set by hand — no training. It is written as a
`state tx train` run directory plus a control-cell `.h5ad`, so it goes through the same loader,
Jacobian engine, statistics and verdict as a user's run.

The construction makes the forward pass a known, almost linear function of pert_repr p:

- GPT2 blocks are identities on the residual stream (every `attn.c_proj` and `mlp.c_proj` zeroed).
- The basal encoder (a Linear, `use_basal_projection=False`) has zero weight and bias
  c = (+L, −L, 0, …, 0), L = `OFFSET`. Every p is zero-mean and zero on coordinates 0 and 1, so the
  final LayerNorm gives LN(c + p) = (c + p)·σ(p)⁻¹ with σ(p)² = (2L² + ‖p‖²)/H: linear in p to a
  relative error ‖p‖²/(4L²) ≈ 1e-5.
- `project_out` is Linear(H→H) → ReLU → Linear(H→G). Its first layer reads p through rows written
  in p-space and scaled by σ(0) (zero on the offset coordinates, so the residual c added again by
  `predict_residual` is ignored); each hidden unit is a ReLU gate; the final bias `OUTPUT_BIAS`
  keeps the model's own ReLU in gene space inactive.

So ΔY_k = W2·relu(W1 p_k + b1) and J_k = W2·diag(unit k is on)·W1 (up to the LayerNorm's tiny
curvature). The three kinds (K = 40 KDs of 5 real pathway modules, real gene symbols and response
programmes from the demo world, `analysis.demo.build_world`):

- "positive" (Model B): p_k = a_k·m_module + β·v_k. One hidden unit per module, gated on the module
  direction m (only that module's KDs open it), writes the module's response programme; a weaker
  per-KD unit gated on v_k adds a KD-specific deviation. J_k is shared within modules → C_jac tracks
  C_out → expected call "cluster circuits".
- "negative" (Model A): p_k = a_k·m_module + β·u_k — the encoder geometry clusters by module — but
  the output is a per-KD lookup: one hidden unit per KD gated on u_k only (u_k ⟂ every m, near-
  orthonormal across KDs), writing module programme + KD noise. Outputs cluster by module, yet
  J_k = w_k·u_kᵀ has near-orthogonal input directions across KDs, so C_jac ≈ 0 off the diagonal →
  expected call "per-KD".
- "random": random embeddings and a per-KD lookup with random output columns; no structure →
  expected call "per-KD" (or "inconclusive": there is nothing to rule out but noise).
- "keyed": the construct's blind spot. Embeddings as in "negative" (β = 1), and a per-KD lookup whose gate reads
  the KD's *own embedding* p_k (not a direction orthogonal to the modules): J_k = w_k ⊗ p_k/‖p_k‖², so
  C_jac = C_out ⊙ C_rep, which tracks C_out because C_rep clusters by module → expected "cluster circuits", which the
  verdict qualifies with its caveat: local Jacobians cannot tell this lookup from shared routing.
- "keyed-smooth": the same lookup with wide gates (each unit opens at 0.3 of its key's response, so the KDs of a module
  open each other's units): a kernel smoother over the module's embeddings. Routing is shared within modules and the
  module's centroid opens the same units → "cluster circuits", geometry used. The tests cannot tell it from shared
  routing, because functionally it is shared routing; the sharp "keyed" lookup they do tell apart (its module
  centroid opens no unit, so substitution collapses).
- "degenerate": every hidden unit open for every KD (a linear decoder), so J_k = W2·W1 for all k and C_jac ≈ 1:
  the model routes every KD the same way while ΔY still clusters by module → expected "global readout" (the
  KD-specific share of the Jacobian energy, 2.5e-6 from the final LayerNorm's curvature and float32, is below the floor —
  though that remainder still follows the modules).

- "unreliable": KD-specific routing that is pure draw-to-draw noise. The basal encoder reads one designed input
  value z_i of each control cell (evenly spaced, one cell per step) into a p-space direction e_z orthogonal to
  every p_k, so a unit can gate on the cell. Besides a linear decoder (every unit open for every KD, as in
  "degenerate": the common component), each of `NOISE_UNITS` clamp units (relu(x) − relu(x − w): open only while
  its input lies in a window of width w) reads p through a direction a_u set so that, for KD k, exactly one control
  cell c(u, k) — a different one for each KD, drawn at random — falls in the window. J_k's KD-specific part is
  Σ_u (share of the drawn cells that are c(u, k))·w2_u ⊗ w1_u: every KD has the same expected Jacobian (one cell in
  each unit's window), and which units a draw opens for which KD is chance, so C_jac^spec does not reproduce
  between halves of the control draws → expected "unreliable" (run with `n_draws` = 2: two halves of SET_SIZE cells).

The planted truth (module of each KD, planted pert_repr, unit layout, the cells' designed values) is written beside
the run.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import DEFAULT_CONFIG, AnalysisConfig, load_config
from ..model.state import build
from ..store import cache
from . import demo

KINDS = ("positive", "negative", "random", "keyed", "keyed-smooth", "degenerate", "unreliable")
# The calls each kind may receive: "random" has no structure to rule out beyond noise, so "inconclusive" is right too.
EXPECTED_CALLS = {"positive": {"cluster circuits"}, "negative": {"per-KD"}, "random": {"per-KD", "inconclusive"},
                  "keyed": {"cluster circuits"}, "keyed-smooth": {"cluster circuits"}, "degenerate": {"global readout"},
                  "unreliable": {"unreliable"}}
# What the interventions must say of each kind's encoder geometry (`Verdict.use`): a linear readout uses it; a
# lookup keyed on each KD's own embedding, sharply gated, does not; gated widely, it interpolates over the module.
# "unreliable" responds through the degenerate kind's linear map (its clamp units only add draw-to-draw noise).
EXPECTED_USES = {"positive": "used", "negative": "not used", "random": "not used", "keyed": "not used",
                 "keyed-smooth": "used", "degenerate": "used", "unreliable": "used"}
SMOOTH_GATE = 0.3  # "keyed-smooth": a unit opens at this share of its own key's input (module mates give ≈ 0.5)

MODULES = ("cytosolic_ribosome", "mitoribosome", "TRAPP", "proteasome", "MYC", "spliceosome", "mediator")
# Up to 24 KDs of each module (K = 116, modules of 7 to 24 KDs): enough KDs that a negative can be *shown* (the
# jackknife SE of a Mantel r shrinks like 1/√K; at K = 40 no bound gets below a 0.1 smallest effect of interest).
KDS_PER_MODULE = 24
HIDDEN = 144  # H: pert_repr width, GPT2 n_embd and project_out's hidden width (≥ K + modules + 3)
N_GENES = 300  # G
GENES_PER_MODULE = 30  # top programme genes of each module kept among the outputs
SET_SIZE = 8  # S
OFFSET = 100.0  # L: the basal offset that makes the final LayerNorm ~linear in p
OUTPUT_BIAS = 20.0  # keeps the model's ReLU in gene space inactive
PROGRAMME_NORM = 3.0  # ‖module response programme‖ in log-expression units
WORLD_SEED = 0  # the demo world the genes and programmes come from (the model's `seed` varies the geometry)
MAX_OVERLAP = 0.35  # largest |cos| allowed between two KD-specific directions (gating margin)

# Settings that keep one full pipeline run to about a minute on 2 CPU cores (one control draw: the planted models
# ignore the control cells by construction, so more draws would only repeat the same Jacobian).
STATISTICS = dict(set_size=0, n_draws=1, shard_kds=16, kds_per_call=8, n_permutations=999, n_bootstrap=200,
                  cluster_bootstrap=10, prerank_permutations=500, max_clusters=8, device="cpu", dtype="float32")
# The "unreliable" model reads the control cells: two draws, split in two halves of SET_SIZE cells each.
N_DRAWS = {"unreliable": 2}

# The "unreliable" kind's cell gate (module docstring).
N_CONTROLS = 200  # control cells written, z_i = a permutation of 0, 1/CELL_STEPS, … (one cell per step)
CELL_STEPS = 100.0  # steps of z per unit
CELL_GAIN = 0.5  # κ: the basal encoder writes κ·z_i along e_z (‖κ·z·e_z‖ ≤ 1 ≪ OFFSET: the LayerNorm stays linear)
GATE_STEP = 1.0  # a clamp unit's input moves by this between consecutive cells (s = GATE_STEP·CELL_STEPS per unit z)
GATE_WIDTH = 0.5  # w: the clamp window, half a step, so it holds exactly one cell with a margin of a quarter step
NOISE_UNITS = 58  # clamp units (two ReLUs each)
NOISE_GAIN = 0.03  # ‖w2_u‖ / PROGRAMME_NORM of a clamp unit: KD-specific share of J ≈ 0.6 over all four draws
RANDOM_OPEN_UNITS = 20  # linear-decoder units reading random p directions (KD-specific deviations of ΔY)


@dataclass(frozen=True)
class PlantedModel:
    """Weights in p-space and the truth they plant.

    pert_repr [K, H] (row k = pert_encoder output of KD k; control = 0), w1 [U, H] and b1 [U] (project_out's
    first layer, before the LayerNorm scale), w2 [G, U]; unit_kind [U] names each hidden unit ("module:<m>",
    "kd:<name>" or "off"); kd_module [K].
    """

    kind: str
    kd_names: tuple
    kd_module: tuple
    gene_names: tuple
    pert_repr: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    unit_kind: tuple
    seed: int
    cell_weight: np.ndarray | None = None  # [U] each unit's input per unit of a control cell's designed value z
    cell_values: np.ndarray | None = None  # [N_CONTROLS] z of each control cell, in the order they are written
    cell_direction: np.ndarray | None = None  # [H] e_z, where the basal encoder writes z (⟂ every p_k)

    @property
    def expected_calls(self) -> set:
        return EXPECTED_CALLS[self.kind]

    @property
    def expected_use(self) -> str:
        return EXPECTED_USES[self.kind]

    def respond(self, p: np.ndarray, cells=None) -> np.ndarray:
        """The planted ΔY(p) [B, G] = W2 (h(p) − h(0)) for any representations p [B, H] (linear-LayerNorm
        approximation), averaged over the control cells `cells` (None: all)."""
        return (self.hidden(p, cells) - self.hidden(np.zeros(self.w1.shape[1]), cells)) @ self.w2.T

    def _pre(self, p: np.ndarray, cells) -> np.ndarray:
        """W1 p + b1 (+ the cell term) [N, .., U] over the control cells `cells` (indices; None: every control
        cell), N = 1 for the kinds that ignore the cells."""
        pre = p @ self.w1.T + self.b1
        if self.cell_values is None:
            return pre[None]
        z = self.cell_values if cells is None else self.cell_values[np.ravel(cells)]
        return pre[None] + z.reshape((-1,) + (1,) * pre.ndim) * self.cell_weight

    def hidden(self, p: np.ndarray, cells=None) -> np.ndarray:
        """relu(W1 p + b1 (+ cell term)) [.., U] averaged over the cells (the exact-linear approximation of the
        model's first decoder layer)."""
        return np.maximum(self._pre(p, cells), 0.0).mean(axis=0)

    def delta_y(self, cells=None) -> np.ndarray:
        """Planted ΔY [K, G] = W2 (h(p_k) − h(0)) in the linear-LayerNorm approximation, averaged over the control
        cells `cells` (indices, any shape; None: all)."""
        return self.respond(self.pert_repr, cells)

    def open_shares(self, cells=None, path: np.ndarray | None = None) -> np.ndarray:
        """[K, U] the share of the control cells `cells` on which unit u is on for KD k, at p_k; with `path` (the
        fractions t_q of p_ctrl → p_k, [Q]) the mean of that share over the points t_q·p_k (p_ctrl = 0 here)."""
        if path is None:
            return (self._pre(self.pert_repr, cells) > 0).mean(axis=0)
        return np.mean([(self._pre(t * self.pert_repr, cells) > 0).mean(axis=0) for t in path], axis=0)

    def jacobians(self, cells=None) -> np.ndarray:
        """Planted J_k [K, G, H] = W2 diag(share of the cells on which unit u is on for KD k) W1 in the
        linear-LayerNorm approximation."""
        on = self.open_shares(cells)
        return (self.w2[None] * on[:, None, :]) @ self.w1

    def unit_products(self) -> np.ndarray:
        """[U, U] (W2ᵀW2) ∘ (W1W1ᵀ): for J_a = W2 diag(a) W1 and J_b likewise, the Frobenius ⟨J_a, J_b⟩ = aᵀ M b, so
        Grams of such Jacobians need no [K, G, H] array."""
        return (self.w2.T @ self.w2) * (self.w1 @ self.w1.T)


# ---------------------------------------------------------------- the planted world
@functools.lru_cache(maxsize=4)
def _programmes(seed: int = WORLD_SEED):
    """Output genes (real symbols) and one response programme per module, from the demo world."""
    world = demo.build_world(seed)
    modules = np.asarray(world.kd_module)
    signatures = np.stack([world.true_delta[modules == m].mean(axis=0) for m in MODULES])  # [M, 700]
    rng = np.random.default_rng(seed + 11)
    keep: list[int] = []
    for sig in signatures:
        keep += [int(i) for i in np.argsort(-np.abs(sig)) if i not in keep][:GENES_PER_MODULE]
    rest = np.setdiff1d(np.arange(len(world.gene_names)), keep)
    keep += [int(i) for i in rng.choice(rest, size=N_GENES - len(keep), replace=False)]
    genes = tuple(world.gene_names[i] for i in keep)
    programmes = signatures[:, keep]
    programmes *= PROGRAMME_NORM / np.linalg.norm(programmes, axis=1, keepdims=True)
    kd_names = tuple(kd for m in MODULES for kd in demo.MODULES[m][0][:KDS_PER_MODULE])
    kd_module = tuple(m for m in MODULES for _ in demo.MODULES[m][0][:KDS_PER_MODULE])
    return genes, programmes, kd_names, kd_module


def _p_space_basis(rng) -> np.ndarray:
    """Orthonormal rows [H − 3, H] spanning p-space: zero on the offset coordinates 0, 1 and zero-mean."""
    raw = rng.normal(size=(HIDDEN, HIDDEN - 3))
    raw[:2] = 0.0
    raw[2:] -= raw[2:].mean(axis=0)
    q, _ = np.linalg.qr(raw)
    return q.T


def _near_orthonormal(n: int, basis: np.ndarray, rng, mixing: float = 0.6) -> np.ndarray:
    """n unit vectors in span(basis) (rows), pairwise |cos| ≤ MAX_OVERLAP but not orthogonal: an orthonormal set
    mixed with random directions, so KD-specific directions overlap by chance as learnt ones would."""
    assert n <= basis.shape[0]
    for _ in range(100):
        rotation, _ = np.linalg.qr(rng.normal(size=(basis.shape[0], basis.shape[0])))
        vectors = rotation[:n] + mixing * rng.normal(size=(n, basis.shape[0])) / np.sqrt(basis.shape[0])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        overlap = np.abs(vectors @ vectors.T - np.eye(n)).max()
        if overlap <= MAX_OVERLAP:
            return vectors @ basis
    raise RuntimeError("could not draw near-orthonormal directions")  # pragma: no cover


def planted_model(kind: str, seed: int = 0) -> PlantedModel:
    """The p-space weights of one known-answer model (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    genes, programmes, kd_names, kd_module = _programmes(WORLD_SEED)
    programmes = programmes.copy()
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    n_kds, n_modules = len(kd_names), len(MODULES)
    module_index = np.array([MODULES.index(m) for m in kd_module])
    basis = _p_space_basis(rng)  # [H − 3, H]
    module_dirs = basis[:n_modules]  # m_j, orthonormal
    kd_dirs = _near_orthonormal(n_kds, basis[n_modules:-1], rng)  # ⟂ every m_j and the cell direction basis[-1]
    strength = rng.uniform(0.8, 1.2, size=n_kds)  # a_k

    w1 = np.zeros((HIDDEN, HIDDEN))
    b1 = np.full(HIDDEN, -1.0)  # unused units stay off
    w2 = np.zeros((N_GENES, HIDDEN))
    unit_kind = ["off"] * HIDDEN

    def kd_noise(scale):
        """A KD's own deviation: a random direction over 12 output genes, norm `scale`."""
        v = np.zeros(N_GENES)
        v[rng.choice(N_GENES, size=12, replace=False)] = rng.normal(size=12)
        return scale * v / np.linalg.norm(v)

    if kind == "positive":
        beta = 0.5
        pert_repr = strength[:, None] * module_dirs[module_index] + beta * kd_dirs
        for j, m in enumerate(MODULES):  # module units: open for the module's KDs only (a_k − 0.4 > 0)
            w1[j], b1[j], w2[:, j], unit_kind[j] = module_dirs[j], -0.4, programmes[j], f"module:{m}"
        gain = rng.uniform(0.9, 1.5, size=n_kds)  # per-KD unit gain g_k: how much of J_k is KD-specific varies by KD
        for k, kd in enumerate(kd_names):  # weaker per-KD units, open for KD k only: g_k·β − 0.35 > 0 > g_k·β·0.35 − 0.35
            u = n_modules + k
            w1[u], b1[u], w2[:, u], unit_kind[u] = gain[k] * kd_dirs[k], -0.35, kd_noise(0.6 * PROGRAMME_NORM), f"kd:{kd}"
    elif kind == "negative":
        beta = 0.6
        pert_repr = strength[:, None] * module_dirs[module_index] + beta * kd_dirs
        for k, kd in enumerate(kd_names):  # per-KD lookup gated on u_k only: module geometry is never read
            column = rng.uniform(0.8, 1.2) * programmes[module_index[k]] + kd_noise(0.4 * PROGRAMME_NORM)
            w1[k], b1[k], w2[:, k], unit_kind[k] = kd_dirs[k] / beta, -0.5, column / 0.5, f"kd:{kd}"
    elif kind == "random":  # random embeddings, per-KD lookup with random output columns
        pert_repr = rng.normal(size=(n_kds, basis.shape[0])) @ basis / np.sqrt(basis.shape[0]) * 1.2
        columns = rng.normal(size=(n_kds, N_GENES)) * PROGRAMME_NORM / np.sqrt(N_GENES)
        _keyed_lookup(pert_repr, columns, w1, b1, w2, unit_kind, kd_names)
    elif kind in ("keyed", "keyed-smooth"):
        pert_repr = strength[:, None] * module_dirs[module_index] + 1.0 * kd_dirs
        columns = np.stack([rng.uniform(0.8, 1.2) * programmes[module_index[k]] + kd_noise(0.4 * PROGRAMME_NORM)
                            for k in range(n_kds)])
        _keyed_lookup(pert_repr, columns, w1, b1, w2, unit_kind, kd_names,
                      SMOOTH_GATE if kind == "keyed-smooth" else None)
    elif kind == "degenerate":  # every unit open for every KD (and the control): a linear decoder, one J for all KDs
        pert_repr = strength[:, None] * module_dirs[module_index] + 0.5 * kd_dirs
        for j, m in enumerate(MODULES):
            w1[j], b1[j], w2[:, j], unit_kind[j] = module_dirs[j], 3.0, programmes[j], f"open:{m}"
        for k, kd in enumerate(kd_names):
            u = n_modules + k
            w1[u], b1[u], w2[:, u], unit_kind[u] = kd_dirs[k], 3.0, kd_noise(0.3 * PROGRAMME_NORM), f"open:{kd}"
    else:  # unreliable: a linear decoder plus clamp units gated on one control cell per KD (module docstring)
        pert_repr = strength[:, None] * module_dirs[module_index] + 0.5 * kd_dirs
        for j, m in enumerate(MODULES):
            w1[j], b1[j], w2[:, j], unit_kind[j] = module_dirs[j], 3.0, programmes[j], f"open:{m}"
        for i in range(RANDOM_OPEN_UNITS):
            u = n_modules + i
            direction = _unit_rows(rng.normal(size=n_kds) @ kd_dirs)
            w1[u], b1[u], w2[:, u], unit_kind[u] = direction, 3.0, kd_noise(0.3 * PROGRAMME_NORM), f"open:random{i}"
        cell_values = rng.permutation(N_CONTROLS) / CELL_STEPS
        cell_weight = np.zeros(HIDDEN)
        _clamp_units(pert_repr, cell_values, basis[-1], n_modules + RANDOM_OPEN_UNITS, rng, w1, b1, w2, cell_weight,
                     unit_kind)
        planted = PlantedModel(kind, kd_names, kd_module, genes, pert_repr, w1, b1, w2, tuple(unit_kind), seed,
                               cell_weight, cell_values, basis[-1])
        _check_gating(planted)
        return planted
    planted = PlantedModel(kind, kd_names, kd_module, genes, pert_repr, w1, b1, w2, tuple(unit_kind), seed)
    _check_gating(planted)
    return planted


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clamp_units(pert_repr, cell_values, cell_direction, first, rng, w1, b1, w2, cell_weight, unit_kind) -> None:
    """NOISE_UNITS clamp units from row `first` on, two ReLU rows each (x and x − w, written ±w2_u): unit u's input
    is x = a_u·p + γ·(e_z·p) + s·z + b_u, with s = GATE_STEP·CELL_STEPS per unit z (the model reads z through the
    basal encoder into e_z, scaled by γ, so s = γ·κ·(1 + σ₀): the LayerNorm's share and the residual's) and a_u in the
    span of the p_k, solved so that KD k's window (0, w) holds exactly the cell c(u, k) (distinct cells, random) and
    the control's holds none."""
    n_kds = len(pert_repr)
    scale = GATE_STEP * CELL_STEPS
    top = scale * cell_values.max()
    bias = -top - 10.0  # the control (p = 0): x ≤ −10 on every cell, its window is empty
    gram_inverse = np.linalg.inv(pert_repr @ pert_repr.T)
    sigma0 = np.sqrt(2 * OFFSET**2 / HIDDEN + 1e-5)
    gamma = scale / (CELL_GAIN * (1 + sigma0))
    for n in range(NOISE_UNITS):
        cells = rng.choice(len(cell_values), size=n_kds, replace=False)  # c(u, k)
        target = GATE_WIDTH / 2 - scale * cell_values[cells] - bias  # a_u·p_k, centring cell c(u, k) in the window
        row = pert_repr.T @ (gram_inverse @ target) + gamma * cell_direction
        column = NOISE_GAIN * PROGRAMME_NORM * _unit_rows(rng.normal(size=w2.shape[0]))
        for offset, (shift, sign) in enumerate(((0.0, 1.0), (GATE_WIDTH, -1.0))):
            u = first + 2 * n + offset
            w1[u], b1[u], w2[:, u], cell_weight[u] = row, bias - shift, sign * column, scale
            unit_kind[u] = f"clamp:{n}{'+' if sign > 0 else '-'}"


def _keyed_lookup(pert_repr, columns, w1, b1, w2, unit_kind, kd_names, gate: float | None = None) -> None:
    """Per-KD lookup units gated on each KD's own embedding: unit k reads p_k/‖p_k‖² (1 for KD k) and opens halfway
    between 1 and the largest input any other KD gives it (sharp), or at `gate` (wide); writes `columns[k]` (scaled
    so that KD k's own unit adds columns[k])."""
    norms = np.linalg.norm(pert_repr, axis=1)
    reach = (pert_repr / norms[:, None] ** 2) @ pert_repr.T - np.eye(len(pert_repr))  # [k, l]: unit k's input from KD l
    sharp = gate is None
    for k, kd in enumerate(kd_names):
        if sharp:
            gate = 0.5 * (1.0 + max(reach[k].max(), 0.0))
        w1[k], b1[k], w2[:, k], unit_kind[k] = pert_repr[k] / norms[k] ** 2, -gate, columns[k] / (1.0 - gate), f"kd:{kd}"


def _check_gating(planted: PlantedModel) -> None:
    """Every KD opens exactly its planted units (its module's unit, its own unit) and the control opens none;
    in the degenerate kind every KD and the control open every used unit; in "keyed-smooth" a KD opens its own unit
    and units of its module only; in the unreliable kind each clamp unit's window holds exactly one control cell for
    each KD, none for the control, with a margin of a fifth of a step."""
    if planted.kind == "unreliable":
        _check_windows(planted)
        return
    on = planted.pert_repr @ planted.w1.T + planted.b1 > 0  # [K, U]
    used = {u for u, name in enumerate(planted.unit_kind) if name != "off"}
    module_of = {f"kd:{kd}": m for kd, m in zip(planted.kd_names, planted.kd_module)}
    for k, kd in enumerate(planted.kd_names):
        if planted.kind == "keyed-smooth":
            opened = {planted.unit_kind[u] for u in np.flatnonzero(on[k])}
            if f"kd:{kd}" not in opened or any(module_of[u] != planted.kd_module[k] for u in opened):
                raise AssertionError(f"keyed-smooth: KD {kd} opens {sorted(opened)}")
            continue
        if planted.kind == "degenerate":
            expected = {planted.unit_kind[u] for u in used}
        else:
            expected = {f"kd:{kd}"} | ({f"module:{planted.kd_module[k]}"} if planted.kind == "positive" else set())
        opened = {planted.unit_kind[u] for u in np.flatnonzero(on[k])}
        if opened != expected:
            raise AssertionError(f"{planted.kind}: KD {kd} opens {sorted(opened)}, planted {sorted(expected)}")
    if planted.kind != "degenerate" and (planted.b1 > 0).any():
        raise AssertionError(f"{planted.kind}: the control opens a unit")


def _check_windows(planted: PlantedModel) -> None:
    names = np.asarray(planted.unit_kind)
    clamp, window = np.char.startswith(names, "clamp:"), np.char.endswith(names, "+")  # window: x (not x − w) rows
    p = np.concatenate([planted.pert_repr, np.zeros((1, planted.w1.shape[1]))])  # the KDs, then the control
    x = p @ planted.w1[window].T + planted.b1[window] + planted.cell_values[:, None, None] * planted.cell_weight[window]
    inside = (x > 0) & (x < GATE_WIDTH)  # [cells, K + 1, units]
    margin = np.minimum(np.abs(x), np.abs(x - GATE_WIDTH)).min()
    if not ((inside[:, :-1].sum(axis=0) == 1).all() and not inside[:, -1].any() and margin > 0.2 * GATE_STEP):
        raise AssertionError(f"unreliable: clamp windows do not hold one cell per KD (margin {margin:.3g})")
    opened = planted.pert_repr @ planted.w1[~clamp].T + planted.b1[~clamp] > 0
    used = names[~clamp] != "off"
    if not (opened[:, used].all() and (planted.b1[~clamp][used] > 0).all()):
        raise AssertionError("unreliable: a linear-decoder unit is closed for some KD or the control")


# ---------------------------------------------------------------- the arc-state model
def model_kwargs(hidden: int = HIDDEN, n_genes: int = N_GENES) -> dict:
    """`demo.demo_model_kwargs` scaled down: H = `hidden`, 1-layer encoder, 2-layer ReLU decoder, GPT2 with 2
    blocks."""
    kwargs = demo.demo_model_kwargs(n_genes, SET_SIZE)
    kwargs.update(hidden_dim=hidden, n_encoder_layers=1, n_decoder_layers=2, activation="relu",
                  transformer_backbone_kwargs=dict(n_positions=SET_SIZE, n_embd=hidden, n_layer=2, n_head=4,
                                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False))
    return kwargs


def build_model(planted: PlantedModel, seed: int = 0):
    """A StateTransitionPerturbationModel carrying the planted weights (its remaining weights random and inert);
    its sizes are the weights' (H from w1 [H, H], G from w2 [G, H])."""
    torch.manual_seed(seed)
    hidden, n_genes = planted.w1.shape[1], planted.w2.shape[0]
    model = build.construct_model(n_genes, len(planted.kd_names) + 1, model_kwargs(hidden, n_genes),
                                  planted.gene_names, control=demo.CONTROL)

    cell_input = None if planted.cell_values is None else CELL_GAIN * planted.cell_direction
    return build.plant_weights(model, planted.pert_repr, planted.w1, planted.b1, planted.w2, OFFSET, OUTPUT_BIAS,
                               cell_input)


# ---------------------------------------------------------------- writing a run
def write_planted_run(planted: PlantedModel, run_dir: Path, name: str, note: dict, seed: int = 0) -> None:
    """`run_dir` as `state tx train` writes it, for the model carrying `planted`'s weights (`build_model`)."""
    model = build_model(planted, seed)
    names = [demo.CONTROL] + list(planted.kd_names)
    eye = np.eye(len(names), dtype=np.float32)
    onehots = {n: eye[i] for i, n in enumerate(names)}
    n_genes, genes = len(planted.gene_names), list(planted.gene_names)
    var_dims = {"input_dim": n_genes, "gene_dim": n_genes, "hvg_dim": n_genes, "output_dim": n_genes,
                "pert_dim": len(names), "gene_names": genes, "batch_dim": 1, "pert_names": names}
    state_config = {
        "name": name, "output_dir": str(run_dir.parent), "overwrite": False, "use_wandb": False,
        "data": {"name": "PerturbationDataModule", "kwargs": {
            "embed_key": None, "output_space": "gene", "pert_col": "gene", "cell_type_key": "cell_type",
            "control_pert": demo.CONTROL, "basal_mapping_strategy": "random", "batch_col": "batch"}},
        "model": {"name": "state", "checkpoint": None, "device": "cpu",
                  "kwargs": model_kwargs(planted.w1.shape[1], n_genes)},
        "training": {"max_steps": 0, "note": "weights set by hand (analysis.datasets), not trained"},
        **note,
    }
    if run_dir.exists():
        shutil.rmtree(run_dir)
    build.write_run_directory(run_dir, model, onehots, var_dims, state_config, (demo.CELL_LINE,))


def write_known_answer(kind: str, folder: Path, seed: int = 0) -> PlantedModel:
    """Write `folder`/run (a `state tx train` run directory), `folder`/controls.h5ad and `folder`/truth."""
    folder = Path(folder)
    planted = planted_model(kind, seed)
    genes = list(planted.gene_names)
    write_planted_run(planted, folder / "run", f"known-answer-{kind}",
                      {"known_answer": {"kind": kind, "seed": seed, "expected_calls": sorted(planted.expected_calls)}},
                      seed)

    # Control cells as the demo simulates them (the model ignores them by construction), plus a few cells per KD
    # so the data names the cell line's KDs.
    world = demo.build_world(WORLD_SEED)
    index = {g: i for i, g in enumerate(world.gene_names)}
    keep = [index[g] for g in genes]
    sub = demo.DemoWorld(tuple(genes), world.kd_names, world.kd_module, world.true_delta[:, keep],
                         world.gene_log_mean[keep], seed)
    rng = np.random.default_rng(seed + 1)
    controls = demo.simulate_cells(sub, np.zeros(N_GENES), N_CONTROLS, rng)
    if planted.cell_values is not None:  # the "unreliable" kind's gate reads input 0 of each control cell
        controls[:, 0] = planted.cell_values
    delta = planted.delta_y()
    perturbed = {kd: demo.simulate_cells(sub, delta[k], 3, rng) for k, kd in enumerate(planted.kd_names)}
    demo.write_h5ad(genes, {demo.CELL_LINE: (controls, perturbed)}, folder / "controls.h5ad")

    truth = folder / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    cache.write_parquet(truth / "kd_modules.parquet", pd.DataFrame({"kd": planted.kd_names, "module": planted.kd_module}))
    cells = {} if planted.cell_values is None else {"cell_values": planted.cell_values,
                                                     "cell_weight": planted.cell_weight}
    cache.write_npz(truth / "planted.npz", pert_repr=planted.pert_repr, w1=planted.w1, b1=planted.b1, w2=planted.w2,
                    delta_y=delta, unit_kind=np.asarray(planted.unit_kind), gene_names=np.asarray(genes), **cells)
    return planted


def config_text(folder: Path, kind: str) -> str:
    """A TOML config for the run in `folder` (relative paths), with the known-answer statistics settings (`kind`
    decides the number of control draws, `N_DRAWS`)."""
    return planted_config_text("Known-answer model written by analysis.known_answers (weights set by hand; see truth/).",
                               "controls.h5ad", {**STATISTICS, "n_draws": N_DRAWS.get(kind, STATISTICS["n_draws"])})


def planted_config_text(comment: str, h5ad: str, settings: dict) -> str:
    """The TOML of a planted run written beside it (run/, `h5ad`): one cell line, every KD, the bundled gene sets,
    and `settings` (as `STATISTICS`; optionally tangents_per_call)."""
    gene_sets = ", ".join(f'"{p}"' for p in load_config(DEFAULT_CONFIG).gene_sets)
    s = settings
    return f"""# {comment}
[model]
run_dir = "run"
checkpoint = "final.ckpt"

[data]
h5ad = "{h5ad}"
feature_key = "X"
perturbation_column = "gene"
cell_type_column = "cell_type"
control_label = "{demo.CONTROL}"
cell_line = "{demo.CELL_LINE}"
kds = "all"

[effects]
set_size = {s['set_size']}
n_draws = {s['n_draws']}
seed = 0

[jacobian]
kds_per_call = {s['kds_per_call']}
tangents_per_call = {s.get('tangents_per_call', 0)}
shard_kds = {s['shard_kds']}
compile_jacobian = false
dtype = "{s['dtype']}"

[statistics]
max_clusters = {s['max_clusters']}
cluster_bootstrap = {s['cluster_bootstrap']}
n_permutations = {s['n_permutations']}
n_bootstrap = {s['n_bootstrap']}
alpha = 0.05
seed_r_threshold = 0.3
n_axes = 5

[enrichment]
gene_sets = [{gene_sets}]
prerank_permutations = {s['prerank_permutations']}
fdr = 0.05

[runtime]
device = "{s['device']}"
cache_dir = "cache"

[demo]
enabled = false
seed = 0
"""


def build_known_answer(kind: str, folder, seed: int = 0, **overrides) -> AnalysisConfig:
    """Write the known-answer model `kind` into `folder` (run/, controls.h5ad, truth/, known_answer.toml); return
    its config (`overrides` replace config fields, e.g. cache_dir=...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_known_answer(kind, folder, seed)
    (folder / "known_answer.toml").write_text(config_text(folder, kind))
    return load_config(folder / "known_answer.toml", **overrides)


def load_truth(folder) -> pd.DataFrame:
    """(kd, module) of a known-answer folder."""
    return pd.read_parquet(Path(folder) / "truth" / "kd_modules.parquet")
