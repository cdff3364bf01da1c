"""The embedded demo: a deterministic synthetic Perturb-seq world and a small STATE model trained on it.

The world uses real HGNC symbols from the bundled gene sets. KDs come in named modules
(cytosolic ribosome, mitoribosome, TRAPP, proteasome, MYC, spliceosome, mediator) plus
KDs with no effect. Each module has a response programme over the output genes built
from a real pathway; each KD adds its own deviation. The planted truth (module of each
KD, true ΔY) is kept beside the data.

A small real `StateTransitionPerturbationModel` (the seed's "pertsets" configuration
scaled down: GPT2 backbone, one-hot perturbations, energy loss) is trained on it with
Lightning and written as `state tx train` writes a run, so the demo goes through the
same loader as a user's run. This is a stand-in for the seed's HepG2 checkpoint, which
cannot exist here; it says so in the report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import GENESETS_DIR, AnalysisConfig
from ..console import StageProgress, note, quiet_logs, silenced
from ..errors import CacheError
from ..model.state import build
from ..store import cache

CELL_LINE = "HepG2"  # the primary line
OTHER_LINE = "K562"
CONTROL = "non-targeting"

# KD module -> knocked-down genes, and the response programme: (gene set, sign) pairs.
MODULES = {
    "cytosolic_ribosome": (
        "RPL3 RPL4 RPL5 RPL6 RPL7 RPL8 RPL9 RPL10 RPL11 RPL13 RPL14 RPL15 RPL18 RPL19 RPL21 RPL23 RPL24 RPL26 RPL27 "
        "RPL30 RPL35 RPS2 RPS3 RPS5 RPS6 RPS8 RPS9 RPS11 RPS13 RPS14 RPS16 RPS19 RPS24 RPS27A".split(),
        [("GO:cytoplasmic translation (GO:0002181)", -1), ("H:HALLMARK_P53_PATHWAY", +1)],
    ),
    "mitoribosome": (
        "MRPL3 MRPL4 MRPL10 MRPL11 MRPL16 MRPS12 MRPL13 MRPL15 MRPL17 MRPL20 MRPL22 MRPL28 MRPL33 MRPL38 MRPL44 "
        "MRPS2 MRPS5 MRPS7 MRPS10 MRPS14 MRPS18A MRPS23 MRPS28 MRPS34".split(),
        [("H:HALLMARK_OXIDATIVE_PHOSPHORYLATION", -1), ("GO:mitochondrial translation (GO:0032543)", -1)],
    ),
    "TRAPP": (
        "TRAPPC1 TRAPPC2 TRAPPC2L TRAPPC3 TRAPPC4 TRAPPC5 TRAPPC6B TRAPPC8 TRAPPC9 TRAPPC10 TRAPPC11 TRAPPC12".split(),
        [("H:HALLMARK_UNFOLDED_PROTEIN_RESPONSE", +1), ("GO:endoplasmic reticulum to Golgi vesicle-mediated transport (GO:0006888)", +1)],
    ),
    "proteasome": (
        "PSMA1 PSMA2 PSMA3 PSMA4 PSMA5 PSMA6 PSMB1 PSMB2 PSMB3 PSMB5 PSMB7 PSMC1 PSMC2 PSMC3 PSMC4 PSMD1 PSMD2 PSMD3 PSMD4 PSMD6 PSMD7".split(),
        [("GO:proteasome-mediated ubiquitin-dependent protein catabolic process (GO:0043161)", +1), ("H:HALLMARK_MTORC1_SIGNALING", +1)],
    ),
    "MYC": (
        "MYC MAX TRRAP KAT2A EP400 RUVBL1 MNT".split(),
        [("H:HALLMARK_MYC_TARGETS_V1", -1), ("H:HALLMARK_MYC_TARGETS_V2", -1)],
    ),
    "spliceosome": (
        "SF3B1 SF3B2 SF3B3 SF3B4 SNRPE SF3A1 SF3A3 SNRPD1 SNRPD2 SNRPD3 SNRPB PRPF8 PRPF19 PRPF31 U2AF1 U2AF2".split(),
        [("H:HALLMARK_E2F_TARGETS", -1), ("H:HALLMARK_G2M_CHECKPOINT", -1)],
    ),
    "mediator": (
        "MED1 MED4 MED6 MED7 MED8 MED12 MED14 MED16 MED17 MED20 MED24 MED26".split(),
        [("H:HALLMARK_XENOBIOTIC_METABOLISM", -1), ("H:HALLMARK_BILE_ACID_METABOLISM", -1)],
    ),
    "no_effect": (
        "OR1A2 OR1C1 OR1D2 OR1E1 OR1K1 OR10A5 OR10H1 OR10J1 OR11H4 OR12D2 OR13G1 KRT1 KRT2 KRT3 KRT9 KRT12 "
        "KRT25 KRT31 KRT34 KRT71 KRT76 KRT83 KRT85 OR10K1 OR10R2 KRT4 KRT5".split(),
        [],
    ),
}
GENES_PER_PROGRAMME = 30
N_OUTPUT_GENES = 700

# The second line's planted sharing: module -> s, its response programme there being s × the primary line's plus
# sqrt(1 − s²) × a line-specific programme of the same size (so the planted cosine between lines is about s).
SHARING = {"cytosolic_ribosome": 1.0, "mitoribosome": 1.0, "proteasome": 1.0, "MYC": 0.5, "spliceosome": 0.5,
           "TRAPP": 0.0, "mediator": 0.0}
OTHER_LINE_MISSING = 6  # no-effect KDs not screened in the second line (the lines' KD lists differ)
LINE_MARKERS = 80  # genes whose control expression differs between the lines (how the model tells them apart)


@dataclass(frozen=True)
class DemoWorld:
    """The planted truth. true_delta [K, G] in log-normalised units; kd_module [K]."""

    gene_names: tuple
    kd_names: tuple
    kd_module: tuple
    true_delta: np.ndarray
    gene_log_mean: np.ndarray  # [G] log mean expression rate of control cells
    seed: int
    cell_line: str = CELL_LINE

    def truth_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"kd": self.kd_names, "module": self.kd_module})


def read_gene_sets() -> dict:
    """The bundled libraries as {'GO:<term>' or 'H:<name>': [genes]} (demo programmes only)."""
    import gseapy

    go = gseapy.read_gmt(str(GENESETS_DIR / "GO_Biological_Process_2021.gmt"))
    hallmark = gseapy.read_gmt(str(GENESETS_DIR / "MSigDB_Hallmark_v7.0.gmt"))
    return {**{f"GO:{k}": v for k, v in go.items()}, **{f"H:{k}": v for k, v in hallmark.items()}}


def build_world(seed: int = 0) -> DemoWorld:
    """Deterministic planted world: output genes, KDs in modules, true ΔY."""
    rng = np.random.default_rng(seed)
    sets = read_gene_sets()
    programme_genes = {}
    chosen: list[str] = []
    for module, (_, programme) in MODULES.items():
        for set_name, _sign in programme:
            members = sorted(set(sets[set_name]))
            take = [str(g) for g in rng.choice(members, size=min(GENES_PER_PROGRAMME, len(members)), replace=False)]
            programme_genes[set_name] = take
            chosen += take
    kd_genes = [g for kds, _ in MODULES.values() for g in kds]
    genes = list(dict.fromkeys(chosen + [g for g in kd_genes if not g.startswith(("OR", "KRT"))]))
    pool = sorted({g for v in sets.values() for g in v} - set(genes) - set(kd_genes))
    genes += [str(g) for g in rng.choice(pool, size=N_OUTPUT_GENES - len(genes), replace=False)]
    index = {g: i for i, g in enumerate(genes)}

    kd_names, kd_module, deltas = [], [], []
    for module, (kds, programme) in MODULES.items():
        signature = np.zeros(len(genes))
        for set_name, sign in programme:
            for g in programme_genes[set_name]:
                signature[index[g]] += sign * rng.uniform(0.4, 1.0)
        for kd in kds:
            delta = rng.uniform(0.6, 1.3) * signature
            own = rng.choice(len(genes), size=12, replace=False)  # the KD's own deviation from its module
            delta[own] += rng.normal(0, 0.25 if programme else 0.03, size=12)
            if kd in index:
                delta[index[kd]] -= 1.5  # on-target knock-down of the gene itself
            kd_names.append(kd)
            kd_module.append(module)
            deltas.append(delta)
    gene_log_mean = rng.normal(0.5, 1.0, size=len(genes))
    return DemoWorld(tuple(genes), tuple(kd_names), tuple(kd_module), np.asarray(deltas), gene_log_mean, seed)


def build_other_line(world: DemoWorld) -> DemoWorld:
    """The second cell line of the demo world: other control expression on LINE_MARKERS genes, the same KDs but
    OTHER_LINE_MISSING no-effect ones, each module's response shared to the degree SHARING plants.

    Drawn from its own generator, so the primary line (and everything built from it) is unchanged.
    """
    rng = np.random.default_rng([world.seed, 1])
    n_genes = len(world.gene_names)
    gene_log_mean = world.gene_log_mean.copy()
    gene_log_mean[rng.choice(n_genes, size=LINE_MARKERS, replace=False)] += rng.normal(0.0, 1.2, size=LINE_MARKERS)
    modules = np.asarray(world.kd_module)
    index = {g: i for i, g in enumerate(world.gene_names)}
    deltas = world.true_delta.copy()
    for module, share in SHARING.items():
        members = np.flatnonzero(modules == module)
        signature = world.true_delta[members].mean(axis=0)
        own = np.zeros(n_genes)
        genes = rng.choice(n_genes, size=2 * GENES_PER_PROGRAMME, replace=False)
        own[genes] = rng.choice((-1.0, 1.0), size=len(genes)) * rng.uniform(0.4, 1.0, size=len(genes))
        own *= np.linalg.norm(signature) / np.linalg.norm(own)
        for k in members:
            on_target = index.get(world.kd_names[k])
            deltas[k] = world.true_delta[k] + (share - 1.0) * signature + np.sqrt(1.0 - share ** 2) * own
            if on_target is not None:  # the knock-down of the gene itself is the same in every line
                deltas[k, on_target] = world.true_delta[k, on_target]
    keep = np.ones(len(world.kd_names), dtype=bool)
    keep[np.flatnonzero(modules == "no_effect")[:OTHER_LINE_MISSING]] = False
    return DemoWorld(world.gene_names, tuple(np.asarray(world.kd_names)[keep]), tuple(modules[keep]), deltas[keep],
                     gene_log_mean, world.seed, OTHER_LINE)


def simulate_cells(world: DemoWorld, delta: np.ndarray, n_cells: int, rng) -> np.ndarray:
    """Log-normalised single cells [n, G]: Poisson counts with per-cell depth, scaled to 1e4, log1p.

    delta [G] shifts the expression rate in log space (0 for controls).
    """
    depth = rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    rate = np.exp(world.gene_log_mean + delta)[None, :] * depth * 4.0
    counts = rng.poisson(rate)
    size = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return np.log1p(counts / size * 1e4).astype(np.float32)


def demo_model_kwargs(n_genes: int, set_size: int = 32) -> dict:
    """The seed's 'pertsets' configuration, scaled down for 2 CPU cores."""
    hidden = 96
    return dict(
        cell_set_len=set_size, extra_tokens=0, hidden_dim=hidden, loss="energy", distributional_loss="energy",
        blur=0.05, confidence_token=False, n_encoder_layers=2, n_decoder_layers=2, predict_residual=True,
        freeze_pert_backbone=False, finetune_vci_decoder=False, residual_decoder=False, batch_encoder=False,
        use_batch_token=False, use_basal_projection=False, mask_attn=False, regularization=0.0, lr=2e-3,
        gene_decoder_bool=False, transformer_backbone_key="GPT2",
        transformer_backbone_kwargs=dict(n_positions=set_size, n_embd=hidden, n_layer=2, n_head=4,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False),
    )


