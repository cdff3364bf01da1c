"""The report's charts, one calling convention: `chart(results, line=0)` draws from `results.lines[line]` (0: the
primary line) and returns an Altair chart; the charts of every line (`verdict_forest`, `cross_line_consistency`)
take the same arguments, `line` naming the line they put first. How each is drawn is `present.drawing`'s; how it
renders, `present.rendering`'s."""

from __future__ import annotations

from dataclasses import replace

import altair as alt

from ..results import Results
from . import drawing
from .sections.verdict import verdict_estimates


def silhouette_curve(results: Results, line: int = 0) -> alt.LayerChart:
    effects = results.lines[line].effects
    return drawing.silhouette_curve(effects.silhouette, int(effects.labels.max()))


def enrichment_heatmap(results: Results, line: int = 0) -> alt.VConcatChart:
    effects = results.lines[line].effects
    return drawing.enrichment_heatmap(effects.ora, effects.gsea, results.config.fdr)


def similarity_heatmaps(results: Results, line: int = 0) -> alt.ConcatChart:
    effects, routing = results.lines[line].effects, results.lines[line].routing
    matrices = {"C_out: output similarity": effects.c_out, "C_jac: routing similarity": routing.c_jac,
                "C_rep: encoder geometry": routing.c_rep}
    return drawing.similarity_heatmaps(matrices, effects.responses.kd_names, effects.labels, effects.order)


def linearity_by_cluster(results: Results, line: int = 0) -> alt.LayerChart:
    return drawing.linearity_by_cluster(results.lines[line].routing.first_order)


def substitution_by_cluster(results: Results, line: int = 0) -> alt.LayerChart:
    return drawing.substitution_by_cluster(results.lines[line].interventions.table)


def steering_dose_response(results: Results, line: int = 0) -> alt.HConcatChart:
    steering = results.lines[line].steering
    return drawing.steering_dose_response(steering.table, steering.tolerance)


def routing_by_depth(results: Results, line: int = 0) -> alt.HConcatChart:
    return drawing.routing_by_depth(results.lines[line].routing)


def routing_scatter(results: Results, line: int = 0) -> alt.Chart:
    effects, routing = results.lines[line].effects, results.lines[line].routing
    return drawing.routing_scatter(effects.c_out, routing.c_jac_specific, effects.responses.kd_names, effects.labels,
                                   routing.evidence)


def cluster_contrast(results: Results, line: int = 0) -> alt.LayerChart:
    effects, routing = results.lines[line].effects, results.lines[line].routing
    return drawing.cluster_contrast(routing.c_jac_specific, effects.labels, routing.evidence.contrast)


def svd_overview(results: Results, line: int = 0) -> alt.HConcatChart:
    effects, routing = results.lines[line].effects, results.lines[line].routing
    return drawing.svd_overview(routing.variance_explained, routing.kd_scores, effects.responses.kd_names)


def gene_loadings(results: Results, line: int = 0) -> alt.HConcatChart:
    effects, routing = results.lines[line].effects, results.lines[line].routing
    return drawing.gene_loadings(routing.gene_loadings, effects.responses.gene_names)


def verdict_forest(results: Results, line: int = 0) -> alt.HConcatChart:
    """Every line's deciding statistics, the `line`-th line's row first."""
    estimates = verdict_estimates(results)
    first = results.lines[line].cell_line
    return drawing.verdict_forest(estimates.sort_values("line", key=lambda names: names != first, kind="stable")
                                  if line else estimates)


def cross_line_consistency(results: Results, line: int = 0) -> alt.Chart:
    """The primary line against each other line (one row per pair); `line` > 0: that line's pair only."""
    across = results.across
    if across is not None and line:
        other = results.lines[line].cell_line
        across = replace(across, table=across.table[across.table["line_b"] == other],
                         tests=tuple(t for t in across.tests if t.line_b == other))
    return drawing.cross_line_consistency(across)
