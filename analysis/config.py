"""One configuration object, read from one TOML file and passed down to every stage.

Relative paths in the file are resolved against the file's own folder, so a config
works the same from the command line, from tests and from the Quarto report.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR.parent / "configs" / "demo.toml"


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything that decides a result. Paths are absolute after `load_config`."""

    run_dir: Path
    h5ad: Path
    cache_dir: Path
    checkpoint: str = "final.ckpt"
    feature_key: str = "X"  # "X" or an .obsm key such as "X_hvg"
    perturbation_column: str = "gene"
    cell_type_column: str = "cell_type"
    control_label: str = "non-targeting"
    cell_line: str | None = None  # None: the data must hold a single cell type
    kds: tuple[str, ...] = ()  # empty: every KD of the one-hot map present in the cell line
    set_size: int = 0  # S; 0 takes the model's cell_set_len
    n_draws: int = 4  # R control draws
    seed: int = 0
    device: str = "auto"  # "cpu", "cuda" or "auto"
    dtype: str = "float32"  # "float32", "float64"; "bfloat16" only as an opt-in (see benchmark)
    kds_per_call: int = 4  # KDs batched into one forward-mode call
    tangents_per_call: int = 0  # 0: chosen for the device and set size (jacobians.tangent_chunk)
    compile_jacobian: bool = True  # Inductor-compile the JVP's tangent graph: ~2× per KD, a one-off compile of minutes
    shard_kds: int = 16  # KDs per Jacobian shard on disk
    max_clusters: int = 12
    cluster_bootstrap: int = 50
    n_permutations: int = 9999
    n_bootstrap: int = 1000
    alpha: float = 0.05
    seed_r_threshold: float = 0.3
    fdr: float = 0.05
    n_axes: int = 5
    gene_sets: tuple[Path, ...] = ()
    prerank_permutations: int = 1000
    demo: bool = False  # build the embedded demo run into run_dir/h5ad when they are missing
    demo_seed: int = 0
    source: Path | None = field(default=None, compare=False)

    def replace(self, **changes) -> "AnalysisConfig":
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """Plain values (paths as strings), for cache keys and the report's appendix."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "source":
                continue
            v = getattr(self, f.name)
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = [str(x) for x in v]
            out[f.name] = v
        return out


# TOML section -> fields it may hold; the file is validated against this, so a typo is an error, not a silent default.
_SECTIONS = {
    "model": {"run_dir", "checkpoint"},
    "data": {"h5ad", "feature_key", "perturbation_column", "cell_type_column", "control_label", "cell_line", "kds"},
    "effects": {"set_size", "n_draws", "seed"},
    "jacobian": {"kds_per_call", "tangents_per_call", "compile_jacobian", "shard_kds", "dtype"},
    "statistics": {"max_clusters", "cluster_bootstrap", "n_permutations", "n_bootstrap", "alpha",
                   "seed_r_threshold", "n_axes"},
    "enrichment": {"gene_sets", "prerank_permutations", "fdr"},
    "runtime": {"device", "cache_dir"},
    "demo": {"enabled", "seed"},
}
_RENAMES = {("demo", "enabled"): "demo", ("demo", "seed"): "demo_seed"}
_PATHS = {"run_dir", "h5ad", "cache_dir"}
_REQUIRED = {"run_dir", "h5ad", "cache_dir"}


def load_config(path: str | Path | None = None, **overrides) -> AnalysisConfig:
    """Read a TOML config into an `AnalysisConfig`; `overrides` replace single fields (e.g. device="cuda")."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise InputError(str(path), "config file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(str(path), f"not valid TOML ({exc})") from None
    base = path.resolve().parent
    values: dict = {}
    for section, content in raw.items():
        if section not in _SECTIONS or not isinstance(content, dict):
            raise InputError(str(path), f"unknown section [{section}]; expected one of {sorted(_SECTIONS)}")
        for key, value in content.items():
            if key not in _SECTIONS[section]:
                raise InputError(f"{path} [{section}].{key}", f"unknown field; expected one of {sorted(_SECTIONS[section])}")
            values[_RENAMES.get((section, key), key)] = value
    values.update(overrides)
    missing = _REQUIRED - values.keys()
    if missing:
        raise InputError(str(path), f"missing required field(s) {sorted(missing)}")
    for key in _PATHS:
        values[key] = (base / Path(values[key])).resolve()
    values["gene_sets"] = tuple((base / Path(p)).resolve() for p in values.get("gene_sets", ()))
    if isinstance(values.get("kds"), str):
        values["kds"] = () if values["kds"] == "all" else (values["kds"],)
    values["kds"] = tuple(values.get("kds", ()))
    config = AnalysisConfig(source=path.resolve(), **values)
    _validate(config, path)
    return config


def _validate(config: AnalysisConfig, path: Path) -> None:
    checks = [
        ("device", config.device in {"cpu", "cuda", "auto"} or config.device.startswith("cuda:"), "'cpu', 'cuda' or 'auto'"),
        ("dtype", config.dtype in {"float32", "float64", "bfloat16"}, "'float32', 'float64' or 'bfloat16'"),
        ("n_draws", config.n_draws >= 1, "an integer >= 1"),
        ("set_size", config.set_size >= 0, "0 (the model's cell_set_len) or a positive integer"),
        ("kds_per_call", config.kds_per_call >= 1, "an integer >= 1"),
        ("shard_kds", config.shard_kds >= 1, "an integer >= 1"),
        ("n_permutations", config.n_permutations >= 99, "an integer >= 99"),
        ("alpha", 0 < config.alpha < 1, "a number in (0, 1)"),
        ("max_clusters", config.max_clusters >= 2, "an integer >= 2"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise InputError(f"{path} field {name}", f"expected {expected}, got {getattr(config, name)!r}")
    for gmt in config.gene_sets:
        if not gmt.is_file():
            raise InputError(f"{path} field gene_sets", f"gene-set file {gmt} not found")
