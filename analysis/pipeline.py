"""The pipeline: load → effects/clusters/enrichment (Part 1) → Jacobians (Part 2) → routing and verdict (Part 3).

Each part is cached under `<cache_dir>/<part>/<key>/`, keyed by the content of its inputs;
`run_analysis` computes what is missing and returns results read back from the cache, so
the report sees the same objects whether they were computed now or on a GPU node earlier.
"""

from __future__ import annotations

import json
import os
import platform
import time
from functools import partial
from importlib import metadata

import numpy as np
import pandas as pd

from . import cache, clustering, consistency, demo, enrichment, executors, jacobians, routing, verdict
from .config import AnalysisConfig
from .console import StageProgress, note
from .effects import compute_effects
from .formatting import p_phrase
from .load import LoadedRun, ShippedRun, checkpoint_file, load_run
from .results import Across, LineResults, Part1, Part3, Results, read_across, read_part1, read_part3
from .verdict import DecisionRule

PACKAGES = ("torch", "arc-state", "transformers", "numpy", "scipy", "pandas", "scikit-learn", "gseapy", "altair", "anndata")


def run_analysis(config: AnalysisConfig, progress: bool = True, executor=None) -> Results:
    """Everything, computing only what the cache lacks: Parts 1–3 for each cell line of the config (the first is
    the primary line), then routing across the lines when there are several. `executor` runs Part 1's ΔY batches and
    the Jacobian shards (default: the config's [runtime] executor).

    Raises CacheError before any compute when something must be computed and the cache folder is not writable.
    """
    if demo.needs_build(config):
        cache.require_writable(config.cache_dir)
    demo.ensure_demo(config, progress)
    executor = executor or executors.for_config(config)
    lines = []
    for line_config in config.per_line():
        if progress and len(config.cell_lines) > 1:
            note(f"Cell line {line_config.cell_line}:")
        lines.append(analyse_line(line_config, progress, executor))
    lines = tuple(lines)
    across = run_across(config, lines) if len(lines) > 1 else None
    return Results(config, lines, across)


def analyse_line(config: AnalysisConfig, progress: bool, executor) -> LineResults:
    """Parts 1–3 on one cell line's control cells (`config` names at most one line)."""
    run = load_run(config)
    p1_key, jac_key = part1_key(config, run), jacobian_key(config, run)
    stages = [cache.StageDir(config.cache_dir, stage, key)
              for stage, key in [("part1", p1_key), ("jacobians", jac_key), ("part3", part3_key(config, p1_key, jac_key))]]
    if not all(stage.has_record for stage in stages):
        cache.require_writable(config.cache_dir)
    part1 = run_part1(config, run, progress, executor)
    # Shards are hashed only when Part 3 will read them; with Part 3 cached, their sizes and headers suffice.
    shards, jac_key, jacobian_record = run_part2(config, run, part1, progress, executor,
                                                 verify_shards=stages[2].record(quiet=True) is None)
    part3 = run_part3(config, part1, shards, jac_key, jacobian_record, run.space.has_genes)
    return LineResults(config.cell_line, part1, part3, provenance(config, run))


# ---------------------------------------------------------------- Part 1
def part1_key(config: AnalysisConfig, run: LoadedRun) -> str:
    return cache.content_key("part1", cache.code_version("effects", "clustering", "enrichment", run_part1),
                             run.input_key, run.kd_names, run.set_size, config.n_draws, config.seed,
                             config.max_clusters, config.cluster_bootstrap, config.prerank_permutations,
                             [cache.file_digest(p) for p in config.gene_sets])


