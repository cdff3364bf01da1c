"""STATE's adapter: a run written by `state tx train` for arc-state's `StateTransitionPerturbationModel`, loaded
as a `PerturbationModel` (`model.protocol`).

A run directory is trusted code: its checkpoint is a pickle, loaded with arc-state's own
`StateTransitionPerturbationModel.load_from_checkpoint`. The run folder's config.yaml says which arc-state model it
holds (`model.name`); this adapter reads the names arc-state builds a StateTransitionPerturbationModel for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...config import AnalysisConfig
from ...console import quiet_logs, third_party_warnings_off
from ...errors import InputError
from ..cells import DTYPES, load_controls, resolve_device, select_kds
from ..protocol import OutputSpace, describe_device
from . import forward

KIND = "state"
RUN_FILES = ("config.yaml", "var_dims.pkl", "pert_onehot_map.pt")
# The arc-state model names (config.yaml `model.name`) arc-state builds a StateTransitionPerturbationModel for.
MODEL_NAMES = ("state", "pertsets", "neuralot")


@dataclass(frozen=True, eq=False)
class StateModel:
    """A loaded STATE run of one cell line, as a `PerturbationModel`.

    model: arc-state's StateTransitionPerturbationModel (eval mode, no gradients); pert_features: [P] float vectors
    by perturbation name, the pert_encoder's inputs (one-hot rows, or e.g. protein-language-model gene embeddings);
    kd_names: the KDs analysed (control excluded); gene_names: the G output features of `space` (genes, or
    `<embed_key>:<i>` in embedding space); controls: [N, input_dim] control cells of the target cell line;
    run_dir and checkpoint_name: where it was read (None: a model built in memory, `in_memory`); device_setting and
    dtype_setting: the config's words, which a worker resolves again (`ship`).
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
    run_dir: Path | None = None
    checkpoint_name: str = "final.ckpt"
    device_setting: str = "auto"
    dtype_setting: str = "float32"
    kind: str = KIND

    @classmethod
    def in_memory(cls, model: torch.nn.Module, decode: bool = False, control_features=None) -> "StateModel":
        """A model built here, not loaded from a run (the Jacobian engine's tests and benchmarks): no KDs, no
        control cells; the control's features zeros unless given ([P]; the substituted forward never reads them)."""
        parameter = next(model.parameters())
        features = np.zeros(int(model.pert_dim), np.float32) if control_features is None else \
            np.asarray(control_features, np.float32)
        space = OutputSpace("genes", decode, "")
        return cls(model, parameter.device, parameter.dtype, {"control": features}, "control", (), (),
                   np.zeros((0, int(model.input_dim)), np.float32), int(model.cell_sentence_len), space)

    @property
    def hidden_size(self) -> int:
        return int(self.model.hidden_dim)

    @property
    def device_description(self) -> str:
        return describe_device(self.device)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / self.checkpoint_name

    @property
    def run_files(self) -> tuple[Path, ...]:
        return (self.checkpoint, *(self.run_dir / name for name in RUN_FILES))

    def features(self, names) -> torch.Tensor:
        """[len(names), P] perturbation feature rows on the model's device."""
        rows = np.stack([self.pert_features[n] for n in names]).astype(np.float32)
        return torch.as_tensor(rows, device=self.device, dtype=self.dtype)

    def __post_init__(self):
        # [P] the control's features: what the pert_encoder sees in a substituted call (its output is replaced);
        # made here, once, so a traced call reads a constant rather than building it inside the trace.
        object.__setattr__(self, "_control_features", self.features([self.control_label])[0])

    def encode(self, names) -> torch.Tensor:
        return forward.encode_perturbations(self.model, self.features(names))

    def set_means(self, features: torch.Tensor, cell_sets: torch.Tensor) -> torch.Tensor:
        return forward.mean_output(self.model, features, cell_sets, self.space.decode)

    def set_cells(self, features: torch.Tensor, cell_sets: torch.Tensor) -> torch.Tensor:
        return forward.set_cells(self.model, features, cell_sets, self.space.decode)

    def expected_output(self, pert_repr: torch.Tensor, cell_sets: torch.Tensor) -> torch.Tensor:
        return forward.expected_output(self.model, pert_repr, cell_sets, self._control_features, self.space.decode)

    def expected_states(self, pert_repr: torch.Tensor, cell_sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward.expected_states(self.model, pert_repr, cell_sets, self._control_features, self.space.decode)

    def ship(self) -> "ShippedState":
        return ShippedState(self.checkpoint.read_bytes(), str(self.checkpoint), self.device_setting,
                            self.dtype_setting, self.control_label, self.pert_features[self.control_label],
                            self.kd_names, self.gene_names, self.controls, self.set_size, self.space)

    def training_split(self, cell_line: str | None, kd_names) -> tuple[tuple[str, ...] | None, str]:
        """The cell_load TOML the run's config.yaml names (data.kwargs.toml_config_path): a zero-shot line holds
        every KD out, a few-shot line its `val` and `test` lists."""
        import yaml

        try:
            run_config = yaml.safe_load((self.run_dir / "config.yaml").read_text()) or {}
            toml_path = Path(run_config["data"]["kwargs"]["toml_config_path"])
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None, ""
        toml_path = toml_path if toml_path.is_absolute() else self.run_dir / toml_path
        try:
            split = tomllib.loads(toml_path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return None, ""
        for key in split.get("zeroshot", {}):
            if cell_line is not None and key.split(".", 1)[-1] == cell_line:
                return tuple(kd_names), f"{toml_path} [zeroshot] {key} (the whole line held out)"
        for key, value in split.get("fewshot", {}).items():
            if cell_line is not None and key.split(".", 1)[-1] == cell_line and isinstance(value, dict):
                held = {str(p) for part in ("val", "test") for p in value.get(part, [])}
                return tuple(k for k in kd_names if k in held), f"{toml_path} [fewshot] {key} val + test"
        return None, ""


def run_files(config: AnalysisConfig) -> tuple[Path, ...]:
    """The run folder's files a run's results depend on: the checkpoint and the run files."""
    return (checkpoint_file(config), *(config.run_dir / name for name in RUN_FILES))


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


def load_run(config: AnalysisConfig, model: torch.nn.Module | None = None) -> StateModel:
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
    controls, data_perts, data_genes = load_controls(config, int(model.input_dim))
    gene_names = _feature_names(model, space_name, decode, var_dims, data_genes, run_dir)
    space = OutputSpace(space_name, decode, _describe_space(model, space_name, decode, len(gene_names)))
    kd_names = select_kds(config, pert_features, data_perts)
    set_size = config.set_size or int(model.cell_sentence_len)
    max_len = _max_set_size(model)
    if set_size > max_len:
        raise InputError("config field set_size", f"{set_size} exceeds the model's {max_len} positions")
    if controls.shape[0] < set_size:
        raise InputError(str(config.h5ad), f"{controls.shape[0]} control cells, fewer than the set size S={set_size}")

    return StateModel(model, device, dtype, pert_features, config.control_label, kd_names, gene_names,
                      controls, set_size, space, run_dir, config.checkpoint, config.device, config.dtype)


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
class ShippedState:
    """A `StateModel` as bytes and arrays, for a worker without the run folder (`executors.WorkerState.ship`).

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

    def build(self) -> StateModel:
        device, dtype = resolve_device(self.device), DTYPES[self.dtype]
        model = _load_model(io.BytesIO(self.checkpoint), self.checkpoint_name, device, dtype)
        return StateModel(model, device, dtype, {self.control_label: self.control_features}, self.control_label,
                          self.kd_names, self.gene_names, self.controls, self.set_size, self.space,
                          device_setting=self.device, dtype_setting=self.dtype)


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


def _max_set_size(model) -> int:
    cfg = model.transformer_backbone.config
    positions = int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings"))
    special_tokens = int(bool(getattr(model, "use_batch_token", False))) + int(model.confidence_token is not None)
    return positions - special_tokens
