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
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import cache, clustering, demo, enrichment, executors, jacobians, routing, verdict
from .config import AnalysisConfig
from .effects import Effects, compute_effects
from .load import LoadedRun, ShippedRun, load_run

PACKAGES = ("torch", "arc-state", "transformers", "numpy", "scipy", "pandas", "scikit-learn", "gseapy", "altair", "anndata")


@dataclass(frozen=True)
class Part1:
    """Part 1 results. kd_table: kd, cluster, reproducibility; ora / gsea: enrichment tables (query = 'cluster c')."""

    key: str
    effects: Effects
    kd_table: pd.DataFrame
    silhouette: pd.DataFrame
    bootstrap_ari: np.ndarray
    order: np.ndarray
    ora: pd.DataFrame
    gsea: pd.DataFrame
    seconds: float

    @property
    def labels(self) -> np.ndarray:
        return self.kd_table["cluster"].to_numpy()

    @property
    def c_out(self) -> np.ndarray:
        return clustering.cosine_similarity(self.effects.delta_y)


@dataclass(frozen=True)
class Part3:
    """Part 2–3 results: similarity matrices [K, K], SVD summaries, statistics, verdict, prior-work table."""

    key: str
    jacobian_key: str
    c_out: np.ndarray
    c_jac: np.ndarray
    c_rep: np.ndarray
    variance_explained: np.ndarray
    kd_scores: np.ndarray  # [K, A]
    gene_loadings: np.ndarray  # [A, G]
    stats: dict
    svd_enrichment: pd.DataFrame
    linearity: pd.DataFrame
    verdict: verdict.Verdict
    prior_work: pd.DataFrame
    seconds: dict
    autograd_check: dict  # {"kd", "relative_error"}: one stored J_k against reverse mode on this run


@dataclass(frozen=True)
class Results:
    config: AnalysisConfig
    part1: Part1
    part3: Part3
    provenance: dict


def run_analysis(config: AnalysisConfig, progress: bool = True, executor=None) -> Results:
    """Everything, computing only what the cache lacks. `executor` runs Part 1's ΔY batches and the Jacobian shards
    (default: the config's [runtime] executor).

    Raises CacheError before any compute when something must be computed and the cache folder is not writable.
    """
    if demo.needs_build(config):
        cache.require_writable(config.cache_dir)
    demo.ensure_demo(config, progress)
    run = load_run(config)
    p1_key, jac_key = part1_key(config, run), jacobian_key(config, run)
    stages = [cache.StageDir(config.cache_dir, stage, key)
              for stage, key in [("part1", p1_key), ("jacobians", jac_key), ("part3", part3_key(config, p1_key, jac_key))]]
    if not all(stage.has_record for stage in stages):
        cache.require_writable(config.cache_dir)
    executor = executor or executors.for_config(config)
    part1 = run_part1(config, run, progress, executor)
    # Shards are hashed only when Part 3 will read them; with Part 3 cached, their sizes and headers suffice.
    shards, jac_key, jacobian_record = run_part2(config, run, part1, progress, executor,
                                                 verify_shards=stages[2].record(quiet=True) is None)
    part3 = run_part3(config, part1, shards, jac_key, jacobian_record)
    return Results(config, part1, part3, provenance(config, run))


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
                                                  libraries, config.prerank_permutations, config.seed)
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


def read_part1(stage: cache.StageDir, record: dict) -> Part1:
    """Part 1 from its stage folder; `record` is the stage's verified completion record."""
    names = cache.read_json(stage / "names.json")
    with np.load(stage / "effects.npz") as arrays:
        a = {k: arrays[k] for k in arrays.files}
    effects = Effects(tuple(names["kd_names"]), tuple(names["gene_names"]), a["delta_y"], a["delta_y_draws"],
                      a["pert_repr"], a["control_repr"], a["draw_cells"])
    return Part1(stage.key, effects, pd.read_parquet(stage / "kds.parquet"), pd.read_parquet(stage / "silhouette.parquet"),
                 a["bootstrap_ari"], a["order"], pd.read_parquet(stage / "ora.parquet"),
                 pd.read_parquet(stage / "gsea.parquet"), record["seconds"])


def worker_state(config: AnalysisConfig, run: LoadedRun) -> executors.WorkerState:
    """The loaded run as executors' worker state: itself here, checkpoint bytes and control cells elsewhere."""
    return executors.WorkerState(run, partial(ShippedRun.of, config, run))