def run_part1(config: AnalysisConfig, run: LoadedRun, progress: bool = True, executor=None) -> Part1:
    """Part 1, its ΔY batches run on `executor` (default: the config's)."""
    stage = cache.StageDir(config.cache_dir, "part1", part1_key(config, run))

    def compute() -> dict:
        started = time.perf_counter()
        effects = compute_effects(run, config.n_draws, config.seed, config.kds_per_call, progress,
                                  executor or executors.for_config(config), worker_state(config, run))
        clusters = clustering.cluster_kds(effects.delta_y, config.max_clusters, config.cluster_bootstrap, config.seed)
        libraries = enrichment.read_libraries(config.gene_sets)
        ora, gsea = enrichment.cluster_enrichment(effects.kd_names, clusters.labels, effects.delta_y, effects.gene_names,
                                                  libraries, config.prerank_permutations, config.seed,
                                                  run.space.has_genes)
        stage.write_npz("effects.npz", delta_y=effects.delta_y, delta_y_draws=effects.delta_y_draws,
                        pert_repr=effects.pert_repr, control_repr=effects.control_repr, draw_cells=effects.draw_cells,
                        bootstrap_ari=clusters.bootstrap_ari, order=clusters.order)
        stage.write_json("names.json", {"kd_names": list(effects.kd_names), "gene_names": list(effects.gene_names)})
        stage.write_parquet("kds.parquet", clustering.cluster_table(effects.kd_names, clusters, effects.reproducibility()))
        stage.write_parquet("silhouette.parquet", clusters.silhouette)
        stage.write_parquet("ora.parquet", ora)
        stage.write_parquet("gsea.parquet", gsea)
        return {"seconds": time.perf_counter() - started, "n_clusters": clusters.n_clusters}

    return read_part1(stage, stage.ensure(compute))


def worker_state(config: AnalysisConfig, run: LoadedRun) -> executors.WorkerState:
    """The loaded run as executors' worker state: itself here, checkpoint bytes and control cells elsewhere."""
    return executors.WorkerState(run, partial(ShippedRun.of, config, run))


# ---------------------------------------------------------------- Part 2
def jacobian_key(config: AnalysisConfig, run: LoadedRun) -> str:
    # Batching and compilation change the float rounding of J (≈ 1e-7), so they are inputs of the result too.
    return cache.content_key("jacobians", cache.code_version("jacobians", "tangent_graph", "model_call", "effects"),
                             run.input_key, run.kd_names, run.set_size, config.n_draws, config.seed, config.shard_kds,
                             config.kds_per_call, config.tangents_per_call, config.compile_jacobian)


def run_part2(config: AnalysisConfig, run: LoadedRun, part1: Part1, progress: bool = True, executor=None,
              verify_shards: bool = True):
    """Jacobian shards, their cache key, and the stage record (time, device, autograd check of one KD).

    The shard tasks run on `executor` (default: the config's, `executors.for_config`), which gets the loaded run
    as its worker state (shipped as checkpoint bytes and control cells to remote workers); each result is stored
    here, as it arrives, with one progress bar over KDs, whichever executor computed it. Shards already stored and intact (a killed run's) are kept. verify_shards=False checks
    a cached stage's shard sizes, not their sha256 (for a run that will not read them).
    """
    stage = cache.StageDir(config.cache_dir, "jacobians", jacobian_key(config, run))
    effects = part1.effects

    def compute() -> dict:
        store = cache.ShardStore(stage)
        tasks = jacobians.shard_tasks(len(run.kd_names), config.shard_kds)
        todo = [task for task in tasks if not store.valid(task.index, task.kds)]
        inputs = jacobians.JacobianInputs(effects.pert_repr, effects.control_repr, effects.draw_cells,
                                          config.kds_per_call, config.tangents_per_call, config.compile_jacobian)
        bar = StageProgress(len(run.kd_names), "Jacobians ∂E[Y]/∂pert_repr", "KD", progress,
                            initial=len(run.kd_names) - sum(len(t.kds) for t in todo))
        last = time.perf_counter()
        pool = executor or executors.for_config(config)
        for task, arrays in pool.map(partial(jacobians.jacobian_shard, inputs=inputs), todo, worker_state(config, run)):
            now = time.perf_counter()
            store.put(task.index, task.kds, arrays, seconds=now - last)  # wall time since the previous shard
            last = now
            bar.update(len(task.kds))
        bar.close()
        check = jacobians.autograd_check(run, jacobians.open_shards(stage.path), effects.pert_repr, effects.draw_cells)
        return {"n_kds": len(run.kd_names), "n_shards": len(tasks), "seconds": store.total_seconds(),
                "device": str(run.device), "executor": pool.describe(), "autograd_check": check}

    record = stage.ensure(compute, contents=verify_shards)
    return jacobians.open_shards(stage.path), stage.key, record


