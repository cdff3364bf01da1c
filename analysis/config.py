"""One configuration object, read from one TOML file and passed down to every stage.

Relative paths in the file are resolved against the file's own folder, so a config
works the same from the command line, from tests and from the Quarto report. Every field
is checked against its type (the dataclass annotation) and range.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "configs" / "demo.toml"  # the embedded demo, shipped in the package
GENESETS_DIR = PACKAGE_DIR / "genesets"  # the bundled gene-set libraries, referred to by name in configs
SPACES = ("auto", "genes", "embedding")  # where ΔY and J are read (model.state.run.resolve_space)
# The model kinds an adapter reads (`model.load.ADAPTERS`); "auto": the kind the run folder names.
MODEL_KINDS = ("auto", "state")
# KD families by gene-name pattern: the original plan's prior-work rows and the figures' colours read them.
KD_FAMILIES = {
    "ribosomal": r"^RP[LS]\d",
    "mitoribosomal": r"^MRP[LS]\d",
    "TRAPP": r"^TRAPPC\d",
    "ER/secretory": r"^(TRAPPC\d|SEC\d|COP[ABEGZ])",
}


@dataclass(frozen=True)
class DecisionRule:
    """The thresholds of the verdict, as `AnalysisConfig.decision_rule` builds them from the config's one set of
    defaults (effect sizes in the units the criteria state).

    min_r: r must exceed it for Model B (the original plan's 0.3); equivalence_r: the smallest effect of interest,
    on the r scale, for both deciding criteria (an upper bound below it rules the effect out: for the contrast, its
    bound as a point-biserial r); min_contrast: the same − cross difference of C_jac^spec, in SDs, needed for Model
    B; min_specific_share: the KD-specific share of the (unit-norm) Jacobian energy below which routing is one
    global readout whatever its structure (a numerical floor: one linear map for every KD measured 2.5e-6 on the known
    answer); min_response_share: the median share of each KD's first-order response (‖J_k^⊥·Δp_k‖ / ‖J_k·Δp_k‖,
    `stats.decomposition.response_shares`) the KD-specific routing must produce for its structure to be read — below
    it one global readout produces the responses, whatever the KD-specific part's structure (0.2 of the norm, 4 % of
    the energy: early-stopped genuine runs measured 0.01–0.05, trained ones 0.34–0.39, planted routing 0.83–0.91,
    routing identical up to noise at cos 0.98 about 0.14); global_share:
    the common share at or above which routing whose KD-specific part follows no cluster is a global readout
    (below it: per-KD routing); min_cluster_share: same − cross mean C_jac^spec (the share of the KD-specific
    energy shared within clusters) needed for Model B besides its SD — a structure of a few 1/K, which the common
    direction's estimate leaves when the noise level follows the modules, is significant but not a circuit;
    substitution_margin: the smallest effect of centroid substitution worth a claim, in cosine units, for both of
    its rows: the gain over random groups ("used" needs it, p < α; "not used" when the gain's upper bound is below
    it) and the distance control's excess cost over a same-size random move ("used" needs its upper bound below it;
    "partly used" when it is at least this, lower bound above 0);
    min_reliability: the split-half (Spearman–Brown) reliability of C_jac^spec across control-cell draws below which
    KD-specific routing structure is called unreliable (below 0.5, most of its variance is draw-to-draw noise).
    """

    alpha: float
    min_r: float
    equivalence_r: float
    min_contrast: float
    min_specific_share: float
    min_response_share: float
    global_share: float
    min_cluster_share: float
    substitution_margin: float
    min_reliability: float


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything that decides a result. Paths are absolute after `load_config`."""

    run_dir: Path
    h5ad: Path
    cache_dir: Path
    model_kind: str = "auto"  # TOML [model] kind: the adapter reading the run ("state"); "auto": as the run folder says
    checkpoint: str = "final.ckpt"  # any file in the run's checkpoints/ (last.ckpt, epoch=1-step=400.ckpt, …)
    space: str = "auto"  # "genes": decoded genes (or the model's gene output); "embedding": the undecoded output
    feature_key: str = "X"  # "X" or an .obsm key such as "X_hvg"
    perturbation_column: str = "gene"
    cell_type_column: str = "cell_type"
    control_label: str = "non-targeting"
    cell_lines: tuple[str, ...] = ()  # TOML `cell_line`: one name or a list; empty: the data must hold one cell type
    kds: tuple[str, ...] = ()  # empty: every KD of the perturbation map present in the cell line
    set_size: int = 0  # S; 0 takes the model's cell_set_len
    n_draws: int = 4  # R control draws
    seed: int = 0
    device: str = "auto"  # "cpu", "cuda" or "auto"
    dtype: str = "float32"  # "float32", "float64"; "bfloat16" only as an opt-in (see benchmark)
    kds_per_call: int = 4  # KDs batched into one forward-mode call
    tangents_per_call: int = 0  # 0: chosen for the device and set size (jacobians.tangent_chunk)
    compile_jacobian: bool = True  # Inductor-compile the JVP's tangent graph: ~2× per KD, a one-off compile of minutes
    path_points: int = 2  # Q midpoints of p_ctrl → p_k for the path-averaged Jacobian (0: first order only)
    shard_kds: int = 16  # KDs per Jacobian shard on disk
    max_clusters: int = 12
    weak_fraction: float = 0.25  # KDs with ‖ΔY‖ below this × the median form the weak-effect group 0
    cluster_bootstrap: int = 50
    n_permutations: int = 9999
    n_bootstrap: int = 1000
    # K at or above which the studentized tests refer to the normal distribution instead of permuting KD labels
    # (0: always permute); chosen by benchmarks/normal_reference.py's agreement study (README, "At genome scale").
    normal_reference_kds: int = 1000
    alpha: float = 0.05
    seed_r_threshold: float = 0.3  # r must exceed it for Model B (the seed's threshold)
    equivalence_r: float = 0.1  # smallest effect of interest (r scale, both criteria): a bound below it rules out
    min_contrast: float = 0.5  # same − cross C_jac^spec, in SDs of C_jac^spec, needed for Model B
    min_specific_share: float = 1e-4  # KD-specific share of the Jacobian energy below which routing is one readout
    cluster_null_draws: int = 39  # Gaussian draws the test that outputs cluster at all compares with (p floor 1/40)
    min_response_share: float = 0.2  # median share of the response the KD-specific routing must produce to be read
    global_share: float = 0.5  # common share at or above which unstructured KD-specific routing is a global readout
    min_cluster_share: float = 0.1  # same − cross mean C_jac^spec (share of KD-specific energy) needed for Model B
    random_groups: int = 39  # joint cluster-label permutations: the random groups of centroid substitution (p ≥ 1/40)
    matched_moves: int = 4  # random moves per KD of the centroid move's size: the distance control's reference
    probe_ratio: float = 0.5  # distance ratio below which a KD's specific part is amplified before the comparison
    substitution_margin: float = 0.1  # smallest substitution gain (cosine) of interest: "used" / "not used"
    min_reliability: float = 0.5  # split-half reliability of C_jac^spec below which KD-specific routing is unreliable
    fdr: float = 0.05
    n_axes: int = 5
    gene_sets: tuple[Path, ...] = ()
    prerank_permutations: int = 1000
    held_out_kds: tuple[str, ...] = ()  # KDs held out of training (empty: read from the run's split when it names one)
    min_observed_cells: int = 4  # KDs with fewer observed cells in the line are listed as unscored in Part 0
    de_metrics: str = "auto"  # Part 0: cell-eval's DE metrics "on", "off" or "auto" (quality.DE_AUTO_MAX_KDS)
    executor: str = "local"  # where ΔY batches and Jacobian shards run: "local" (this process) or "ray" (Ray workers)
    ray_address: str | None = None  # None: a local Ray instance; "auto" or "ray://host:port": an existing cluster
    demo: bool = False  # build the embedded demo run into run_dir/h5ad when they are missing
    demo_seed: int = 0
    source: Path | None = field(default=None, compare=False)

    def replace(self, **changes) -> "AnalysisConfig":
        return dataclasses.replace(self, **changes)

    @property
    def cell_line(self) -> str | None:
        """The one cell line of a single-line config (None: the data's only cell type); see `per_line`."""
        if len(self.cell_lines) > 1:
            raise ValueError("a config with several cell lines is analysed line by line: use config.per_line()")
        return self.cell_lines[0] if self.cell_lines else None

    @property
    def decision_rule(self) -> DecisionRule:
        return DecisionRule(*(getattr(self, name) for name in RULE_FIELDS))

    def per_line(self) -> tuple["AnalysisConfig", ...]:
        """One single-line config per cell line, in the order listed (the first is the primary line)."""
        return tuple(self.replace(cell_lines=(line,)) for line in self.cell_lines) or (self,)

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


