"""The Jacobians, routing and SVD sections: their numbers (`RoutingNumbers`, `SvdNumbers`), the routing-by-depth
paragraph, the routing-by-cluster and SVD tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...results import Results
from .. import prose
from ..formatting import (
    Md,
    breakable,
    fmt,
    fmt_p,
    library_short,
    markdown_table,
    p_phrase,
    studentized_p,
    typeset,
    typeset_record,
)
from ..wording import axes_note, criterion
from .effects import _listed_clusters, _rest_row


@dataclass(frozen=True)
class RoutingNumbers:
    """The Jacobians (time, the first-order term's share of ΔY, the autograd check) and every routing statistic the
    Results quote: the common share, the studentized Mantel r with its SE, bound, CI and p (Spearman, raw, within
    clusters, partial, encoder geometry), the same-cluster contrast in C_jac^spec units, SD and r, the cluster-level
    r and the noise floor."""

    jacobian_seconds: Md
    autograd_kd: Md
    autograd_error: Md
    linearity_median: Md
    linearity_q1: Md
    linearity_q3: Md
    linearity_negative: Md
    common_share: Md
    jac_mean: Md
    out_mean: Md
    n_pairs: Md
    pearson_r: Md
    r_se: Md
    r_bound: Md
    ci_low: Md
    ci_high: Md
    mantel_p: Md
    spearman_r: Md
    mantel_spearman_p: Md
    raw_r: Md
    raw_mantel_p: Md
    mean_same: Md
    mean_cross: Md
    difference: Md
    jac_sd: Md
    auc: Md
    contrast_sd: Md
    contrast_bound: Md
    contrast_p: Md
    rank_sum_p: Md
    contrast_r: Md
    contrast_r_bound: Md
    within_r: Md
    within_bound: Md
    within_p: Md
    cluster_level: Md
    noise_floor: Md
    rep_out_r: Md
    rep_out_p: Md
    partial_r: Md
    partial_p: Md
    keyed_r: Md


def routing_numbers(results: Results) -> RoutingNumbers:
    p3 = results.routing
    ev = p3.evidence
    mantel, contrast = ev.mantel_pearson, ev.contrast
    lo, hi = ev.pearson_ci
    return typeset_record(
        RoutingNumbers,
        jacobian_seconds=f"{p3.seconds.get('jacobians', float('nan')):.0f}",
        autograd_kd=p3.autograd_check["kd"], autograd_error=f"{p3.autograd_check['relative_error']:.1e}",
        linearity_median=fmt(float(p3.first_order["explained"].median())),
        linearity_q1=fmt(float(p3.first_order["explained"].quantile(0.25))),
        linearity_q3=fmt(float(p3.first_order["explained"].quantile(0.75))),
        linearity_negative=negative_linearity(p3.first_order),
        common_share=f"{100 * ev.decomposition.common_share:.2f}%",
        jac_mean=fmt(ev.spread.jac_mean, 3), out_mean=fmt(ev.spread.out_mean, 3),
        n_pairs=f"{ev.n_pairs:,}", pearson_r=fmt(mantel.statistic), r_se=fmt(mantel.standard_error, 3),
        r_bound=fmt(mantel.upper_bound, 3), ci_low=fmt(lo), ci_high=fmt(hi), mantel_p=studentized_p(mantel),
        spearman_r=fmt(ev.mantel_spearman.statistic), mantel_spearman_p=studentized_p(ev.mantel_spearman),
        raw_r=fmt(ev.raw_mantel.statistic), raw_mantel_p=studentized_p(ev.raw_mantel),
        mean_same=fmt(contrast.mean_same), mean_cross=fmt(contrast.mean_cross),
        difference=fmt(contrast.difference, 3), jac_sd=fmt(contrast.spread, 3), auc=fmt(contrast.auc),
        contrast_sd=fmt(contrast.test.statistic), contrast_bound=fmt(contrast.test.upper_bound),
        contrast_p=studentized_p(contrast.test), rank_sum_p=p_phrase(contrast.rank_sum_p),
        contrast_r=fmt(contrast.r, 3), contrast_r_bound=fmt(contrast.r_bound, 3),
        within_r=fmt(ev.within_mantel.statistic), within_bound=fmt(ev.within_mantel.upper_bound, 3),
        within_p=studentized_p(ev.within_mantel), cluster_level=cluster_level_phrase(ev),
        noise_floor=prose.noise_floor(p3).strip(),
        rep_out_r=fmt(ev.mantel_out_rep.statistic), rep_out_p=studentized_p(ev.mantel_out_rep),
        partial_r=fmt(ev.partial_mantel.statistic), partial_p=studentized_p(ev.partial_mantel),
        keyed_r=fmt(ev.keyed_lookup_r))


COMMON_GENES_SHOWN = 5  # genes named for the common component (largest positive loadings)


@dataclass(frozen=True)
class SvdNumbers:
    """The routing axes (SVD of the KD-specific part of the unit-norm Jacobians): the common component they leave out
    (its share of the energy and its top genes), the KD-specific variance on axis 1 and on the first n_axes, the
    interpretable axes (read, shown on both sides, described, beyond ΔY's axes; ΔY's own), the principal cosine, the
    seed's axis-1 terms."""

    common_share: Md
    common_genes: Md
    var_axis1: Md
    var_top: Md
    n_axes: Md
    axes_read: Md
    interpretable: Md
    axes_described: Md
    output_interpretable: Md
    beyond: Md
    principal_cosine: Md
    gene_term: Md
    gene_fdr: Md
    kd_term: Md
    kd_fdr: Md


def svd_numbers(results: Results) -> SvdNumbers:
    p3 = results.routing
    svd, n_axes = p3.svd, results.config.n_axes
    genes = results.effects.responses.gene_names
    top = np.argsort(-p3.common_gene_loading)[:COMMON_GENES_SHOWN]
    return typeset_record(
        SvdNumbers,
        common_share=f"{100 * p3.evidence.decomposition.common_share:.1f}%",
        common_genes=", ".join(str(genes[g]) for g in top),
        var_axis1=f"{100 * p3.variance_explained[0]:.0f}%",
        var_top=f"{100 * float(np.sum(p3.variance_explained[: n_axes])):.0f}%", n_axes=f"{n_axes}",
        axes_read=f"{svd.n_axes}", interpretable=f"{svd.n_interpretable}",
        axes_described=axes_note(criterion(p3.verdict, "svd_both_sides").params["axes"]),
        output_interpretable=f"{svd.n_output_interpretable}", beyond=f"{svd.n_beyond_output}",
        principal_cosine=fmt(svd.min_principal_cosine), gene_term=str(svd.seed_gene_term),
        gene_fdr=fmt_p(svd.seed_gene_fdr), kd_term=str(svd.seed_kd_term), kd_fdr=fmt_p(svd.seed_kd_fdr))


def depth_paragraph(results: Results) -> Md:
    """Routing block by block: where in depth the cluster structure of routing appears (`prose.depth_text`)."""
    text = prose.depth_text(results.routing)
    return Md(typeset(text[0].upper() + text[1:] + ".") if text else "")


def cluster_level_phrase(evidence) -> str:
    """The between-cluster r in a clause: 'r = 0.41 over the 10 pairs of 5 clusters (p = 0.04)'."""
    cl = evidence.cluster_level
    if cl is None or cl.r != cl.r:
        return "undefined (fewer than 3 clusters)"
    return f"r = {fmt(cl.r)} over the {cl.n_pairs} pairs of {cl.n_clusters} clusters ({p_phrase(cl.p_value, cl.n_permutations)})"


def negative_linearity(linearity: pd.DataFrame) -> str:
    """The KDs whose first-order term points away from their effect (a negative explained share), by cluster."""
    negative = linearity[linearity["explained"] < 0]
    if negative.empty:
        return "No KD has a negative share."
    clusters = sorted(int(c) for c in negative["cluster"].unique())
    where = (f"cluster {clusters[0]}" if len(clusters) == 1
             else "clusters " + ", ".join(map(str, clusters[:-1])) + f" and {clusters[-1]}")
    return (f"{len(negative)} KD{'s' if len(negative) > 1 else ''} ({where}; lowest share "
            f"{fmt(float(negative['explained'].min()))}) {'have' if len(negative) > 1 else 'has'} a negative share: "
            f"the first-order term points away from the KD's effect, so the Jacobian at the KD does not describe "
            f"that effect, and the routing comparisons below read these KDs' local routing only.")


def routing_by_cluster_table(results: Results) -> Md:
    """Per output cluster: its KDs, mean C_jac between its KDs and between them and the other clustered KDs, and the
    median share of ΔY the first-order term explains (how far the local Jacobian describes the cluster's effects);
    the clusters past MAX_TABLE_CLUSTERS in one row."""
    labels, c_jac = results.effects.labels, results.routing.c_jac
    linearity = results.routing.first_order.groupby("cluster")["explained"].median()
    listed, rest = _listed_clusters(labels)
    rows = []
    for cluster in listed:
        inside = np.flatnonzero(labels == cluster)
        others = np.flatnonzero((labels != cluster) & (labels > 0))
        within = c_jac[np.ix_(inside, inside)][np.triu_indices(len(inside), k=1)]
        rows.append({"Cluster": "0 (weak)" if cluster == 0 else str(cluster), "KDs": f"{len(inside)}",
                     "Mean C_jac within": fmt(float(within.mean()), 3) if len(within) else "—",
                     "Mean C_jac to other clusters": fmt(float(c_jac[np.ix_(inside, others)].mean()), 3)
                     if len(others) else "—",
                     "Median linear share": fmt(float(linearity.get(cluster, np.nan)))})
    if rest:
        rows.append(_rest_row(results, rest, labels, 0, ["Cluster", "KDs", "Mean C_jac to other clusters"])
                    | {"Mean C_jac within": "", "Median linear share": ""})
    return markdown_table(pd.DataFrame(rows), [10, 6, 16, 20, 16], "lrrrr")


def svd_table(results: Results) -> Md:
    """The best prerank term of each leading axis, for gene loadings and for KD scores."""
    table = results.routing.svd_enrichment
    table = table[table["source"] == "routing"] if "source" in table else table
    if table.empty:
        return Md("No SVD enrichment was computed.")
    best = table.sort_values(["fdr", "p_value"]).groupby(["axis", "kind"], sort=True).head(1).sort_values(["axis", "kind"])
    variance = results.routing.variance_explained
    frame = pd.DataFrame({
        "Axis": best["axis"].astype(int), "Share": [f"{100 * variance[a - 1]:.1f}%" for a in best["axis"]],
        "Ranking": best["kind"],
        "Top term [library]": [f"{breakable(t)} [{library_short(lib)}]" for t, lib in zip(best["term"], best["library"])],
        "NES": best["nes"].map(fmt), "FDR": best["fdr"].map(fmt_p)})
    return markdown_table(frame, [5, 7, 9, 55, 7, 8], "rrllrr")