# ---------------------------------------------------------------- Part 3
def part3_key(config: AnalysisConfig, part1_key: str, jac_key: str) -> str:
    # The code Part 3 computes with: its modules, and the pipeline functions that hold its steps (add new ones here).
    code = cache.code_version("routing", "verdict", "enrichment", "clustering", run_part3, read_svd)
    return cache.content_key("part3", code, part1_key, jac_key, config.n_permutations, config.n_bootstrap, config.seed,
                             DecisionRule.from_config(config), config.fdr, config.n_axes, config.prerank_permutations,
                             [cache.file_digest(p) for p in config.gene_sets])


def run_part3(config: AnalysisConfig, part1: Part1, shards: jacobians.JacobianShards, jac_key: str,
              jacobian_record: dict, responses_are_genes: bool) -> Part3:
    """Part 3. responses_are_genes: False in embedding space (`read_svd`); the space is in Part 1's key, so in this one."""
    stage = cache.StageDir(config.cache_dir, "part3", part3_key(config, part1.key, jac_key))

    def compute() -> dict:
        started = time.perf_counter()
        effects = part1.effects
        gram = routing.stream_gram(shards)
        c_jac = routing.cosine_from_gram(gram)
        c_out = part1.c_out
        c_rep = clustering.cosine_similarity(effects.pert_repr)
        svd = routing.jacobian_svd(gram, shards, effects.delta_y, config.n_axes)
        output_scores, output_loadings = routing.output_svd(effects.delta_y, config.n_axes)
        linear = routing.linearity(effects.delta_y, shards.linear_prediction())
        evidence = routing.routing_evidence(c_out, c_jac, c_rep, part1.labels, config.n_permutations,
                                            config.n_bootstrap, config.seed)
        svd_table, svd_evidence = read_svd(config, part1, svd, output_scores, output_loadings, responses_are_genes)
        call = verdict.decide(evidence, DecisionRule.from_config(config), svd_evidence)
        linearity_frame = pd.DataFrame({"kd": effects.kd_names, "cluster": part1.labels, "explained": linear.to_numpy(),
                                        "jacobian_norm": np.sqrt(np.diag(gram))})
        prior = verdict.prior_work(effects.kd_names, c_out, c_jac, c_rep, part1.labels)
        stage.write_npz("matrices.npz", c_out=c_out, c_jac=c_jac, c_rep=c_rep, gram=gram,
                        variance_explained=svd.variance_explained, kd_scores=svd.kd_scores,
                        gene_loadings=svd.gene_loadings, output_kd_scores=output_scores,
                        output_gene_loadings=output_loadings)
        stage.write_json("evidence.json", {"routing": evidence.to_dict(), "svd": svd_evidence.to_dict()})
        stage.write_json("verdict.json", call.to_dict())
        stage.write_parquet("svd_enrichment.parquet", svd_table)
        stage.write_parquet("linearity.parquet", linearity_frame)
        stage.write_parquet("prior_work.parquet", prior)
        return {"seconds": time.perf_counter() - started}

    record = stage.ensure(compute)
    return read_part3(stage, record, jac_key, {"part1": part1.seconds, "jacobians": jacobian_record["seconds"]},
                      jacobian_record["autograd_check"])