def build_demo(config: AnalysisConfig, n_steps: int = 2000, cells_per_kd: int = 48, n_controls: int = 1500,
               progress: bool = True) -> None:
    """Write the demo's .h5ad (control and perturbed cells of both lines), planted truth and trained run directory
    (atomically, as one folder)."""
    world = build_world(config.demo_seed)
    worlds = (world, build_other_line(world))
    rng = np.random.default_rng(config.demo_seed + 1)
    cells = {}
    for line in worlds:
        controls = simulate_cells(line, np.zeros(len(line.gene_names)), n_controls, rng)
        cells[line.cell_line] = (controls, {kd: simulate_cells(line, line.true_delta[i], cells_per_kd, rng)
                                            for i, kd in enumerate(line.kd_names)})

    # Build everything in a temporary sibling folder, then move files into place: a killed build leaves nothing half-written.
    config.run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=config.run_dir.parent, prefix=".demo-build-"))
    try:
        write_h5ad(world.gene_names, cells, staging / "controls.h5ad")
        _write_truth(worlds, staging / "truth")
        _train_run(world, cells, staging / "run", config.demo_seed, n_steps, progress)
        _install(staging / "truth", config.run_dir.parent / "truth")
        _install(staging / "controls.h5ad", config.h5ad)
        cache.write_json(staging / "run" / "demo_build.json", {"demo_version": demo_version(config.demo_seed)})
        _install(staging / "run", config.run_dir)  # last: its presence means the demo is complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def demo_version(seed: int) -> str:
    """Changes when the demo's definition (this module) or seed changes, so a stale demo is rebuilt."""
    return cache.content_key(Path(__file__).read_bytes().decode(), seed)


