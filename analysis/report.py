"""Text and tables for the Quarto report, generated from `analysis.pipeline.Results`.

The article (`report/index.qmd`) types no result by hand: every number in its prose comes
from `numbers(results)` through inline expressions, every table from a `*_table` function
here, and the abstract's verdict sentence from `abstract(results)`. Nothing here computes a
statistic; it formats what the pipeline stored.

`setup()` registers the Altair renderer the report needs: a MIME bundle with `image/png`
first (what the typst PDF takes) and self-contained `text/html` second (what the HTML page
shows, interactive, with Vega's JavaScript inlined rather than fetched from a CDN).
"""

from __future__ import annotations

import base64
import math
import platform
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from . import cache, enrichment
from .config import load_config
from .pipeline import Results, result_paths, run_analysis

RENDERER = "report_png_html"


class Md(str):
    """A string shown as itself: Markdown for Quarto, and no quotes in its plain-text repr (inline expressions)."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        return str(self)


# ---------------------------------------------------------------- setup
def _vl_version() -> str:
    import altair as alt

    return "_".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def mimebundle(spec: dict) -> dict:
    """{image/png (base64), text/html} for a Vega-Lite spec, PNG first: the order decides what the typst PDF shows."""
    import vl_convert as vlc

    version = _vl_version()
    png = vlc.vegalite_to_png(spec, vl_version=version, scale=2)
    html = vlc.vegalite_to_html(spec, vl_version=version, bundle=True)
    return {"image/png": base64.b64encode(png).decode("ascii"), "text/html": html}


def setup() -> None:
    """Register and enable the report's Altair renderer; allow the large inline tables the heatmaps need."""
    import altair as alt

    if RENDERER not in alt.renderers.names():
        alt.renderers.register(RENDERER, lambda spec, **_: mimebundle(spec))
    alt.renderers.enable(RENDERER)
    # Heatmaps are already reduced to at most plots.MAX_HEATMAP_SIDE² cells; Altair's 5,000-row guard would refuse them.
    alt.data_transformers.disable_max_rows()


def load(config_path: str | Path) -> Results:
    """Set up rendering and return the results for `config_path`, computing what the cache lacks."""
    setup()
    return run_analysis(load_config(config_path), progress=False)


# ---------------------------------------------------------------- formatting
def fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}".replace("-", "−")