# The config fields the verdict's rule is built from, in `DecisionRule`'s order.
RULE_FIELDS = ("alpha", "seed_r_threshold", "equivalence_r", "min_contrast", "min_specific_share", "min_response_share",
               "global_share", "min_cluster_share", "substitution_margin", "min_reliability")


def default_decision_rule() -> DecisionRule:
    """The rule of a config that sets no [statistics] threshold (calibration, tests)."""
    defaults = {f.name: f.default for f in dataclasses.fields(AnalysisConfig)}
    return DecisionRule(*(defaults[name] for name in RULE_FIELDS))


# TOML section -> fields it may hold; the file is validated against this, so a typo is an error, not a silent default.
_SECTIONS = {
    "model": {"run_dir", "kind", "checkpoint", "space"},
    "data": {"h5ad", "feature_key", "perturbation_column", "cell_type_column", "control_label", "cell_line", "kds"},
    "effects": {"set_size", "n_draws", "seed"},
    "jacobian": {"kds_per_call", "tangents_per_call", "compile_jacobian", "shard_kds", "dtype", "path_points"},
    "statistics": {"max_clusters", "weak_fraction", "cluster_bootstrap", "cluster_null_draws", "n_permutations",
                   "n_bootstrap", "alpha",
                   "normal_reference_kds", "seed_r_threshold", "equivalence_r", "min_contrast", "min_specific_share",
                   "min_response_share", "global_share", "min_cluster_share", "min_reliability", "n_axes"},
    "interventions": {"random_groups", "substitution_margin", "matched_moves", "probe_ratio"},
    "enrichment": {"gene_sets", "prerank_permutations", "fdr"},
    "quality": {"held_out_kds", "min_observed_cells", "de_metrics"},
    "runtime": {"device", "cache_dir", "executor", "ray_address"},
    "demo": {"enabled", "seed"},
}
_RENAMES = {("model", "kind"): "model_kind", ("demo", "enabled"): "demo", ("demo", "seed"): "demo_seed", ("data", "cell_line"): "cell_lines"}
_REQUIRED = {"run_dir", "h5ad", "cache_dir"}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path (string)"}

