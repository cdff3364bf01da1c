"""The stage graph, declared once: what each stage reads, which config fields and code decide it; its cache key
is derived from that declaration (showyourwork's way), never written by hand.

A stage's key hashes
- its name and the keys of the stages it needs (so a change upstream reaches every stage downstream),
- the config fields it declares, and the facts of the loaded run it declares (`facts`: the KDs, the set size, …),
- its code: the source of every module it declares *and every analysis module those import* (the closure over
  `from .x import` / `from ..x import` lines, read from the files), plus the source of the pipeline function that
  runs it.
`tests/test_stage_keys.py` traces each stage's computation and checks that every analysis function it executes is
covered, then changes each covered file and checks that the key changes: a stale result cannot be reused after a
code change.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..config import PACKAGE_DIR, AnalysisConfig
from ..store import cache


@dataclass(frozen=True)
class Stage:
    """One node of the graph. name: its cache folder (`<cache_dir>/<name>/<key>/`) and its name everywhere (records,
    report); needs: stages whose keys enter this one; fields: config fields it reads; facts: names of the run facts
    (`RunFacts`) it reads; code: analysis modules (dotted, e.g. "stats.routing") it computes with; runner: the
    pipeline function that runs it (qualified name in `pipeline.run`)."""

    name: str
    needs: tuple[str, ...]
    fields: tuple[str, ...]
    facts: tuple[str, ...]
    code: tuple[str, ...]
    runner: str


# The store's writers and readers shape every stage's bytes, so every stage declares them.
STORE = ("store.cache", "store.codec", "store.readers")

STAGES: tuple[Stage, ...] = (
    Stage("inputs", needs=(),
          fields=("feature_key", "perturbation_column", "cell_type_column", "control_label", "cell_lines", "dtype",
                  "checkpoint"),
          facts=("input_digests", "space"), code=("model.load",), runner="load_line"),
    Stage("effects", needs=("inputs",),
          fields=("n_draws", "seed", "kds_per_call", "max_clusters", "cluster_bootstrap", "weak_fraction",
                  "prerank_permutations", "gene_sets"),
          facts=("kd_names", "set_size", "gene_set_digests"),
          code=("model.effects", "stats.clustering", "stats.draws", "stats.enrichment", "store.gmt",
                "pipeline.executors") + STORE,
          runner="run_effects"),
    # Forward passes only, batched by `model.interventions.sets_per_call` (a function of the draws and the device).
    Stage("interventions", needs=("inputs", "effects"), fields=("random_groups", "seed", "n_permutations"),
          facts=(), code=("model.interventions", "stats.interventions", "pipeline.executors") + STORE,
          runner="run_interventions"),
    # Batching and compilation change the float rounding of J (≈ 1e-7), so they decide the result too.
    Stage("jacobians", needs=("inputs", "effects"),
          fields=("shard_kds", "kds_per_call", "tangents_per_call", "compile_jacobian"),
          facts=(), code=("model.jacobians", "store.shards", "pipeline.executors") + STORE, runner="run_jacobians"),
    Stage("routing", needs=("effects", "interventions", "jacobians"),
          fields=("n_permutations", "n_bootstrap", "normal_reference_kds", "seed", "alpha", "seed_r_threshold",
                  "equivalence_r", "min_contrast", "min_specific_share", "global_share", "min_cluster_share", "substitution_margin",
                  "min_reliability", "fdr", "n_axes",
                  "prerank_permutations", "gene_sets"),
          facts=("gene_set_digests",),
          code=("stats.routing", "stats.reliability", "stats.axes", "stats.verdict", "stats.prior_work", "stats.clustering", "stats.enrichment",
                "store.gmt", "store.shards") + STORE,
          runner="run_routing"),
    Stage("steering", needs=("inputs", "effects", "jacobians", "routing"), fields=(), facts=(),
          code=("model.interventions", "stats.interventions", "store.shards", "pipeline.executors") + STORE,
          runner="run_steering"),
    # Part 0: predicted cells against observed ones (cell-eval), and the call re-run where the model beats the baseline.
    Stage("quality", needs=("inputs", "effects", "routing"),
          fields=("seed", "kds_per_call", "held_out_kds", "min_observed_cells", "de_metrics", "n_permutations",
                  "n_bootstrap", "normal_reference_kds", "alpha", "seed_r_threshold", "equivalence_r", "min_contrast",
                  "min_specific_share", "global_share", "min_cluster_share"),
          facts=("kd_names", "set_size"),
          code=("model.predict", "model.observed", "stats.quality", "stats.routing", "stats.verdict") + STORE,
          runner="run_quality"),
    Stage("across", needs=(), fields=("n_permutations", "n_bootstrap", "seed", "alpha"), facts=("lines",),
          code=("stats.consistency", "store.shards") + STORE, runner="run_across"),
)
BY_NAME = {stage.name: stage for stage in STAGES}


# ---------------------------------------------------------------- code of a stage
def module_path(module: str) -> Path:
    """The file of an analysis module, "stats.routing" -> analysis/stats/routing.py (a package: its __init__.py)."""
    base = PACKAGE_DIR.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def read_source(path: Path) -> bytes:
    """A module's bytes as the key hashes them (the one reader, so tests can check what a change does to a key)."""
    return path.read_bytes()