def fmt_p(p: float | None, n_permutations: int | None = None) -> str:
    """A p-value as printed; a permutation p at its floor 1/(n+1) is shown as that bound ('≤ 0.0001')."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    if n_permutations and p <= 1.0 / (n_permutations + 1) + 1e-15:
        return f"≤ {1.0 / (n_permutations + 1):.2g}"
    if p == 0:
        return "< 1e-300"
    return f"{p:.2g}"


def p_phrase(p: float | None, n_permutations: int | None = None) -> str:
    """'p = 0.03' or 'p ≤ 0.0001' (for prose)."""
    text = fmt_p(p, n_permutations)
    return f"p {text}" if text[0] in "≤<" else f"p = {text}"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, widths: list[int] | None = None) -> Md:
    """A pipe table. `widths` (relative) sets the dash counts, which Pandoc uses as column widths when cells wrap."""
    widths = widths or [max(3, len(str(c))) for c in frame.columns]
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |",
             "|" + "|".join("-" * max(3, w) for w in widths) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return Md("\n".join(lines))


def _criterion(results: Results, name_start: str, family: str):
    return next(c for c in results.part3.verdict.criteria if c.name.startswith(name_start) and c.family == family)


# ---------------------------------------------------------------- numbers for the prose
def numbers(results: Results) -> SimpleNamespace:
    """Every number the article's prose quotes, formatted (inline `{python} N.name`)."""
    cfg, p1, p3, prov = results.config, results.part1, results.part3, results.provenance
    stats, contrast = p3.stats, p3.stats["contrast"]
    labels = p1.labels
    n_kds, n_genes, hidden = prov["n_kds"], prov["n_genes"], prov["hidden_dim"]
    lo, hi = stats["pearson_ci"]
    ari = p1.bootstrap_ari
    reproducibility = p1.kd_table["draw_cosine"]
    chosen = p1.silhouette.loc[p1.silhouette["silhouette"].idxmax()]
    values = dict(
        n_kds=f"{n_kds:,}", n_genes=f"{n_genes:,}", hidden=f"{hidden:,}", set_size=f"{prov['set_size']:,}",
        n_draws=f"{cfg.n_draws}", seed=f"{cfg.seed}", cell_line=cfg.cell_line or "the single cell type of the data",
        jacobian_size=f"{n_genes * hidden:,}", jacobian_total=f"{n_kds * n_genes * hidden:,}",
        jacobian_gb=f"{n_kds * n_genes * hidden * 4 / 1e9:.2g}",
        n_clusters=f"{int(labels.max())}", n_weak=f"{int((labels == 0).sum())}",
        n_clustered=f"{int((labels > 0).sum())}", max_clusters=f"{cfg.max_clusters}",
        silhouette=fmt(float(chosen["silhouette"])), n_cluster_bootstrap=f"{len(ari)}",
        ari_median=fmt(float(np.median(ari))) if len(ari) else "—",
        ari_min=fmt(float(np.min(ari))) if len(ari) else "—",
        draw_cosine_median=fmt(float(reproducibility.median()), 3),
        draw_cosine_min=fmt(float(reproducibility.min()), 3),
        n_permutations=f"{cfg.n_permutations:,}", n_bootstrap=f"{cfg.n_bootstrap:,}", alpha=f"{cfg.alpha:g}",
        fdr=f"{cfg.fdr:g}", r_threshold=f"{cfg.seed_r_threshold:g}", prerank_permutations=f"{cfg.prerank_permutations:,}",
        n_axes=f"{cfg.n_axes}", libraries=", ".join(Path(p).stem for p in cfg.gene_sets) or "none",
        n_pairs=f"{stats['n_pairs']:,}", pearson_r=fmt(stats["pearson_r"]), spearman_r=fmt(stats["spearman_r"]),
        ci_low=fmt(lo), ci_high=fmt(hi),
        mantel_p=p_phrase(stats["mantel_pearson"]["p_value"], stats["mantel_pearson"]["n_permutations"]),
        mantel_spearman_p=p_phrase(stats["mantel_spearman"]["p_value"], stats["mantel_spearman"]["n_permutations"]),
        partial_r=fmt(stats["partial_mantel"]["statistic"]),
        partial_p=p_phrase(stats["partial_mantel"]["p_value"], stats["partial_mantel"]["n_permutations"]),
        rep_out_r=fmt(stats["mantel_out_rep"]["statistic"]),
        rep_out_p=p_phrase(stats["mantel_out_rep"]["p_value"], stats["mantel_out_rep"]["n_permutations"]),
        mean_same=fmt(contrast["mean_same"]), mean_cross=fmt(contrast["mean_cross"]),
        difference=fmt(contrast["difference"], 3), auc=fmt(contrast["auc"]),
        n_same=f"{contrast['n_same']:,}", n_cross=f"{contrast['n_cross']:,}",
        contrast_p=p_phrase(contrast["permutation_p"], contrast["n_permutations"]),
        rank_sum_p=p_phrase(contrast["rank_sum_p"]),
        var_axis1=f"{100 * p3.variance_explained[0]:.0f}%",
        var_top=f"{100 * float(np.sum(p3.variance_explained[: cfg.n_axes])):.0f}%",
        svd_gene_term=str(stats["svd_enrichment"]["gene_term"]), svd_gene_fdr=fmt_p(stats["svd_enrichment"]["gene_fdr"]),
        svd_kd_term=str(stats["svd_enrichment"]["kd_term"]), svd_kd_fdr=fmt_p(stats["svd_enrichment"]["kd_fdr"]),
        linearity_median=fmt(float(p3.linearity["explained"].median())),
        linearity_q1=fmt(float(p3.linearity["explained"].quantile(0.25))),
        linearity_q3=fmt(float(p3.linearity["explained"].quantile(0.75))),
        call=p3.verdict.call, meaning=p3.verdict.meaning,
        checkpoint=str(Path(cfg.run_dir) / "checkpoints" / cfg.checkpoint),
        checkpoint_sha=prov["checkpoint_sha256"], data=str(cfg.h5ad), data_sha=prov["data_sha256"],
        input_key=prov["input_key"], code_version=prov["code_version"], config_file=prov["config_file"],
        device=prov["device"], jacobian_seconds=f"{p3.seconds.get('jacobians', float('nan')):.0f}",
        jvp_ratio=f"{n_genes / hidden:.1f}", weak_fraction=f"{_weak_fraction():g}",
        autograd_kd=p3.autograd_check["kd"], autograd_error=f"{p3.autograd_check['relative_error']:.1e}",
    )
    return SimpleNamespace(**{k: Md(v) for k, v in values.items()})