def needs_build(config: AnalysisConfig) -> bool:
    """Whether the config asks for the demo and it is missing or was built by another demo definition."""
    if not config.demo:
        return False
    marker = config.run_dir / "demo_build.json"
    try:
        current = marker.is_file() and cache.read_json(marker).get("demo_version") == demo_version(config.demo_seed)
    except (OSError, ValueError):  # an unreadable marker: rebuild
        current = False
    return not (current and (config.run_dir / "checkpoints" / config.checkpoint).is_file() and config.h5ad.is_file())


def ensure_demo(config: AnalysisConfig, progress: bool = True) -> None:
    """Build the demo when `needs_build`; a second process waits for the first one's build and uses it."""
    if not needs_build(config):
        return
    with cache.folder_lock(config.run_dir.parent):
        if not needs_build(config):
            return
        if progress:
            note(f"Building the embedded demo into {config.run_dir.parent} (about 3 minutes, first use only) …")
        try:
            build_demo(config, progress=progress)
        except CacheError:
            raise
        except OSError as exc:  # a full or read-only disk: one line, not a traceback from deep inside a writer
            raise CacheError(str(config.run_dir.parent), f"cannot build the demo ({exc.strerror or exc})") from None


def load_truth(config: AnalysisConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The demo's planted truth in the primary line: (kd, module) table and true ΔY [K, G]."""
    folder = config.run_dir.parent / "truth"
    arrays = np.load(folder / "true_delta.npz")
    return pd.read_parquet(folder / "kd_modules.parquet"), arrays["true_delta"]


def load_line_truth(config: AnalysisConfig) -> pd.DataFrame:
    """The planted sharing between the demo's lines, per KD screened in both: kd, module, sharing (SHARING's s),
    true_cosine (cosine of the planted ΔY between the lines)."""
    return pd.read_parquet(config.run_dir.parent / "truth" / "cross_line.parquet")


def _install(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def write_h5ad(gene_names, lines: dict, path: Path) -> None:
    """Cells of each line of `lines` {cell line: (controls [n, G], {KD: cells [m, G]})}: controls labelled CONTROL,
    then each KD's cells; obs columns 'gene' and 'cell_type'."""
    import anndata as ad

    blocks, labels, line_of = [], [], []
    for line, (controls, perturbed) in lines.items():
        blocks += [controls] + list(perturbed.values())
        labels += [CONTROL] * len(controls) + [kd for kd, cells in perturbed.items() for _ in range(len(cells))]
        line_of += [line] * (len(controls) + sum(len(cells) for cells in perturbed.values()))
    X = np.concatenate(blocks)
    obs = pd.DataFrame({"gene": labels, "cell_type": line_of}, index=[f"cell{i}" for i in range(len(X))])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(gene_names)))
    adata.obs["gene"] = adata.obs["gene"].astype("category")
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    adata.write_h5ad(path)