def imports(module: str) -> set[str]:
    """Analysis modules `module` imports (relative or `analysis.` imports, at any depth of the file)."""
    path = module_path(module)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(read_source(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        named = node.module.split(".") if node.module else []
        if node.level:
            stem = package[:len(package) - node.level + 1] + named
        elif named[:1] == ["analysis"]:
            stem = named[1:]
        else:
            continue
        for alias in node.names:  # `from . import cache` names a module; `from .x import y` names x
            candidate = ".".join(stem + [alias.name])
            target = candidate if _exists(candidate) else ".".join(stem)
            if _exists(target):
                found.add(target)
    return found


def _exists(module: str) -> bool:
    return bool(module) and module_path(module).is_file()


@functools.cache
def closure(modules: tuple[str, ...]) -> tuple[str, ...]:
    """`modules` and every analysis module they import, transitively (packages' __init__ included), sorted."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if _exists(".".join(parts[:i]))]
        todo += sorted(imports(module) - seen)
    return tuple(sorted(seen))


def code_files(stage: Stage) -> tuple[Path, ...]:
    """Every file whose bytes enter the stage's own code digest."""
    return tuple(module_path(m) for m in closure(stage.code))


def upstream(stage: Stage) -> tuple[Stage, ...]:
    """The stages whose keys enter this one's, directly or through others (their code decides it too)."""
    found, todo = [], list(stage.needs)
    while todo:
        name = todo.pop()
        if BY_NAME[name] not in found:
            found.append(BY_NAME[name])
            todo += BY_NAME[name].needs
    return tuple(found)


def runner_source(stage: Stage) -> str:
    """The source of the pipeline function that runs the stage (read from `pipeline/run.py`, not imported)."""
    source = read_source(module_path("pipeline.run")).decode()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == stage.runner)
    return ast.get_source_segment(source, node)


def code_digest(stage: Stage) -> str:
    """Hash of the stage's code: its modules' closure and its runner's source."""
    h = hashlib.sha256()
    for path in code_files(stage):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode())
        h.update(read_source(path))
    h.update(runner_source(stage).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- keys
def key(stage_name: str, config: AnalysisConfig, facts: dict, needs: dict[str, str]) -> str:
    """The cache key of a stage: `facts` holds at least the stage's declared facts, `needs` the keys of the stages
    it needs (by name)."""
    stage = BY_NAME[stage_name]
    missing = [n for n in stage.needs if n not in needs] + [f for f in stage.facts if f not in facts]
    if missing:
        raise ValueError(f"stage {stage_name}: no value for {missing}")
    return cache.content_key(stage.name, code_digest(stage), [needs[n] for n in stage.needs],
                             {f: getattr(config, f) for f in stage.fields}, {f: facts[f] for f in stage.facts})


def stage_folder(config: AnalysisConfig, stage_name: str, stage_key: str) -> Path:
    return Path(config.cache_dir) / stage_name / stage_key
