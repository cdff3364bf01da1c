"""Load a run written by `state tx train` and the control cells it is analysed on.

A run directory is trusted code: its checkpoint is a pickle, loaded with arc-state's own
`StateTransitionPerturbationModel.load_from_checkpoint`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import AnalysisConfig
from ..console import quiet_logs, third_party_warnings_off
from ..errors import InputError

RUN_FILES = ("config.yaml", "var_dims.pkl", "pert_onehot_map.pt")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class OutputSpace:
    """The space ΔY and J are read in.

    name: "genes" or "embedding" (gene-set enrichment of responses needs genes); decode: the model's output of
    each cell goes through its gene decoder before the mean over the set (E[decoder(Y)]); description: for people,
    e.g. "embedding space X_state (2,048 dims, undecoded)".
    """

    name: str
    decode: bool
    description: str

    @property
    def has_genes(self) -> bool:
        return self.name == "genes"


@dataclass(frozen=True)
class LoadedRun:
    """A loaded model with everything needed to query it.

    pert_features: [P] float vectors by perturbation name, the pert_encoder's inputs (one-hot rows, or e.g.
    protein-language-model gene embeddings); kd_names: the KDs analysed (control excluded); gene_names: the G
    output features of `space` (genes, or `<embed_key>:<i>` in embedding space); controls: [N, input_dim] control
    cells of the target cell line.
    """

    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    pert_features: dict
    control_label: str
    kd_names: tuple
    gene_names: tuple
    controls: np.ndarray
    set_size: int
    space: OutputSpace

    @property
    def device_description(self) -> str:
        """e.g. "cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu (x86_64)"."""
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else \
            platform.processor() or platform.machine()
        return f"{self.device} ({name})"

    @property
    def hidden_dim(self) -> int:
        return int(self.model.hidden_dim)

    def features(self, names) -> torch.Tensor:
        """[len(names), P] perturbation feature rows on the model's device."""
        rows = np.stack([self.pert_features[n] for n in names]).astype(np.float32)
        return torch.as_tensor(rows, device=self.device, dtype=self.dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("config field device", f"'{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def input_files(config: AnalysisConfig) -> tuple[Path, ...]:
    """The files a run's results depend on: the checkpoint, the run files and the cell data."""
    return (checkpoint_file(config), *(config.run_dir / name for name in RUN_FILES), config.h5ad)


def load_model(config: AnalysisConfig) -> torch.nn.Module:
    """The checkpoint's model on the config's device and dtype (after the run folder's files are checked)."""
    run_dir = config.run_dir
    if not run_dir.is_dir():
        raise InputError(str(run_dir), "run directory not found (expected the output folder of `state tx train`)")
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise InputError(str(run_dir / name), "missing; a `state tx train` run directory holds " + ", ".join(RUN_FILES))
    ckpt = checkpoint_file(config)
    return _load_model(ckpt, str(ckpt), resolve_device(config.device), DTYPES[config.dtype])


def load_run(config: AnalysisConfig, model: torch.nn.Module | None = None) -> LoadedRun:
    """Load model (unless given: one model serves every cell line), maps and control cells, checking every input a
    wrong file can break."""
    model = model if model is not None else load_model(config)
    run_dir = config.run_dir
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    var_dims = _load_pickle(run_dir / "var_dims.pkl")
    pert_features = _load_feature_map(run_dir / "pert_onehot_map.pt", model.pert_dim)
    if config.control_label not in pert_features:
        raise InputError(f"{run_dir / 'pert_onehot_map.pt'}", f"control label '{config.control_label}' is not in the perturbation map ({len(pert_features)} entries)")

    space_name, decode = resolve_space(model, config.space)
    controls, data_perts, data_genes = _load_controls(config, int(model.input_dim))
    gene_names = _feature_names(model, space_name, decode, var_dims, data_genes, run_dir)
    space = OutputSpace(space_name, decode, _describe_space(model, space_name, decode, len(gene_names)))
    kd_names = _select_kds(config, pert_features, data_perts)
    set_size = config.set_size or int(model.cell_sentence_len)
    max_len = _max_set_size(model)
    if set_size > max_len:
        raise InputError("config field set_size", f"{set_size} exceeds the model's {max_len} positions")
    if controls.shape[0] < set_size:
        raise InputError(str(config.h5ad), f"{controls.shape[0]} control cells, fewer than the set size S={set_size}")

    return LoadedRun(model, device, dtype, pert_features, config.control_label, kd_names, gene_names,
                     controls, set_size, space)


def checkpoint_file(config: AnalysisConfig) -> Path:
    """The checkpoint the config names: any file in the run's checkpoints/ (final.ckpt, last.ckpt, best.ckpt,
    step=400.ckpt, epoch=1-step=400.ckpt, …). Absent: InputError listing everything that folder holds."""
    folder = config.run_dir / "checkpoints"
    ckpt = folder / config.checkpoint
    if not ckpt.is_file():
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise InputError(str(ckpt), f"checkpoint file not found (checkpoints/ holds: {', '.join(present) or 'nothing'})")
    return ckpt


def resolve_space(model, requested: str) -> tuple[str, bool]:
    """(space name, decode) for the config's `space` ("auto", "genes" or "embedding") on this model.

    The model's own output is gene expression when its embed_key is None or "X_hvg" (arc-state's own test, which
    decides its output ReLU). `state tx predict` writes the gene decoder's output as the cells' expression when
    the output is an embedding, or X_hvg with output_space "all" (its `store_raw_expression`): "auto" reads what
    predict writes.
    """
    embed_key = model.embed_key
    output_is_genes = embed_key in (None, "X_hvg")
    predict_decodes = (model.gene_decoder is not None and embed_key is not None
                       and (not output_is_genes or model.output_space == "all"))
    own = "genes" if output_is_genes else "embedding"
    if requested == "auto":
        return ("genes", True) if predict_decodes else (own, False)
    if requested == "genes":
        if predict_decodes or output_is_genes:
            return "genes", predict_decodes
        raise InputError("config field space", f"'genes' needs a gene decoder: the model's output is the embedding "
                                               f"{embed_key} (output_space '{model.output_space}') and the run has none; "
                                               "use space = \"embedding\" or \"auto\"")
    if output_is_genes and not predict_decodes:
        raise InputError("config field space", f"'embedding': the model's output is gene expression (embed_key "
                                               f"{embed_key}), not an embedding; use space = \"genes\" or \"auto\"")
    return "embedding", False


def _describe_space(model, name: str, decode: bool, width: int) -> str:
    if decode:
        return f"gene space decoded by the model's gene decoder ({width:,} genes)"
    if name == "genes":
        return f"gene space (the model's output, {width:,} genes)"
    return f"embedding space {model.embed_key} ({width:,} dims, undecoded)"


def _feature_names(model, space: str, decode: bool, var_dims, data_genes, run_dir: Path) -> tuple:
    """The output features' names: genes (checked against the decoder's gene_dim or the model's output_dim), or
    `<embed_key>:<i>` in embedding space, which has no gene names."""
    if space == "embedding":
        return tuple(f"{model.embed_key}:{i}" for i in range(int(model.output_dim)))
    if decode:
        return _gene_names(var_dims, data_genes, int(model.gene_decoder.gene_dim()), "the gene decoder's gene_dim", run_dir)
    return _gene_names(var_dims, data_genes, int(model.output_dim), "the model's output_dim", run_dir)


def state_transition_class():
    """arc-state's `StateTransitionPerturbationModel`, imported quietly: arc-state imports peft, whose releases warn
    on import about the transformers version arc-state pins (FutureWarning), and that must not reach the console or
    the report."""
    with third_party_warnings_off():
        from state.tx.models.state_transition import StateTransitionPerturbationModel
    return StateTransitionPerturbationModel


def _load_model(source: Path | io.BytesIO, name: str, device: torch.device, dtype: torch.dtype):
    """The model of a checkpoint file or of its bytes (`name`: the file, for the error message)."""
    StateTransitionPerturbationModel = state_transition_class()
    try:
        # arc-state prints the whole module on construction and logs at INFO; keep the user's console readable.
        with contextlib.redirect_stdout(io.StringIO()), quiet_logs(logging.INFO):  # checkpoint warnings still show
            model = StateTransitionPerturbationModel.load_from_checkpoint(source, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt or foreign checkpoint: say which file, not a pickle traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(name, f"could not be loaded as a StateTransitionPerturbationModel checkpoint ({first[:200]})") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class ShippedRun:
    """A `LoadedRun` as bytes and arrays, for a worker without the run folder (`executors.WorkerState.ship`).

    checkpoint: the checkpoint file's bytes; device: the config's device, resolved on the worker ("auto" is the
    worker's GPU when Ray gave it one); control_features: [P] the control's perturbation features, the only map
    entry the Jacobians read; space: where ΔY and J are read (decoded or not), as the driver resolved it.
    """

    checkpoint: bytes
    checkpoint_name: str
    device: str
    dtype: str
    control_label: str
    control_features: np.ndarray
    kd_names: tuple
    gene_names: tuple
    controls: np.ndarray
    set_size: int
    space: OutputSpace

    @classmethod
    def of(cls, config: AnalysisConfig, run: LoadedRun) -> "ShippedRun":
        ckpt = checkpoint_file(config)
        return cls(ckpt.read_bytes(), str(ckpt), config.device, config.dtype, run.control_label,
                   run.pert_features[run.control_label], run.kd_names, run.gene_names, run.controls, run.set_size,
                   run.space)

    def build(self) -> LoadedRun:
        device, dtype = resolve_device(self.device), DTYPES[self.dtype]
        model = _load_model(io.BytesIO(self.checkpoint), self.checkpoint_name, device, dtype)
        return LoadedRun(model, device, dtype, {self.control_label: self.control_features}, self.control_label,
                         self.kd_names, self.gene_names, self.controls, self.set_size, self.space)


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception as exc:
        raise InputError(str(path), f"not a readable pickle ({type(exc).__name__})") from None


def _load_feature_map(path: Path, pert_dim: int) -> dict:
    """{perturbation name: [pert_dim] float32 features}; names as str (cell_load may key the map by np.str_)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(str(path), f"not a readable torch file ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or not raw:
        raise InputError(str(path), "expected a non-empty dict {perturbation name: feature vector}")
    out = {}
    for name, vec in raw.items():
        arr = np.asarray(torch.as_tensor(vec), dtype=np.float32).reshape(-1)
        if arr.shape[0] != pert_dim:
            raise InputError(str(path), f"entry '{name}' has length {arr.shape[0]}, expected the model's pert_dim {pert_dim}")
        out[str(name)] = arr
    return out


def _load_controls(config: AnalysisConfig, input_dim: int):
    """Control cells [N, input_dim] of the target cell line, the data's perturbation labels there, and its gene names."""
    import anndata as ad

    path = config.h5ad
    if not path.is_file():
        raise InputError(str(path), "control-cell .h5ad not found")
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:
        raise InputError(str(path), f"not a readable .h5ad ({type(exc).__name__})") from None
    obs = adata.obs
    for field_name, column in (("perturbation_column", config.perturbation_column), ("cell_type_column", config.cell_type_column)):
        if column not in obs.columns:
            raise InputError(f"{path} obs['{column}']", f"column missing (config field {field_name}); obs has {list(obs.columns)[:10]}")
    in_line = np.ones(adata.n_obs, dtype=bool)
    if config.cell_line is None:
        # Mixing lines would pool their controls into one basal distribution (and one set of ΔY): refuse.
        present = sorted(obs[config.cell_type_column].astype(str).unique())
        if len(present) > 1:
            raise InputError(f"{path} obs['{config.cell_type_column}']",
                             f"{len(present)} cell types present ({', '.join(present[:6])}{', …' if len(present) > 6 else ''}); "
                             "set [data] cell_line to one of them, or to a list to analyse each")
    else:
        in_line = (obs[config.cell_type_column].astype(str) == config.cell_line).to_numpy()
        if not in_line.any():
            seen = sorted(obs[config.cell_type_column].astype(str).unique())[:10]
            raise InputError(f"{path} obs['{config.cell_type_column}']", f"no cells of cell line '{config.cell_line}' (found {seen})")
    labels = obs[config.perturbation_column].astype(str).to_numpy()
    is_control = in_line & (labels == config.control_label)
    if not is_control.any():
        raise InputError(f"{path} obs['{config.perturbation_column}']", f"no '{config.control_label}' control cells in cell line '{config.cell_line}'")

    if config.feature_key == "X":
        matrix = adata.X
    elif config.feature_key in adata.obsm:
        matrix = adata.obsm[config.feature_key]
    else:
        raise InputError(f"{path} obsm['{config.feature_key}']", f"feature key missing (config field feature_key); obsm has {list(adata.obsm.keys())}")
    rows = np.flatnonzero(is_control)
    controls = matrix[rows]
    controls = np.asarray(controls.toarray() if hasattr(controls, "toarray") else controls, dtype=np.float32)
    if controls.ndim != 2 or controls.shape[1] != input_dim:
        raise InputError(f"{path} {config.feature_key}", f"features have width {controls.shape[-1]}, expected the model's input_dim {input_dim}")
    if not np.isfinite(controls).all():
        bad = int((~np.isfinite(controls)).any(axis=1).sum())
        raise InputError(f"{path} {config.feature_key}", f"{bad} control cell(s) contain NaN or inf")
    data_perts = set(labels[in_line]) - {config.control_label}
    data_genes = tuple(map(str, adata.var_names)) if config.feature_key == "X" else None
    adata.file.close()
    return controls, data_perts, data_genes


def _gene_names(var_dims, data_genes, n_genes: int, expected: str, run_dir: Path) -> tuple:
    """The n_genes output gene names from var_dims.pkl (a list or a numpy array), else the .h5ad's var_names.
    expected: what fixes n_genes, for the error ("the model's output_dim")."""
    names = var_dims.get("gene_names") if isinstance(var_dims, dict) else None
    source = f"{run_dir / 'var_dims.pkl'} gene_names"
    if names is None:
        names, source = data_genes, "the .h5ad var_names"
    if names is None:
        raise InputError(str(run_dir / "var_dims.pkl"), "no gene_names, and the data's features are not genes (feature_key is an obsm key)")
    names = tuple(map(str, names))
    if len(names) != n_genes:
        raise InputError(source, f"{len(names)} output genes, expected {expected} {n_genes}")
    return names


def _select_kds(config: AnalysisConfig, pert_features: dict, data_perts: set) -> tuple:
    if config.kds:
        unknown = [k for k in config.kds if k not in pert_features]
        if unknown:
            raise InputError("config field kds", f"{len(unknown)} KD(s) not in the run's perturbation map, e.g. {unknown[:5]}")
        if config.control_label in config.kds:
            raise InputError("config field kds", f"lists the control '{config.control_label}'; list knock-downs only")
        return tuple(config.kds)
    candidates = [n for n in pert_features if n != config.control_label]
    # A control-only .h5ad does not say which KDs the line has: then all KDs of the map are analysed.
    kds = [n for n in candidates if n in data_perts] if data_perts else candidates
    if not kds:
        raise InputError(str(config.h5ad), f"none of the run's perturbations occur in cell line '{config.cell_line}'")
    return tuple(kds)


def _max_set_size(model) -> int:
    cfg = model.transformer_backbone.config
    positions = int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings"))
    special_tokens = int(bool(getattr(model, "use_batch_token", False))) + int(model.confidence_token is not None)
    return positions - special_tokens