def _write_truth(worlds: tuple, folder: Path) -> None:
    primary, other = worlds
    folder.mkdir(parents=True)
    cache.write_parquet(folder / "kd_modules.parquet", primary.truth_frame())
    cache.write_npz(folder / "true_delta.npz", true_delta=primary.true_delta.astype(np.float32),
                    gene_names=np.asarray(primary.gene_names))
    rows = [primary.kd_names.index(kd) for kd in other.kd_names]
    a, b = primary.true_delta[rows], other.true_delta
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    cache.write_parquet(folder / "cross_line.parquet", pd.DataFrame({
        "kd": other.kd_names, "module": other.kd_module,
        "sharing": [SHARING.get(m, np.nan) for m in other.kd_module], "true_cosine": cosine}))


class _SetSampler(torch.utils.data.IterableDataset):
    """Training sets as `state tx train` feeds them: S control cells, S perturbed cells of the same cell line, one
    perturbation per set. `lines`: {cell line: (controls, {perturbation: cells})}, the control itself included."""

    def __init__(self, onehots, lines, set_size, n_sets, seed):
        self.onehots, self.lines = onehots, lines
        self.set_size, self.n_sets, self.seed = set_size, n_sets, seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        lines = list(self.lines.values())
        for _ in range(self.n_sets):
            controls, perturbed = lines[rng.integers(len(lines))]
            names = list(perturbed)
            name = names[rng.integers(len(names))]
            pool = perturbed[name]
            basal = controls[rng.integers(len(controls), size=self.set_size)]
            target = pool[rng.integers(len(pool), size=self.set_size)]
            yield {
                "pert_emb": torch.as_tensor(np.repeat(self.onehots[name][None], self.set_size, 0)),
                "ctrl_cell_emb": torch.as_tensor(basal),
                "pert_cell_emb": torch.as_tensor(target),
            }