def _weak_fraction() -> float:
    """The clustering's weak-effect cut, read from its signature so the text cannot drift from the code."""
    import inspect

    from .clustering import cluster_kds

    return inspect.signature(cluster_kds).parameters["weak_fraction"].default


def is_demo(results: Results) -> bool:
    return bool(results.config.demo)


# ---------------------------------------------------------------- abstract
def abstract(results: Results) -> Md:
    """The abstract's result sentences, worded from which dependence-aware criteria held."""
    n = numbers(results)
    mantel = _criterion(results, "Output similarity", "dependence-aware")
    contrast = _criterion(results, "Same-cluster", "dependence-aware")
    partial = _criterion(results, "Routing adds", "dependence-aware")
    r_part = (f"Pearson r = {n.pearson_r}, 95% KD-bootstrap CI {n.ci_low} to {n.ci_high}, Mantel {n.mantel_p}")
    if mantel.held:
        first = f"Across {n.n_kds} knock-downs, routing similarity tracked output similarity ({r_part})"
    else:
        first = (f"Across {n.n_kds} knock-downs, routing similarity did not track output similarity at the "
                 f"pre-set bar of r > {n.r_threshold} with Mantel p < {n.alpha} ({r_part})")
    c_part = f"difference in mean C_jac {n.difference}, AUC {n.auc}, cluster-label permutation {n.contrast_p}"
    joint = "and" if mantel.held == contrast.held else "but"
    second = (f"same-output-cluster KDs routed more similarly than KDs of different clusters ({c_part})" if contrast.held
              else f"same-output-cluster KDs did not route detectably more similarly than KDs of different clusters ({c_part})")
    third = (f"Routing similarity {'added' if partial.held else 'did not add'} to what the encoder geometry C_rep "
             f"already predicts (partial Mantel r = {n.partial_r}, {n.partial_p}).")
    call = {"positive": "positive", "negative": "negative", "mixed": "mixed"}[results.part3.verdict.call]
    verdict = f"The verdict is **{call}**: {results.part3.verdict.meaning}."
    return Md(f"{first}, {joint} {second}. {third} {verdict}")


def demo_note(results: Results) -> Md:
    if not is_demo(results):
        return Md("")
    return Md("*Demo run.* This rendering reports on the embedded demo: a small arc-state State-Transition model trained on a "
              "synthetic Perturb-seq world with planted pathway modules, standing in for the seed's HepG2 checkpoint. "
              "Its numbers illustrate the method, not the biology of the seed's model; render with `-P config:…` "
              "to report on a real run.")


def discussion(results: Results) -> Md:
    """The opening paragraph of the discussion, worded for the call this run reached."""
    n = numbers(results)
    call = results.part3.verdict.call
    if call == "positive":
        text = (f"Both dependence-aware core criteria held: KDs with similar predicted responses also have similar "
                f"Jacobians with respect to the perturbation representation (r = {n.pearson_r}), and KDs of one output "
                f"cluster share routing more than KDs of different clusters ({n.contrast_p} under cluster-label "
                f"permutation). In this model the transformer reads the perturbation representation through shared "
                f"directions, as Model B (internalized circuits) predicts, rather than treating each KD as a separate "
                f"lookup.")
    elif call == "negative":
        text = (f"Neither dependence-aware core criterion held: routing similarity does not track output similarity "
                f"(r = {n.pearson_r}, Mantel {n.mantel_p}) and same-cluster KDs do not share routing ({n.contrast_p}). "
                f"KDs reach similar outputs through unrelated directions of the perturbation representation, as Model A "
                f"(statistical compression) predicts: whatever geometry the encoder has is not what the transformer uses.")
    else:
        text = (f"The dependence-aware core criteria disagree (output–routing r = {n.pearson_r}, Mantel {n.mantel_p}; "
                f"same- vs cross-cluster routing {n.contrast_p}), so neither Model A nor Model B describes the model as a "
                f"whole. @tbl-verdict shows which criterion failed; the prior-work rows in @tbl-prior show where the "
                f"routing structure is and is not shared.")
    return Md(text)