# ---------------------------------------------------------------- Part 2
def jacobian_key(config: AnalysisConfig, run: LoadedRun) -> str:
    return cache.content_key("jacobians", cache.code_version("jacobians", "effects"), run.input_key, run.kd_names,
                             run.set_size, config.n_draws, config.seed, config.shard_kds)


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
                                          config.kds_per_call, config.tangents_per_call)
        bar = tqdm(total=len(run.kd_names), initial=len(run.kd_names) - sum(len(t.kds) for t in todo),
                   desc="Jacobians ∂E[Y]/∂pert_repr", unit="KD", disable=not progress)
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
    code = cache.code_version("routing", "verdict", "enrichment", "clustering", run_part3, routing_statistics,
                              svd_enrichment, _test, _first)
    return cache.content_key("part3", code, part1_key, jac_key, config.n_permutations, config.n_bootstrap, config.alpha,
                             config.seed_r_threshold, config.fdr, config.n_axes, config.prerank_permutations,
                             [cache.file_digest(p) for p in config.gene_sets])


def run_part3(config: AnalysisConfig, part1: Part1, shards: jacobians.JacobianShards, jac_key: str,
              jacobian_record: dict) -> Part3:
    stage = cache.StageDir(config.cache_dir, "part3", part3_key(config, part1.key, jac_key))

    def compute() -> dict:
        started = time.perf_counter()
        effects = part1.effects
        gram = routing.stream_gram(shards)
        c_jac = routing.cosine_from_gram(gram)
        c_out = part1.c_out
        c_rep = clustering.cosine_similarity(effects.pert_repr)
        svd = routing.jacobian_svd(gram, shards, effects.delta_y, config.n_axes)
        linear = routing.linearity(effects.delta_y, shards.linear_prediction())
        stats, svd_tables = routing_statistics(config, part1, c_out, c_jac, c_rep, svd)
        call = verdict.decide(stats, config.alpha, config.seed_r_threshold, config.fdr)
        linearity_frame = pd.DataFrame({"kd": effects.kd_names, "cluster": part1.labels, "explained": linear.to_numpy(),
                                        "jacobian_norm": np.sqrt(np.diag(gram))})
        prior = verdict.prior_work(effects.kd_names, c_out, c_jac, c_rep, part1.labels, stats,
                                   float(np.median(linear)))
        stage.write_npz("matrices.npz", c_out=c_out, c_jac=c_jac, c_rep=c_rep, gram=gram,
                        variance_explained=svd.variance_explained, kd_scores=svd.kd_scores,
                        gene_loadings=svd.gene_loadings)
        stage.write_json("stats.json", stats)
        stage.write_json("verdict.json", call.to_dict())
        stage.write_parquet("svd_enrichment.parquet", svd_tables)
        stage.write_parquet("linearity.parquet", linearity_frame)
        stage.write_parquet("prior_work.parquet", prior)
        return {"seconds": time.perf_counter() - started}

    record = stage.ensure(compute)
    return read_part3(stage, record, jac_key, {"part1": part1.seconds, "jacobians": jacobian_record["seconds"]},
                      jacobian_record["autograd_check"])


def routing_statistics(config: AnalysisConfig, part1: Part1, c_out, c_jac, c_rep, svd) -> tuple[dict, pd.DataFrame]:
    """Every Part 3 number the verdict and the report use, as plain JSON-able values."""
    n_perm, seed = config.n_permutations, config.seed
    mantel_p = routing.mantel(c_out, c_jac, n_perm, seed, "pearson")
    mantel_s = routing.mantel(c_out, c_jac, n_perm, seed, "spearman")
    partial = routing.partial_mantel(c_jac, c_out, c_rep, n_perm, seed)
    rep_out = routing.mantel(c_out, c_rep, n_perm, seed, "pearson")
    contrast = routing.cluster_contrast(c_jac, part1.labels, n_perm, seed)
    ci = routing.kd_bootstrap_ci(c_out, c_jac, config.n_bootstrap, seed)
    svd_tables = svd_enrichment(config, part1, svd)
    axis1 = svd_tables[svd_tables["axis"] == 1]
    best = {kind: axis1[axis1["kind"] == kind].nsmallest(1, "fdr") for kind in ("genes", "KDs")}
    stats = {
        "n_kds": int(len(part1.labels)), "n_pairs": int(len(routing.upper(c_out))),
        "pearson_r": routing.pearson(c_out, c_jac), "spearman_r": routing.spearman(c_out, c_jac),
        "pearson_ci": list(ci),
        "mantel_pearson": _test(mantel_p), "mantel_spearman": _test(mantel_s), "partial_mantel": _test(partial),
        "mantel_out_rep": _test(rep_out),
        "contrast": {"mean_same": contrast.mean_same, "mean_cross": contrast.mean_cross, "difference": contrast.difference,
                     "auc": contrast.auc, "rank_sum_p": contrast.rank_sum_p, "n_same": contrast.n_same,
                     "n_cross": contrast.n_cross, "permutation_p": contrast.permutation.p_value,
                     "n_permutations": contrast.permutation.n_permutations},
        "svd_enrichment": {
            "gene_term": _first(best["genes"], "term"), "gene_fdr": _first(best["genes"], "fdr", 1.0),
            "kd_term": _first(best["KDs"], "term"), "kd_fdr": _first(best["KDs"], "fdr", 1.0)},
        "variance_explained_top": [float(v) for v in svd.variance_explained[: config.n_axes]],
    }
    return stats, svd_tables