def _flatten_sets(items):
    return {k: torch.cat([it[k] for it in items]) for k in items[0]}


def _train_run(world, cells: dict, run_dir: Path, seed: int, n_steps: int, progress: bool) -> None:
    """Train on every line of `cells` {cell line: (controls, {KD: cells})} and write the run directory."""
    import lightning.pytorch as pl

    names = [CONTROL] + list(world.kd_names)
    eye = np.eye(len(names), dtype=np.float32)
    onehots = {n: eye[i] for i, n in enumerate(names)}
    n_genes = len(world.gene_names)
    kwargs = demo_model_kwargs(n_genes)
    set_size, batch_sets = kwargs["cell_set_len"], 32
    var_dims = {"input_dim": n_genes, "gene_dim": n_genes, "hvg_dim": n_genes, "output_dim": n_genes,
                "pert_dim": len(names), "gene_names": list(world.gene_names), "batch_dim": 1, "pert_names": names}

    pl.seed_everything(seed, verbose=False)
    model = build.construct_model(n_genes, len(names), {**kwargs, "batch_size": batch_sets}, world.gene_names,
                                  control=CONTROL)
    training_sets = {line: (controls, {CONTROL: controls, **perturbed}) for line, (controls, perturbed) in cells.items()}
    loader = torch.utils.data.DataLoader(
        _SetSampler(onehots, training_sets, set_size, n_steps * batch_sets, seed),
        batch_size=batch_sets, collate_fn=_flatten_sets,
    )
    # Quiet (progress=False, e.g. inside the report's kernel): Lightning's banner and tips would land in the document.
    # Lightning's own bar writes to stdout; ours goes to stderr, and is one summary line when that is not a terminal.
    quiet = quiet_logs() if progress else silenced()
    bar = StageProgress(n_steps, "Training the demo model", "step", progress)

    class TrainingProgress(pl.Callback):
        def on_train_batch_end(self, *args):
            bar.update(1)

    with quiet:
        trainer = pl.Trainer(max_steps=n_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_model_summary=False, enable_progress_bar=False, deterministic=False,
                             callbacks=[TrainingProgress()])
        trainer.fit(model, train_dataloaders=loader)
    bar.close()

    state_config = {
        "name": "demo", "output_dir": str(run_dir.parent), "overwrite": False, "use_wandb": False,
        "data": {"name": "PerturbationDataModule", "kwargs": {
            "embed_key": None, "output_space": "gene", "pert_col": "gene", "cell_type_key": "cell_type",
            "control_pert": CONTROL, "basal_mapping_strategy": "random", "batch_col": "batch"}},
        "model": {"name": "state", "checkpoint": None, "device": "cpu", "kwargs": demo_model_kwargs(n_genes)},
        "training": {"max_steps": n_steps, "batch_size": batch_sets, "lr": 2e-3, "train_seed": seed},
        "demo": {"note": "synthetic Perturb-seq world built by analysis.demo; not a biological model", "seed": seed},
    }
    build.write_run_directory(run_dir, model, onehots, var_dims, state_config, tuple(cells), trainer)