def read_svd(config: AnalysisConfig, part1: Part1, svd: routing.JacobianSVD, output_scores: np.ndarray,
             output_loadings: np.ndarray, responses_are_genes: bool, axes_read: int = 3,
             output_overlap: float = 0.9) -> tuple[pd.DataFrame, routing.SvdEvidence]:
    """Enrichment of the leading `axes_read` routing and output axes, and what it shows (`routing.SvdEvidence`).

    A routing axis whose gene loading projects less than `output_overlap` onto the span of ΔY's leading gene loadings
    carries something the output axes do not. With responses_are_genes False (embedding space) the gene-loading
    tables are empty, so no axis reads as a pathway.
    """
    libraries = enrichment.read_libraries(config.gene_sets)
    effects = part1.effects
    n_axes = min(axes_read, svd.kd_scores.shape[1], output_scores.shape[1])
    tables = {source: enrichment.axis_enrichment(source, scores, loadings, effects.kd_names, effects.gene_names,
                                                 libraries, config.prerank_permutations, config.seed, n_axes,
                                                 responses_are_genes)
              for source, scores, loadings in (("routing", svd.kd_scores, svd.gene_loadings),
                                               ("output", output_scores, output_loadings))}
    overlap, principal_cosine = routing.subspace_overlap(svd.gene_loadings[:n_axes], output_loadings[:n_axes])

    def readings(table: pd.DataFrame, overlaps) -> tuple:
        out = []
        for a in range(1, n_axes + 1):
            side = {kind: table[(table["axis"] == a) & (table["kind"] == kind)] for kind in ("genes", "KDs")}
            label, gene, kd = enrichment.matched_pathway(side["genes"], side["KDs"], libraries, config.fdr)
            value = (lambda row, col: float(row[col]) if row is not None else float("nan"))
            out.append(routing.AxisReading(a, label, value(gene, "fdr"), value(gene, "nes"), value(kd, "fdr"),
                                           value(kd, "nes"), float(overlaps[a - 1])))
        return tuple(out)

    axis1 = tables["routing"][tables["routing"]["axis"] == 1]
    best = {kind: axis1[axis1["kind"] == kind].head(1) for kind in ("genes", "KDs")}  # tables are sorted by FDR
    first = (lambda frame, col, default: frame[col].iloc[0] if len(frame) else default)
    evidence = routing.SvdEvidence(
        fdr=config.fdr, overlap_threshold=output_overlap, n_axes=n_axes,
        seed_gene_term=str(first(best["genes"], "term", "")), seed_gene_fdr=float(first(best["genes"], "fdr", 1.0)),
        seed_kd_term=str(first(best["KDs"], "term", "")), seed_kd_fdr=float(first(best["KDs"], "fdr", 1.0)),
        seed_kd_nes=float(first(best["KDs"], "nes", float("nan"))),
        axes=readings(tables["routing"], overlap), output_axes=readings(tables["output"], np.ones(n_axes)),
        min_principal_cosine=principal_cosine)
    return pd.concat(tables.values(), ignore_index=True), evidence


# ---------------------------------------------------------------- across cell lines
def across_key(config: AnalysisConfig, lines: tuple) -> str:
    return cache.content_key("across", cache.code_version("consistency", run_across),
                             [(line.cell_line, line.part1.key, line.part3.jacobian_key) for line in lines],
                             config.n_permutations, config.n_bootstrap, config.seed, config.alpha)


def run_across(config: AnalysisConfig, lines: tuple) -> Across:
    """The primary line against each other line: per-KD cosines of ΔY and of J, and the paired comparison."""
    stage = cache.StageDir(config.cache_dir, "across", across_key(config, lines))

    def line_data(line: LineResults) -> consistency.LineData:
        shards = jacobians.open_shards(cache.StageDir(config.cache_dir, "jacobians", line.part3.jacobian_key).path)
        effects = line.part1.effects
        return consistency.LineData(line.cell_line, effects.kd_names, effects.delta_y, shards,
                                    line.part3.linearity["jacobian_norm"].to_numpy(), line.part1.labels)

    def compute() -> dict:
        started = time.perf_counter()
        primary, tables, tests = line_data(lines[0]), [], []
        for other in lines[1:]:
            table, pair_tests = consistency.compare_lines(primary, line_data(other), config.n_permutations,
                                                          config.n_bootstrap, config.seed, config.alpha)
            tables.append(table)
            tests.append(pair_tests)
        stage.write_parquet("kds.parquet", pd.concat(tables, ignore_index=True))
        stage.write_json("tests.json", [test.to_dict() for pair_tests in tests for test in pair_tests])
        text = "; ".join(consistency.describe(table, pair_tests) for table, pair_tests in zip(tables, tests))
        return {"seconds": time.perf_counter() - started, "prior_work": text}

    return read_across(stage, stage.ensure(compute))