# ---------------------------------------------------------------- tables
def tests_table(results: Results) -> Md:
    """Every statistical test of the report: what it tests, how, and why that inference."""
    cfg = results.config
    perm, boot = f"{cfg.n_permutations:,}", f"{cfg.n_bootstrap:,}"
    pair_note = "pairs share KDs, so pairs are not independent units"
    rows = [
        ("Output vs routing similarity", "Pearson r of the upper triangles of C_out and C_jac",
         f"Mantel test: KD labels of one matrix permuted ({perm} permutations), one-sided", pair_note),
        ("", "Spearman r (same pairs)", f"Mantel test on ranks ({perm})", pair_note),
        ("", "95% CI of the Pearson r", f"KD-level bootstrap: KDs resampled with replacement ({boot}), percentile CI",
         "resampling KDs, not pairs, keeps each KD's pairs together"),
        ("Same- vs cross-cluster routing", "mean C_jac(same) − mean C_jac(cross), clusters ≥ 1; AUC as effect size",
         f"cluster labels permuted over KDs ({perm}), one-sided", pair_note + "; labels are a KD-level property"),
        ("", "the same contrast, as the seed wrote it",
         "Wilcoxon rank-sum on pairs", "reported for comparison; anti-conservative because " + pair_note),
        ("Routing beyond encoder geometry", "partial Mantel r(C_jac, C_out | C_rep)",
         f"KD labels of C_jac permuted ({perm}), one-sided (Smouse et al. 1986)", pair_note),
        ("Encoder geometry vs output", "Mantel r(C_out, C_rep)", f"KD labels permuted ({perm})", pair_note),
        ("KD-target enrichment per cluster", "over-representation of a cluster's KD targets",
         "hypergeometric test, background = all KDs of the screen, BH-FDR per cluster",
         "the screen is biased toward essential genes, so the genome is the wrong background"),
        ("Response enrichment per cluster", "the cluster's mean ΔY ranked over output genes",
         f"prerank GSEA ({cfg.prerank_permutations:,} gene-set permutations), BH-FDR per cluster",
         "a ranked response has no natural cut-off for a gene list"),
        ("SVD axes", "gene loadings over output genes; KD scores over KDs",
         f"prerank GSEA ({cfg.prerank_permutations:,}), BH-FDR per axis and ranking", "same as above"),
        ("Number and stability of clusters", "mean silhouette on 1 − cos for 2 … max clusters; ARI",
         f"maximum silhouette; bootstrap of output genes ({cfg.cluster_bootstrap}) re-clustered at that number",
         "a stated, data-driven criterion; stability against the choice of genes"),
    ]
    frame = pd.DataFrame(rows, columns=["Question", "Statistic", "Inference", "Why this inference"])
    return markdown_table(frame, [12, 20, 24, 22])


def verdict_frame(results: Results) -> pd.DataFrame:
    """The verdict criteria, formatted: seed criteria beside their dependence-aware versions."""
    rows = []
    for c in results.part3.verdict.criteria:
        rows.append({"Criterion": c.name, "Version": c.family, "Statistic": c.statistic, "Value": f"{c.value:.3f}",
                     "Test": c.test, "Threshold": c.threshold, "p": fmt_p(c.p_value),
                     "Held": "held" if c.held else "not held", "Note": c.note})
    return pd.DataFrame(rows)


def verdict_table(results: Results) -> Md:
    return markdown_table(verdict_frame(results), [14, 9, 14, 6, 18, 10, 7, 6, 16])


def prior_work_table(results: Results) -> Md:
    frame = results.part3.prior_work.rename(columns={"prior": "Prior analysis", "finding": "Finding",
                                                     "question": "What this tests", "this_run": "This run"})
    return markdown_table(frame, [6, 22, 20, 40])


