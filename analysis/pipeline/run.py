"""The pipeline: inputs → effects (ΔY, clusters, enrichment) → interventions (substituted pert_repr) → jacobians →
routing (statistics, verdict) → steering → quality (Part 0: predictions against observed cells), per cell line, then
across the lines — the order and the wiring of `stages.STAGES`, which this module only walks.

Each stage is cached under `<cache_dir>/<stage>/<key>/`, its key derived from the stage graph (`stages`); `run`
checks every input of every line first, computes what the cache lacks, and returns records read back from the cache
(`store.codec`), so the report sees the same objects whether they were computed now or on a GPU node earlier.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..config import AnalysisConfig
from ..console import note
from ..model.load import input_files, load_model
from ..model.protocol import PerturbationModel
from ..results import LineResults, Results
from ..store import cache, codec
from . import executors, stages
from .context import StageContext
from .provenance import provenance


@dataclass(frozen=True)
class Line:
    """One cell line, loaded and keyed before anything is computed."""

    config: AnalysisConfig
    run: PerturbationModel
    keys: dict  # stage name -> key
    state: executors.WorkerState  # the loaded run for executors: itself here, checkpoint bytes and cells elsewhere

    def stage(self, name: str) -> cache.StageDir:
        return cache.StageDir(self.config.cache_dir, name, self.keys[name])


def run(config: AnalysisConfig, progress: bool = True, executor=None) -> Results:
    """Every stage for each cell line of the config (the first is the primary line), then the across-lines stage
    when there are several, computing only what the cache lacks. `executor` runs the ΔY batches and the Jacobian
    shards (default: the config's [runtime] executor).

    Every line is loaded and checked (cells, KDs, the run's shape) before the first stage runs; InputError names
    the first problem. CacheError before any compute when something must be computed and the cache is not writable.
    """
    model = load_model(config)
    lines = [load_line(line_config, model) for line_config in config.per_line()]
    across_key = stages.key("across", config, {"lines": [[ln.config.cell_line, ln.keys["effects"], ln.keys["routing"]]
                                                         for ln in lines]}, {}) if len(lines) > 1 else None
    needed = [ln.stage(name) for ln in lines for name in stages.LINE_STAGES]
    needed += [cache.StageDir(config.cache_dir, "across", across_key)] if across_key else []
    if not all(stage.has_record for stage in needed):
        cache.require_writable(config.cache_dir)
    executor = executor or executors.for_config(config)
    results = []
    for line in lines:
        if progress and len(lines) > 1:
            note(f"Cell line {line.config.cell_line}:")
        results.append(analyse_line(line, progress, executor))
    across = None
    if across_key:
        folder = cache.StageDir(config.cache_dir, "across", across_key)
        across = compute_stage(stages.BY_NAME["across"], config, folder, None, progress, executor,
                               {"lines": tuple(results)})
    return Results(config, tuple(results), across, stage_paths(config, lines, across_key))


def load_line(config: AnalysisConfig, model=None) -> Line:
    """A line's loaded run (every input check; `model`: the checkpoint's model when already loaded) and the keys of
    its stages."""
    loaded = stages.BY_NAME["inputs"].compute(config, model)
    facts = {"input_digests": [cache.file_digest(p) for p in input_files(config)],
             # the resolved space: "auto" and the choice it resolves to share results
             "space": [loaded.space.name, loaded.space.decode],
             "model_kind": loaded.kind,  # the resolved adapter: "auto" and the kind it resolves to share results
             "kd_names": list(loaded.kd_names), "set_size": loaded.set_size,
             "gene_set_digests": [cache.file_digest(p) for p in config.gene_sets]}
    keys: dict = {}
    for stage in stages.STAGES:
        if stage.scope == "line":
            keys[stage.name] = stages.key(stage.name, config, facts, keys)
    return Line(config, loaded, keys, executors.WorkerState(loaded, loaded.ship))


def analyse_line(line: Line, progress: bool, executor) -> LineResults:
    """The records of one cell line's stages, computed where the cache lacks them."""
    records = {"inputs": line.run}
    for name in stages.LINE_STAGES:
        records[name] = run_stage(line, name, records, progress, executor)
    return LineResults(line.config.cell_line, provenance(line.config, line.run, line.keys["inputs"]),
                       **{name: records[name] for name in stages.LINE_STAGES})


def run_stage(line: Line, name: str, records: dict, progress: bool = True, executor=None):
    """The record of stage `name` of `line`, from the records of the stages it needs (`records`, by name).

    A stage whose record is read lazily (the Jacobian shards) has its files' sha256 checked only when a stage that
    reads them is to be computed; with those cached, sizes suffice, so a render does not hash gigabytes."""
    stage = stages.BY_NAME[name]
    readers = [s.name for s in stages.STAGES if name in s.needs and s.scope == "line"]
    contents = not codec.reads_lazily(stage.record) or any(line.stage(r).record(quiet=True) is None for r in readers)
    return compute_stage(stage, line.config, line.stage(name), line.state, progress,
                         executor or executors.for_config(line.config),
                         {n: records[n] for n in stage.needs}, contents)


def compute_stage(stage: stages.Stage, config: AnalysisConfig, folder: cache.StageDir, state, progress: bool,
                  executor, upstream: dict, contents: bool = True):
    """A stage's record from its folder, computed first (with its config view) when the folder holds none."""
    context = StageContext(folder.key, folder, executor, state, progress)
    compute = partial(stage.compute, context, stages.config_view(stage, config), **upstream)
    return codec.ensure_record(folder, compute, stage.record, contents)


def run_effects(line: Line, progress: bool = True, executor=None):
    """The effects stage of `line` alone (its only upstream is the loaded run)."""
    return run_stage(line, "effects", {"inputs": line.run}, progress, executor)


def stage_paths(config: AnalysisConfig, lines: list[Line], across_key: str | None) -> dict:
    """{label: cache folder} of every stage: each line's, then the across-lines stage."""
    paths = {}
    for line in lines:
        suffix = f" ({line.config.cell_line})" if len(lines) > 1 else ""
        paths |= {f"{name}{suffix}": str(line.stage(name).path) for name in stages.LINE_STAGES}
    if across_key:
        paths["across"] = str(stages.stage_folder(config, "across", across_key))
    return paths