# Value checks beyond the type: field -> (test, what is expected).
_RANGES = {
    "device": (lambda v: v in {"cpu", "cuda", "auto"} or v.startswith("cuda:"), "'cpu', 'cuda', 'cuda:N' or 'auto'"),
    "dtype": (lambda v: v in {"float32", "float64", "bfloat16"}, "'float32', 'float64' or 'bfloat16'"),
    "executor": (lambda v: v in {"local", "ray"}, "'local' or 'ray'"),
    "space": (lambda v: v in SPACES, " or ".join(f"'{s}'" for s in SPACES)),
    "model_kind": (lambda v: v in MODEL_KINDS, "a model kind: " + " or ".join(f"'{k}'" for k in MODEL_KINDS)),
    "set_size": (lambda v: v >= 0, "0 (the model's cell_set_len) or a positive integer"),
    "n_draws": (lambda v: v >= 1, "an integer >= 1"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "demo_seed": (lambda v: v >= 0, "an integer >= 0"),
    "kds_per_call": (lambda v: v >= 1, "an integer >= 1"),
    "tangents_per_call": (lambda v: v >= 0, "0 (automatic) or a positive integer"),
    "path_points": (lambda v: v >= 0, "0 (first order only) or a positive integer"),
    "cluster_null_draws": (lambda v: v >= 19, "an integer >= 19 (a p below 0.05 needs at least 19 draws)"),
    "shard_kds": (lambda v: v >= 1, "an integer >= 1"),
    "max_clusters": (lambda v: v >= 2, "an integer >= 2"),
    "weak_fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "cluster_bootstrap": (lambda v: v >= 0, "an integer >= 0"),
    "n_permutations": (lambda v: v >= 99, "an integer >= 99"),
    "n_bootstrap": (lambda v: v >= 1, "an integer >= 1"),
    "normal_reference_kds": (lambda v: v == 0 or v >= 3, "0 (always permute) or a KD count >= 3"),
    "alpha": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "fdr": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "seed_r_threshold": (lambda v: -1 <= v <= 1, "a number in [-1, 1]"),
    "equivalence_r": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "min_contrast": (lambda v: v >= 0, "a number >= 0 (SDs of C_jac)"),
    "min_specific_share": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "min_response_share": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "global_share": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "min_cluster_share": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "min_reliability": (lambda v: -1 <= v <= 1, "a number in [-1, 1]"),
    "n_axes": (lambda v: v >= 1, "an integer >= 1"),
    "random_groups": (lambda v: v >= 1, "an integer >= 1"),
    "matched_moves": (lambda v: v >= 1, "an integer >= 1"),
    "probe_ratio": (lambda v: v > 0, "a number > 0 (a distance ratio)"),
    "substitution_margin": (lambda v: 0 < v <= 1, "a number in (0, 1] (cosine)"),
    "cell_lines": (lambda v: len(set(v)) == len(v) and all(v), "distinct, non-empty cell-line names"),
    "prerank_permutations": (lambda v: v >= 1, "an integer >= 1"),
    "min_observed_cells": (lambda v: v >= 2, "an integer >= 2 (the split-half ceiling needs two halves)"),
    "de_metrics": (lambda v: v in {"auto", "on", "off"}, "'auto', 'on' or 'off'"),
}


def _typed(value, kind, where: str):
    """`value` as the dataclass field type `kind` (int, float, bool, str, Path, X | None, tuple[X, ...]), or InputError."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else _typed(value, options[0], where)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"expected a list, each item {_TYPE_NAMES[item]}, got {value!r}")
        return tuple(_typed(v, item, where) for v in value)
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str), Path: isinstance(value, (str, Path))}[kind]
    if not ok:
        raise InputError(where, f"expected {_TYPE_NAMES[kind]}, got {value!r}")
    return kind(value)


def load_config(path: str | Path | None = None, **overrides) -> AnalysisConfig:
    """Read a TOML config into an `AnalysisConfig`; `overrides` replace single fields (e.g. device="cuda").

    Every field is checked against its dataclass type and range: a wrong value is an InputError naming the file,
    section and field. Relative paths resolve against the config file's folder, except in the packaged demo
    config (`DEFAULT_CONFIG`), whose paths resolve against the working directory (the demo is built into
    ./cache). A gene-set entry is a bundled library's name (`bundled_gene_sets`) or a GMT file's path.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise InputError(str(path), "config file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"not valid TOML ({exc})") from None
    base = Path.cwd() if path.resolve() == DEFAULT_CONFIG else path.resolve().parent
    values: dict = {}
    wheres: dict = {}
    for section, content in raw.items():
        if section not in _SECTIONS or not isinstance(content, dict):
            raise InputError(str(path), f"unknown section [{section}]; expected one of {sorted(_SECTIONS)}")
        for key, value in content.items():
            if key not in _SECTIONS[section]:
                raise InputError(f"{path} [{section}].{key}", f"unknown field; expected one of {sorted(_SECTIONS[section])}")
            name = _RENAMES.get((section, key), key)
            values[name], wheres[name] = value, f"{path} [{section}].{key}"
    for name, value in overrides.items():
        values[name], wheres[name] = value, f"override {name}"
    missing = _REQUIRED - values.keys()
    if missing:
        raise InputError(str(path), f"missing required field(s) {sorted(missing)}")
    if values.get("kds") == "all":
        values["kds"] = ()
    if isinstance(values.get("cell_lines"), str):  # one line, or a list of lines
        values["cell_lines"] = [values["cell_lines"]]
    kinds = typing.get_type_hints(AnalysisConfig)
    fields = {f.name for f in dataclasses.fields(AnalysisConfig)} - {"source"}
    for name in values:
        if name not in fields:
            raise InputError(wheres[name], f"unknown field; expected one of {sorted(fields)}")
        values[name] = _typed(values[name], kinds[name], wheres[name])
        check = _RANGES.get(name)
        if check and not check[0](values[name]):
            raise InputError(wheres[name], f"expected {check[1]}, got {values[name]!r}")
    for name in ("run_dir", "h5ad", "cache_dir"):
        values[name] = (base / values[name]).resolve()
    values["gene_sets"] = tuple(_gene_set_path(base, p, wheres.get("gene_sets", "gene_sets"))
                                for p in values.get("gene_sets", ()))
    return AnalysisConfig(source=path.resolve(), **values)


def bundled_gene_sets() -> dict[str, Path]:
    """{library name: GMT file} of the libraries shipped in analysis/genesets/ (name = file stem)."""
    return {p.stem: p for p in sorted(GENESETS_DIR.glob("*.gmt"))}


def _gene_set_path(base: Path, entry: Path, where: str) -> Path:
    """A bundled library by name ("MSigDB_Hallmark_v7.0", its file name also accepted), else a GMT file by path
    (relative to the config's folder, or absolute)."""
    bundled = bundled_gene_sets()
    name = str(entry).removesuffix(".gmt")
    if entry.name == str(entry) and name in bundled:
        return bundled[name]
    path = base / entry
    if path.is_file():
        return path.resolve()
    raise InputError(where, f"'{entry}' is neither a bundled gene-set library ({', '.join(bundled)}) "
                            f"nor a GMT file ({path} not found)")