# ---------------------------------------------------------------- provenance
def provenance(config: AnalysisConfig, run: LoadedRun) -> dict:
    """Versions, hardware and hashes for the reproducibility appendix."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    device = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else platform.processor() or platform.machine()
    ckpt = checkpoint_file(config)
    return {
        "python": platform.python_version(), "platform": platform.platform(), "device": f"{run.device} ({device})",
        "cpu_count": os.cpu_count(), "versions": versions,
        "code_version": cache.code_version(*sorted(p.stem for p in cache.PACKAGE_DIR.glob("*.py"))),
        "checkpoint_sha256": cache.file_digest(ckpt), "data_sha256": cache.file_digest(config.h5ad),
        "input_key": run.input_key, "config": config.describe(), "config_file": str(config.source),
        "n_kds": len(run.kd_names), "n_genes": len(run.gene_names), "hidden_dim": run.hidden_dim,
        "set_size": run.set_size, "space": run.space.description,
    }


def summary_lines(results: Results) -> list[str]:
    """What the command line prints: the cluster table with top enrichments, then the verdict with its criteria."""
    p1, p3 = results.part1, results.part3
    top_ora = enrichment.top_terms(p1.ora).set_index("query")
    top_gsea = enrichment.top_terms(p1.gsea).set_index("query")
    lines = [f"Part 1: {len(p1.labels)} KDs, {int(p1.labels.max())} clusters (+ weak-effect group 0), "
             f"bootstrap ARI median {np.median(p1.bootstrap_ari):.2f}; draw-to-draw cosine median "
             f"{p1.kd_table['draw_cosine'].median():.3f}", ""]
    header = f"{'cluster':>7} {'KDs':>4}  {'top KD-target term (FDR)':<58} top response term (FDR)"
    lines += [header, "-" * len(header)]
    for cluster, members in p1.kd_table.groupby("cluster"):
        q = f"cluster {cluster}"
        ora = f"{top_ora.loc[q, 'term'][:48]} ({top_ora.loc[q, 'fdr']:.1e})" if q in top_ora.index else "—"
        gsea = f"{top_gsea.loc[q, 'term'][:48]} ({top_gsea.loc[q, 'fdr']:.1e})" if q in top_gsea.index else "—"
        lines.append(f"{cluster:>7} {len(members):>4}  {ora:<58} {gsea}")
    check = p3.autograd_check
    lines += ["", f"Part 2: {len(p1.labels)} Jacobians of {len(p1.effects.gene_names)} × {p1.effects.pert_repr.shape[1]} in "
              f"{p3.seconds['jacobians']:.0f} s; {check['kd']} against reverse mode: relative error {check['relative_error']:.1e}; "
              f"median share of ΔY explained by J·Δp {p3.linearity['explained'].median():.2f}"]
    lines += ["", f"Verdict: {p3.verdict.call.upper()} — {p3.verdict.meaning}", f"  Why: {p3.verdict.reason}"]
    if p3.verdict.caveat:
        lines.append(f"  Caveat: {p3.verdict.caveat}")
    lines.append("")
    for c in p3.verdict.criteria:
        p = "" if c.p_value is None else ", " + p_phrase(c.p_value, results.config.n_permutations)
        basis = f" → {c.supports}" if c.supports else ""
        lines.append(f"  [{'held' if c.held else 'not held'}] ({c.family}) {c.name}: {c.statistic} = {c.value:.3g}{p}"
                     f"{basis}; threshold {c.threshold}")
    if results.across is not None:
        lines += ["", "Across cell lines (the lines above: " + results.lines[0].cell_line + ")"]
        lines += [f"  {line.cell_line}: {line.part3.verdict.call.upper()} "
                  f"(r = {line.part3.evidence.mantel_pearson.statistic:.2f}, "
                  f"contrast {line.part3.evidence.contrast.test.statistic:.2f} SD)" for line in results.lines]
        lines.append(f"  {results.across.prior_work}")
    return lines


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