def svd_enrichment(config: AnalysisConfig, part1: Part1, svd: routing.JacobianSVD, n_axes: int = 3) -> pd.DataFrame:
    """Prerank GSEA of each leading axis: gene loadings over output genes, KD scores over KDs (KD gene sets)."""
    libraries = enrichment.read_libraries(config.gene_sets)
    effects = part1.effects
    frames = []
    for a in range(min(n_axes, svd.kd_scores.shape[1])):
        genes = enrichment.prerank(f"axis {a + 1} genes", pd.Series(svd.gene_loadings[a], index=list(effects.gene_names)),
                                   libraries, config.prerank_permutations, config.seed)
        kds = enrichment.prerank(f"axis {a + 1} KDs", pd.Series(svd.kd_scores[:, a], index=list(effects.kd_names)),
                                 libraries, config.prerank_permutations, config.seed, min_size=5)
        frames += [genes.assign(axis=a + 1, kind="genes"), kds.assign(axis=a + 1, kind="KDs")]
    return pd.concat(frames, ignore_index=True)


def _test(test: routing.PermutationTest) -> dict:
    return {"statistic": test.statistic, "p_value": test.p_value, "n_permutations": test.n_permutations}


def _first(frame: pd.DataFrame, column: str, default=None):
    return frame[column].iloc[0] if len(frame) else default


def read_part3(stage: cache.StageDir, record: dict, jac_key: str, seconds: dict, autograd_check: dict) -> Part3:
    with np.load(stage / "matrices.npz") as arrays:
        a = {k: arrays[k] for k in arrays.files}
    return Part3(stage.key, jac_key, a["c_out"], a["c_jac"], a["c_rep"], a["variance_explained"], a["kd_scores"],
                 a["gene_loadings"], cache.read_json(stage / "stats.json"), pd.read_parquet(stage / "svd_enrichment.parquet"),
                 pd.read_parquet(stage / "linearity.parquet"), verdict.Verdict.from_dict(cache.read_json(stage / "verdict.json")),
                 pd.read_parquet(stage / "prior_work.parquet"), {**seconds, "part3": record["seconds"]},
                 autograd_check)


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
    ckpt = config.run_dir / "checkpoints" / config.checkpoint
    return {
        "python": platform.python_version(), "platform": platform.platform(), "device": f"{run.device} ({device})",
        "cpu_count": os.cpu_count(), "versions": versions,
        "code_version": cache.code_version(*sorted(p.stem for p in cache.PACKAGE_DIR.glob("*.py"))),
        "checkpoint_sha256": cache.file_digest(ckpt), "data_sha256": cache.file_digest(config.h5ad),
        "input_key": run.input_key, "config": config.describe(), "config_file": str(config.source),
        "n_kds": len(run.kd_names), "n_genes": len(run.gene_names), "hidden_dim": run.hidden_dim,
        "set_size": run.set_size,
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
    lines += ["", f"Verdict: {p3.verdict.call.upper()} — {p3.verdict.meaning}", ""]
    for c in p3.verdict.criteria:
        p = "" if c.p_value is None else f", p = {c.p_value:.3g}" if c.p_value > 0 else ", p < 1e-300"
        lines.append(f"  [{'held' if c.held else 'not held'}] ({c.family}) {c.name}: {c.statistic} = {c.value:.3f}{p}; "
                     f"{c.test}; threshold {c.threshold}")
    return lines


def result_paths(results: Results) -> dict:
    c = results.config.cache_dir
    return {"part1": str(Path(c) / "part1" / results.part1.key), "jacobians": str(Path(c) / "jacobians" / results.part3.jacobian_key),
            "part3": str(Path(c) / "part3" / results.part3.key)}


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