def cluster_table(results: Results) -> Md:
    """Per output cluster: size, members, best KD-target ORA term and best response GSEA term (with FDR)."""
    p1 = results.part1
    top_ora = enrichment.top_terms(p1.ora).set_index("query")
    top_gsea = enrichment.top_terms(p1.gsea).set_index("query")
    rows = []
    for cluster, members in p1.kd_table.groupby("cluster"):
        q = f"cluster {cluster}"
        names = list(members["kd"])
        shown = ", ".join(names[:6]) + (f", … (+{len(names) - 6})" if len(names) > 6 else "")
        ora = f"{top_ora.loc[q, 'term']} (FDR {fmt_p(top_ora.loc[q, 'fdr'])})" if q in top_ora.index else "—"
        gsea = (f"{top_gsea.loc[q, 'term']} (NES {fmt(top_gsea.loc[q, 'nes'])}, FDR {fmt_p(top_gsea.loc[q, 'fdr'])})"
                if q in top_gsea.index else "—")
        rows.append({"Cluster": "0 (weak effect)" if cluster == 0 else str(cluster), "KDs": len(names),
                     "Members": shown, "Top KD-target term (ORA)": ora, "Top response term (GSEA)": gsea})
    return markdown_table(pd.DataFrame(rows), [8, 4, 26, 24, 26])


def svd_table(results: Results) -> Md:
    """The best prerank term of each leading axis, for gene loadings and for KD scores."""
    table = results.part3.svd_enrichment
    if table.empty:
        return Md("No SVD enrichment was computed.")
    best = table.sort_values(["fdr", "p_value"]).groupby(["axis", "kind"], sort=True).head(1).sort_values(["axis", "kind"])
    variance = results.part3.variance_explained
    frame = pd.DataFrame({
        "Axis": best["axis"].astype(int), "Share of Σ‖J‖²": [f"{100 * variance[a - 1]:.1f}%" for a in best["axis"]],
        "Ranked": best["kind"].map({"genes": "output-gene loadings", "KDs": "KD scores"}),
        "Top term": best["term"], "Library": best["library"], "NES": best["nes"].map(fmt),
        "FDR": best["fdr"].map(fmt_p)})
    return markdown_table(frame, [4, 7, 12, 30, 14, 5, 6])


def config_table(results: Results) -> Md:
    described = results.config.describe()
    frame = pd.DataFrame({"Field": list(described), "Value": [f"`{v}`" for v in described.values()]})
    return markdown_table(frame, [12, 40])


def environment_table(results: Results) -> Md:
    prov = results.provenance
    rows = [("Python", prov["python"]), ("Platform", prov["platform"]), ("Device", prov["device"]),
            ("CPU cores", prov["cpu_count"])]
    rows += [(name, version) for name, version in prov["versions"].items()]
    return markdown_table(pd.DataFrame(rows, columns=["Component", "Version / value"]), [12, 30])


def provenance_table(results: Results) -> Md:
    """Hashes, cache folders and stage timings."""
    prov, paths = results.provenance, result_paths(results)
    jacobian_meta = _stage_meta(results, "jacobians", results.part3.jacobian_key)
    rows = [("Config file", f"`{prov['config_file']}`"),
            ("Checkpoint sha256", f"`{prov['checkpoint_sha256']}`"), ("Control data sha256", f"`{prov['data_sha256']}`"),
            ("Input key (model + data + code)", f"`{prov['input_key']}`"), ("Code version", f"`{prov['code_version']}`")]
    rows += [(f"Cache: {stage}", f"`{path}`") for stage, path in paths.items()]
    seconds = results.part3.seconds
    labels = {"part1": "Part 1 (ΔY, clusters, enrichment)", "jacobians": "Part 2 (Jacobians)",
              "part3": "Part 3 (Gram, SVD, statistics)"}
    for stage, value in seconds.items():
        where = f" on {jacobian_meta['device']}" if stage == "jacobians" and jacobian_meta.get("device") else ""
        rows.append((f"Time: {labels.get(stage, stage)}", f"{value:,.1f} s{where}"))
    return markdown_table(pd.DataFrame(rows, columns=["Item", "Value"]), [14, 40])


def _stage_meta(results: Results, stage: str, key: str) -> dict:
    """The `_done.json` of a cached stage (e.g. the device the Jacobians were computed on), or {}."""
    try:
        return cache.StageDir(results.config.cache_dir, stage, key).meta()
    except (FileNotFoundError, OSError, ValueError):
        return {}


def rendered_on() -> Md:
    return Md(f"{platform.node() or 'unknown host'} ({platform.platform()})")
