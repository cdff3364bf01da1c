"""The pipeline: inputs → effects (ΔY, clusters, enrichment) → interventions (substituted pert_repr) → jacobians →
routing (statistics, verdict) → steering → quality (Part 0: predictions against observed cells), per cell line, then
across the lines.

Each stage is cached under `<cache_dir>/<stage>/<key>/`, its key derived from the stage graph (`stages`); `run`
checks every input of every line first, computes what the cache lacks, and returns results read back from the cache
(`store.readers`), so the report sees the same objects whether they were computed now or on a GPU node earlier.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from ..config import AnalysisConfig
from ..console import StageProgress, note
from ..errors import InputError
from ..model import jacobians
from ..model.effects import compute_effects
from ..model.interventions import substituted_responses
from ..model.load import input_files, load_model, load_run
from ..model.observed import load_observed, training_split
from ..model.predict import predict_cells, predict_means
from ..model.protocol import PerturbationModel
from ..results import (
    AcrossResult,
    EffectsResult,
    InterventionsResult,
    LineResults,
    QualityResult,
    Results,
    RoutingResult,
    SteeringResult,
)
from ..stats import clustering, consistency, enrichment, interventions, quality, reliability, routing, verdict
from ..stats.axes import output_svd, read_axes
from ..stats.draws import reproducibility
from ..stats.prior_work import prior_work
from ..store import cache, codec
from ..store.gmt import read_libraries
from ..store.readers import read_across, read_effects, read_interventions, read_quality, read_routing, read_steering
from ..store.shards import JacobianShards, ShardStore, open_shards
from . import executors, stages
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
    """Every stage for each cell line of the config (the first is the primary line), then routing across the lines
    when there are several, computing only what the cache lacks. `executor` runs the ΔY batches and the Jacobian
    shards (default: the config's [runtime] executor).

    Every line is loaded and checked (cells, KDs, the run's shape) before the first stage runs; InputError names
    the first problem. CacheError before any compute when something must be computed and the cache is not writable.
    """
    model = load_model(config)
    lines = [load_line(line_config, model) for line_config in config.per_line()]
    across_key = stages.key("across", config, {"lines": [[ln.config.cell_line, ln.keys["effects"], ln.keys["routing"]]
                                                         for ln in lines]}, {}) if len(lines) > 1 else None
    needed = [ln.stage(name) for ln in lines for name in LINE_STAGES]
    needed += [cache.StageDir(config.cache_dir, "across", across_key)] if across_key else []
    if not all(stage.has_record for stage in needed):
        cache.require_writable(config.cache_dir)
    executor = executor or executors.for_config(config)
    results = []
    for line in lines:
        if progress and len(lines) > 1:
            note(f"Cell line {line.config.cell_line}:")
        results.append(analyse_line(line, progress, executor))
    across = run_across(config, across_key, lines, tuple(results)) if across_key else None
    return Results(config, tuple(results), across, stage_paths(config, lines, across_key))


def load_line(config: AnalysisConfig, model=None) -> Line:
    """A line's loaded run (every input check; `model`: the checkpoint's model when already loaded) and the keys of
    its stages."""
    loaded = load_run(config, model)
    facts = {"input_digests": [cache.file_digest(p) for p in input_files(config)],
             # the resolved space: "auto" and the choice it resolves to share results
             "space": [loaded.space.name, loaded.space.decode],
             "kd_names": list(loaded.kd_names), "set_size": loaded.set_size,
             "gene_set_digests": [cache.file_digest(p) for p in config.gene_sets]}
    keys: dict = {}
    for stage in stages.STAGES:
        if stage.name != "across":
            keys[stage.name] = stages.key(stage.name, config, facts, keys)
    return Line(config, loaded, keys, executors.WorkerState(loaded, loaded.ship))


LINE_STAGES = ("effects", "interventions", "jacobians", "routing", "steering", "quality")  # a line's stages, in order


def analyse_line(line: Line, progress: bool, executor) -> LineResults:
    """The computed stages of one cell line."""
    effects = run_effects(line, progress, executor)
    intervened = run_interventions(line, effects, progress, executor)
    # Shards are hashed only when the routing stage will read them; with it cached, sizes and headers suffice.
    shards, jacobian_record = run_jacobians(line, effects, progress, executor,
                                            verify_shards=line.stage("routing").record(quiet=True) is None)
    routing_result = run_routing(line, effects, intervened, shards, jacobian_record)
    steered = run_steering(line, effects, shards, routing_result, progress, executor)
    return LineResults(line.config.cell_line, effects, routing_result,
                       provenance(line.config, line.run, line.keys["inputs"]), intervened, steered,
                       run_quality(line, effects, routing_result))


# ---------------------------------------------------------------- stages
def run_effects(line: Line, progress: bool = True, executor=None) -> EffectsResult:
    """ΔY for every KD (batches on `executor`, default the config's), its reproducibility, clusters and enrichment."""
    config, loaded, stage = line.config, line.run, line.stage("effects")
    executor = executor or executors.for_config(config)

    def compute() -> dict:
        started = time.perf_counter()
        responses = compute_effects(loaded, config.n_draws, config.seed, config.kds_per_call, executor, line.state,
                                    progress)
        try:
            clusters = clustering.cluster_kds(responses.delta_y, config.max_clusters, config.cluster_bootstrap,
                                              config.seed, config.weak_fraction)
        except clustering.TooFewStrongEffects as exc:
            raise InputError(f"{config.source} [data].kds", f"{exc}; analyse more KDs") from None
        libraries = read_libraries(config.gene_sets)
        ora, gsea = enrichment.cluster_enrichment(responses.kd_names, clusters.labels, responses.delta_y,
                                                  responses.gene_names, libraries, config.prerank_permutations,
                                                  config.seed, loaded.space.has_genes)
        stage.write_npz("effects.npz", delta_y=responses.delta_y, delta_y_draws=responses.delta_y_draws,
                        pert_repr=responses.pert_repr, control_repr=responses.control_repr,
                        draw_cells=responses.draw_cells, c_out=clustering.cosine_similarity(responses.delta_y),
                        bootstrap_ari=clusters.bootstrap_ari, order=clusters.order)
        stage.write_json("names.json", {"kd_names": list(responses.kd_names), "gene_names": list(responses.gene_names)})
        stage.write_parquet("kds.parquet", clustering.cluster_table(
            responses.kd_names, clusters, reproducibility(responses.kd_names, responses.delta_y_draws)))
        stage.write_parquet("silhouette.parquet", clusters.silhouette)
        stage.write_parquet("ora.parquet", ora)
        stage.write_parquet("gsea.parquet", gsea)
        return {"seconds": time.perf_counter() - started, "n_clusters": clusters.n_clusters}

    return read_effects(stage, stage.ensure(compute))


def run_interventions(line: Line, effects: EffectsResult, progress: bool = True,
                      executor=None) -> InterventionsResult:
    """The model's responses to substituted pert_repr (forward passes only, on the effects stage's control draws):
    each KD's cluster leave-one-out centroid and random groups' centroids, and the interchange of cluster-shared
    components; scored by `stats.interventions`."""
    config, loaded, stage, responses = line.config, line.run, line.stage("interventions"), effects.responses
    executor = executor or executors.for_config(config)

    def compute() -> dict:
        started = time.perf_counter()
        plan = interventions.substitution_plan(effects.labels, config.random_groups, config.seed)
        swap = interventions.interchange_plan(responses.pert_repr, responses.control_repr, plan, config.seed)
        points = [interventions.centroids(responses.pert_repr, plan)] if plan.n_points else []
        points += [swap.points] if swap is not None else []
        answers = (substituted_responses(loaded, np.concatenate(points), responses.control_repr,
                                         responses.draw_cells, executor, line.state,
                                         "Interventions (substituted pert_repr)", progress)
                   if points else np.zeros((0, len(responses.gene_names))))
        substitution, table = interventions.substitution_test(responses.delta_y, answers[:plan.n_points], plan,
                                                               responses.kd_names, config.n_permutations, config.seed)
        interchange = None
        if swap is not None:
            interchange, swapped = interventions.interchange_test(responses.delta_y, answers[plan.n_points:], swap,
                                                                  config.n_permutations, config.seed)
            table = pd.concat([table, swapped], axis=1)
        stage.write_parquet("kds.parquet", table)
        stage.write_json("tests.json", {"substitution": codec.encode(substitution),
                                        "interchange": codec.encode(interchange)})
        return {"seconds": time.perf_counter() - started, "n_sets": len(answers) * len(responses.draw_cells)}

    return read_interventions(stage, stage.ensure(compute))


def run_jacobians(line: Line, effects: EffectsResult, progress: bool = True, executor=None,
                  verify_shards: bool = True) -> tuple[JacobianShards, dict]:
    """Jacobian shards and the stage record (time, device, executor, autograd check of one KD).

    The shard tasks run on `executor`, which gets the loaded run as its worker state (shipped as checkpoint bytes
    and control cells to remote workers); each result is stored here, as it arrives, with one progress bar over
    KDs, whichever executor computed it. Shards already stored and intact (a killed run's) are kept.
    verify_shards=False checks a cached stage's shard sizes, not their sha256 (for a run that will not read them).
    """
    config, loaded, stage, responses = line.config, line.run, line.stage("jacobians"), effects.responses
    executor = executor or executors.for_config(config)

    def compute() -> dict:
        store = ShardStore(stage)
        tasks = jacobians.shard_tasks(len(loaded.kd_names), config.shard_kds)
        todo = [task for task in tasks if not store.valid(task.index, task.kds)]
        inputs = jacobians.JacobianInputs(responses.pert_repr, responses.control_repr, responses.draw_cells,
                                          config.kds_per_call, config.tangents_per_call, config.compile_jacobian)
        bar = StageProgress(len(loaded.kd_names), "Jacobians ∂E[Y]/∂pert_repr", "KD", progress,
                            initial=len(loaded.kd_names) - sum(len(t.kds) for t in todo))
        last = time.perf_counter()
        for task, arrays in executor.map(partial(jacobians.jacobian_shard, inputs=inputs), todo, line.state):
            now = time.perf_counter()
            store.put(task.index, task.kds, arrays, seconds=now - last)  # wall time since the previous shard
            last = now
            bar.update(len(task.kds))
        bar.close()
        check = jacobians.autograd_check(loaded, open_shards(stage.path), responses.pert_repr, responses.draw_cells)
        return {"n_kds": len(loaded.kd_names), "n_shards": len(tasks), "seconds": store.total_seconds(),
                "device": str(loaded.device), "executor": executor.describe(), "autograd_check": check}

    record = stage.ensure(compute, contents=verify_shards)
    return open_shards(stage.path), record


def run_routing(line: Line, effects: EffectsResult, intervened: InterventionsResult, shards: JacobianShards,
                jacobian_record: dict) -> RoutingResult:
    """C_jac and its KD-specific part C_jac^spec from the streamed Gram, the SVD and its reading, the statistics, the
    verdict (with the interventions' answer to whether the geometry is used), routing block by block through the
    backbone, the prior-work numbers."""
    config, stage, responses = line.config, line.stage("routing"), effects.responses

    def compute() -> dict:
        started = time.perf_counter()
        gram = routing.stream_gram(shards)
        c_jac = routing.cosine_from_gram(gram)
        _, c_jac_specific = routing.decompose(gram)
        c_rep = clustering.cosine_similarity(responses.pert_repr)
        svd = routing.jacobian_svd(gram, shards, responses.delta_y, config.n_axes)
        output_scores, output_loadings = output_svd(responses.delta_y, config.n_axes)
        linear = routing.linearity(responses.delta_y, shards.linear_prediction())
        evidence = routing.routing_evidence(effects.c_out, c_jac, c_rep, effects.labels, config.n_permutations,
                                            config.n_bootstrap, config.seed, gram, config.normal_reference_kds)
        noise_started = time.perf_counter()
        evidence = reliability.with_noise_floor(evidence, *reliability.halves(shards, responses.delta_y_draws))
        noise_seconds = time.perf_counter() - noise_started
        depth = verdict.read_depth(routing.routing_by_depth(
            [shards.block(b) for b in range(shards.n_blocks)], effects.c_out, effects.labels, config.n_permutations,
            config.seed, routing.reference_for(evidence.n_strong, config.normal_reference_kds)), config.decision_rule)
        svd_table, svd_evidence = read_axes(svd, output_scores, output_loadings, responses.kd_names,
                                            responses.gene_names, read_libraries(config.gene_sets), config.fdr,
                                            config.prerank_permutations, config.seed, line.run.space.has_genes)
        call = verdict.decide(evidence, config.decision_rule, svd_evidence, intervened.substitution,
                              intervened.interchange)
        linearity_frame = pd.DataFrame({"kd": responses.kd_names, "cluster": effects.labels,
                                        "explained": linear.to_numpy(), "jacobian_norm": np.sqrt(np.diag(gram))})
        stage.write_npz("matrices.npz", c_out=effects.c_out, c_jac=c_jac, c_jac_specific=c_jac_specific, c_rep=c_rep, gram=gram,
                        variance_explained=svd.variance_explained, kd_scores=svd.kd_scores,
                        gene_loadings=svd.gene_loadings, input_directions=svd.input_directions,
                        output_kd_scores=output_scores,
                        output_gene_loadings=output_loadings)
        stage.write_json("evidence.json", {"routing": codec.encode(evidence), "svd": codec.encode(svd_evidence),
                                           "depth": codec.encode(depth)})
        stage.write_json("verdict.json", codec.encode(call))
        stage.write_parquet("svd_enrichment.parquet", svd_table)
        stage.write_parquet("linearity.parquet", linearity_frame)
        stage.write_json("prior_work.json", prior_work(responses.kd_names, effects.c_out, c_jac, c_rep, effects.labels))
        return {"seconds": time.perf_counter() - started, "noise_floor_seconds": noise_seconds}

    return read_routing(stage, stage.ensure(compute), line.stage("jacobians"), jacobian_record, effects.seconds)


def run_steering(line: Line, effects: EffectsResult, shards: JacobianShards, routing_result: RoutingResult,
                 progress: bool = True, executor=None) -> SteeringResult:
    """ΔY as p moves along each leading routing axis from its highest-scoring KD (forward passes only), against the
    first-order prediction from that KD's stored Jacobian: dose-response and trust radius per axis."""
    config, loaded, stage, responses = line.config, line.run, line.stage("steering"), effects.responses
    executor = executor or executors.for_config(config)

    def compute() -> dict:
        started = time.perf_counter()
        plan = interventions.steering_plan(responses.pert_repr, responses.control_repr, routing_result.kd_scores,
                                           routing_result.input_directions, effects.labels)
        answers = substituted_responses(loaded, plan.points, responses.control_repr, responses.draw_cells, executor,
                                        line.state, "Steering along routing axes", progress)
        table, radii = interventions.steering_table(answers, interventions.first_order_columns(shards, plan), plan,
                                                    routing_result.gene_loadings, responses.kd_names)
        stage.write_parquet("steering.parquet", table)
        return {"seconds": time.perf_counter() - started, "trust_radius": list(radii), "scale": plan.scale,
                "tolerance": interventions.TRUST_TOLERANCE}

    return read_steering(stage, stage.ensure(compute))


def run_quality(line: Line, effects: EffectsResult, routing_result: RoutingResult) -> QualityResult:
    """Part 0: each KD with observed cells in the line predicted on the effects stage's control draws (per cell) and
    scored through cell-eval with its baseline and ceiling, per KD and overall (seen / held out when the split is
    known); then the routing statistics and the call on the KDs the model predicts better than the baseline.

    cell-eval's DE metrics as the config field de_metrics decides (`quality.use_de`); without them the model enters
    as its group means, from ΔY (`predict_means`), and no predicted cell is held.

    Not scored (the run goes on, the reason recorded) when the .h5ad holds no perturbed cells of the analysed KDs in
    the line, when the space is an undecoded embedding, or when the observed or predicted values cell-eval would read
    are negative (it scores log-normalised expression)."""
    config, loaded, stage, responses = line.config, line.run, line.stage("quality"), effects.responses
    matrices_file = line.stage("routing") / "matrices.npz"  # the Gram of the Jacobians

    def compute() -> dict:
        started = time.perf_counter()
        kd_names = responses.kd_names
        held_out, split_source = training_split(config, loaded, kd_names)
        observed = load_observed(config, loaded)
        counts = pd.Series(observed.labels).value_counts()
        scored = [kd for kd in kd_names if counts.get(kd, 0) >= config.min_observed_cells and loaded.space.has_genes]
        status = ("not scored: the space is an undecoded embedding; cell-eval scores expression"
                  if not loaded.space.has_genes else
                  "" if scored else f"not scored: no KD has {config.min_observed_cells} or more observed cells in "
                                    f"cell line '{config.cell_line}' of {config.h5ad.name}")
        kd_table, overall, keep = pd.DataFrame({"kd": []}), pd.DataFrame({"group": []}), np.zeros(len(kd_names), bool)
        de, de_reason = quality.use_de(config.de_metrics, len(scored))
        negative = "not scored: negative expression values in the {} (cell-eval scores log-normalised expression)"
        if not status:
            rows = np.isin(observed.labels, scored + [config.control_label])
            cells, labels = ((observed.cells, observed.labels) if rows.all() else  # no copy when every row is kept
                             (observed.cells[rows], observed.labels[rows]))
            status = negative.format("observed cells") if cells.min() < 0 else ""  # cell-eval refuses such data
        if not status:
            index = {kd: k for k, kd in enumerate(kd_names)}
            predicted = (predict_cells(loaded, scored, responses.draw_cells, config.kds_per_call) if de else
                         predict_means(loaded, responses.delta_y[[index[kd] for kd in scored]], responses.draw_cells))
            if predicted.min() < 0:
                status = negative.format("predicted cells" if de else "predicted group means")
        if status:
            scored = []
        else:
            kd_table, ceiling = quality.score_predictions(predicted, cells, labels, scored, loaded.gene_names,
                                                          config.control_label, config.seed, de)
            del predicted
            groups = {"all": scored}
            if held_out is not None:
                groups |= {"seen": [k for k in scored if k not in held_out], "held out": [k for k in scored if k in held_out]}
            overall = quality.overall_table(kd_table, ceiling, groups)
            keep = quality.well_predicted(kd_table, kd_names)
        with np.load(matrices_file) as matrices:
            gram = matrices["gram"]
        found = quality.sensitivity(keep, effects.c_out, routing_result.c_jac, routing_result.c_rep, gram, effects.labels,
                                    config.n_permutations, config.n_bootstrap, config.seed, config.decision_rule,
                                    config.normal_reference_kds)
        stage.write_parquet("kds.parquet", kd_table)
        stage.write_parquet("overall.parquet", overall)
        stage.write_json("quality.json", {
            "status": status, "unscored": [k for k in kd_names if k not in set(scored)], "split_source": split_source,
            "held_out": None if held_out is None else list(held_out), "cell_eval": quality.cell_eval_version(),
            "well_predicted": [k for k, kept in zip(kd_names, keep) if kept],
            "metrics": list(quality.computed_metrics(de)), "de_metrics": de, "de_reason": de_reason})
        # Routing re-read on the KDs the model saw in training and on those it did not, when the split is known.
        split = {} if held_out is None else {
            group: quality.sensitivity(np.isin(kd_names, held_out) == held, effects.c_out, routing_result.c_jac,
                                       routing_result.c_rep, gram, effects.labels, config.n_permutations,
                                       config.n_bootstrap, config.seed, config.decision_rule, config.normal_reference_kds)
            for group, held in (("seen", False), ("held out", True))}
        stage.write_json("sensitivity.json", {
            group: {"evidence": codec.encode(calls[0]) if calls else None,
                    "verdict": codec.encode(calls[1]) if calls else None}
            for group, calls in {"better than baseline": found, **split}.items()})
        # the process's peak resident memory up to the stage's end (Linux reports KiB): an upper bound for the stage
        return {"seconds": time.perf_counter() - started,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    return read_quality(stage, stage.ensure(compute))


def run_across(config: AnalysisConfig, across_key: str, lines: list[Line], results: tuple) -> AcrossResult:
    """The primary line against each other line: per-KD cosines of ΔY and of J, and the paired comparison."""
    stage = cache.StageDir(config.cache_dir, "across", across_key)
    shard_folders = [line.stage("jacobians").path for line in lines]

    def line_data(index: int) -> consistency.LineData:
        result = results[index]
        responses = result.effects.responses
        return consistency.LineData(result.cell_line, responses.kd_names, responses.delta_y,
                                    open_shards(shard_folders[index]),
                                    result.routing.linearity["jacobian_norm"].to_numpy(), result.effects.labels)

    def compute() -> dict:
        started = time.perf_counter()
        primary, tables, tests = line_data(0), [], []
        for index in range(1, len(results)):
            table, pair_tests = consistency.compare_lines(primary, line_data(index), config.n_permutations,
                                                          config.n_bootstrap, config.seed, config.alpha)
            tables.append(table)
            tests += pair_tests
        stage.write_parquet("kds.parquet", pd.concat(tables, ignore_index=True))
        stage.write_json("tests.json", [codec.encode(test) for test in tests])
        return {"seconds": time.perf_counter() - started}

    return read_across(stage, stage.ensure(compute))


def stage_paths(config: AnalysisConfig, lines: list[Line], across_key: str | None) -> dict:
    """{label: cache folder} of every stage: each line's, then the across-lines stage."""
    paths = {}
    for line in lines:
        suffix = f" ({line.config.cell_line})" if len(lines) > 1 else ""
        paths |= {f"{name}{suffix}": str(line.stage(name).path) for name in LINE_STAGES}
    if across_key:
        paths["across"] = str(stages.stage_folder(config, "across", across_key))
    return paths
