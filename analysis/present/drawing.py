"""How each chart is drawn from the arrays and tables it shows (`present.charts` picks them from the results).

Nothing here computes a statistic: every number a chart states comes from the results
(`RoutingResult.evidence`, enrichment tables, SVD arrays). Charts only reshape into long tables and,
for large K, reduce what is drawn (block means of a heatmap, a random sample of pairs),
saying so in the chart's subtitle so the caption can point there. Charts are designed at most
`rendering.TEXT_WIDTH_PX` wide with no font below `rendering.MIN_FONT_PX`.
"""

from __future__ import annotations

import re

import altair as alt
import numpy as np
import pandas as pd

from ..config import KD_FAMILIES
from .formatting import library_short, p_phrase
from .prose import MEASURES, paired_p
from .rendering import MIN_FONT_PX

# Heatmaps above this many KDs a side are drawn as block means: K = 1,035 would otherwise be
# ~1.07 M cells, too heavy for an HTML page and unreadable at print size anyway.
MAX_HEATMAP_SIDE = 200
# Scatter plots above this many pairs draw a seeded random sample; the statistics use all pairs.
MAX_SCATTER_POINTS = 5000

SIMILARITY_SCALE = alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)
GROUP_COLOURS = {
    "ribosomal (RPL/RPS)": "#d62728", "mitoribosomal (MRPL/MRPS)": "#ff7f0e", "TRAPP": "#2ca02c",
    "MYC": "#9467bd", "other": "#c7c7c7",
}
ANNOTATED_KDS = ("TRAPPC3", "TRAPPC5", "MYC")
# Output clusters: the same colour for a cluster number in every figure (0, the weak-effect group, grey).
CLUSTER_PALETTE = ["#bdbdbd", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                   "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d"]
# Pairs of KDs: same cluster / different clusters / a weak-effect KD (not red, which marks ribosomal KDs and genes).
PAIR_COLOURS = {"same cluster": "#6a3d9a", "different clusters": "#66c2a5", "involves a weak-effect KD": "#bbbbbb"}


def cluster_scale(clusters) -> alt.Scale:
    """Colour scale for the cluster numbers present (ints, or strings as a chart's data holds them), the colour fixed
    by the number."""
    values = sorted({c if isinstance(c, str) else int(c) for c in clusters}, key=int)
    return alt.Scale(domain=values, range=[CLUSTER_PALETTE[int(c) % len(CLUSTER_PALETTE)] for c in values])


def kd_groups(kd_names) -> np.ndarray:
    """Display group of each KD, for colouring: the seed's named families, MYC, other."""
    patterns = [("ribosomal (RPL/RPS)", KD_FAMILIES["ribosomal"]), ("mitoribosomal (MRPL/MRPS)", KD_FAMILIES["mitoribosomal"]),
                ("TRAPP", KD_FAMILIES["TRAPP"]), ("MYC", r"^MYC$")]
    out = []
    for kd in kd_names:
        out.append(next((name for name, pattern in patterns if re.match(pattern, kd)), "other"))
    return np.array(out)


def _group_colour():
    return alt.Color("group:N", scale=alt.Scale(domain=list(GROUP_COLOURS), range=list(GROUP_COLOURS.values())),
                     title="KD group", legend=alt.Legend(orient="bottom", columns=2))


# ---------------------------------------------------------------- heatmaps
def heatmap_blocks(n: int, max_side: int = MAX_HEATMAP_SIDE) -> list[np.ndarray]:
    """Positions 0..n-1 in at most `max_side` consecutive blocks (one position per block when n ≤ max_side)."""
    return np.array_split(np.arange(n), min(n, max_side))


def _block_means(matrix: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Mean over the KD pairs of each block pair; a KD's similarity to itself is left out of diagonal blocks."""
    starts = np.array([b[0] for b in blocks])
    sizes = np.array([len(b) for b in blocks], dtype=float)
    off = matrix - np.diag(np.diag(matrix))
    sums = np.add.reduceat(np.add.reduceat(off, starts, axis=0), starts, axis=1)
    counts = np.outer(sizes, sizes) - np.diag(sizes)
    means = np.divide(sums, counts, out=np.ones_like(sums), where=counts > 0)
    return means


def similarity_heatmaps(matrices: dict, kd_names, labels: np.ndarray, order: np.ndarray,
                        max_side: int = MAX_HEATMAP_SIDE, size: int = 270) -> alt.ConcatChart:
    """K × K similarity matrices, two a row, rows and columns in `order` (clusters contiguous), cluster strip on top.

    size: side of one heatmap in pixels (two a row fit the report's text column).

    matrices: {panel title: [K, K] array}. Above `max_side` KDs each cell is the mean over a block of consecutive
    KDs in that order (the subtitle says so).
    """
    kd_names = np.asarray(kd_names)[order]
    labels = np.asarray(labels)[order]
    blocks = heatmap_blocks(len(order), max_side)
    aggregated = len(blocks) < len(order)

    def block_label(b):
        return kd_names[b[0]] if len(b) == 1 else f"{kd_names[b[0]]} … {kd_names[b[-1]]} ({len(b)} KDs)"

    def block_cluster(b):
        return int(np.bincount(labels[b]).argmax())

    names = {f"m{i}": title for i, title in enumerate(matrices)}
    n = len(blocks)
    rows, cols = np.divmod(np.arange(n * n), n)
    # One shared table for every panel, so the data is stored once in the HTML.
    cells = pd.DataFrame({"r": rows, "c": cols})
    for key, title in names.items():
        m = np.asarray(matrices[title], dtype=float)[np.ix_(order, order)]
        cells[key] = np.round((_block_means(m, blocks) if aggregated else m).ravel(), 3)
    axis = pd.DataFrame({"pos": np.arange(n), "kd": [block_label(b) for b in blocks],
                         "cluster": [block_cluster(b) for b in blocks]})
    resolution = (f"{len(order)} KDs in {n} blocks of consecutive KDs (block means)" if aggregated
                  else f"{len(order)} KDs, every pair")
    # Cluster numbers are written on the strip instead of a legend: a legend on the strip would push the heatmap down.
    segments = axis.assign(run=(axis["cluster"] != axis["cluster"].shift()).cumsum()).groupby("run").agg(
        cluster=("cluster", "first"), start=("pos", "min"), end=("pos", "max")).reset_index(drop=True)
    segments["mid"] = (segments["start"] + segments["end"]) / 2
    x_pos = alt.X("pos:Q", axis=None, scale=alt.Scale(domain=[-0.5, n - 0.5], nice=False, zero=False))
    strip = alt.layer(
        alt.Chart(axis).mark_rect(width=size / n + 0.5).encode(
            x=x_pos, color=alt.Color("cluster:N", legend=None, scale=cluster_scale(labels)),
            tooltip=["kd", "cluster"]),
        alt.Chart(segments[segments["end"] - segments["start"] >= 2]).mark_text(fontSize=MIN_FONT_PX, color="black").encode(
            x=alt.X("mid:Q", axis=None, scale=alt.Scale(domain=[-0.5, n - 0.5], nice=False, zero=False)),
            text="cluster:N"),
    ).properties(width=size, height=12)
    panels = []
    for index, (key, title) in enumerate(names.items()):
        # Names come in through lookups so the per-cell table stays three numbers wide.
        last = index == len(names) - 1
        heat = alt.Chart(cells).transform_lookup(
            lookup="r", from_=alt.LookupData(axis, "pos", ["kd", "cluster"]), as_=["row_kd", "row_cluster"],
        ).transform_lookup(lookup="c", from_=alt.LookupData(axis, "pos", ["kd"]), as_=["col_kd"]).mark_rect().encode(
            x=alt.X("c:O", axis=None), y=alt.Y("r:O", axis=None),
            # Every panel uses the same fixed [-1, 1] scale, so one legend (on the last panel) serves all.
            color=alt.Color(f"{key}:Q", scale=SIMILARITY_SCALE, title="cosine", legend=alt.Legend() if last else None),
            tooltip=[alt.Tooltip("row_kd:N", title="row"), alt.Tooltip("col_kd:N", title="column"),
                     alt.Tooltip("row_cluster:N", title="row cluster"), alt.Tooltip(f"{key}:Q", title=title, format=".3f")],
        ).properties(width=size, height=size)
        panels.append(alt.vconcat(strip, heat, spacing=2, title=alt.Title(title, anchor="middle")))
    return (alt.concat(*panels, columns=2).resolve_scale(color="independent")
            .properties(title=alt.Title("KDs ordered by output cluster and dendrogram", subtitle=resolution)))


# ---------------------------------------------------------------- effects
def silhouette_curve(silhouette: pd.DataFrame, n_clusters: int) -> alt.LayerChart:
    """Mean silhouette per candidate number of clusters; the chosen (maximal) one marked."""
    frame = silhouette.assign(chosen=silhouette["n_clusters"] == n_clusters)
    base = alt.Chart(frame).encode(x=alt.X("n_clusters:Q", title="number of clusters", axis=alt.Axis(tickMinStep=1)),
                                   y=alt.Y("silhouette:Q", title="mean silhouette (1 − cosine)"))
    return (base.mark_line(color="#888") + base.mark_point(filled=True, size=70).encode(
        color=alt.Color("chosen:N", scale=alt.Scale(domain=[False, True], range=["#888", "#d62728"]), legend=None),
        tooltip=["n_clusters", alt.Tooltip("silhouette:Q", format=".3f")])).properties(width=320, height=180)


def _term_label(term: str, library: str) -> str:
    """The whole term (GO id and HALLMARK_ prefix dropped) with its library's short name: 'ribosome biogenesis [GO BP]'."""
    name = re.sub(r"\s*\(GO:\d+\)$", "", term).replace("HALLMARK_", "")
    return f"{name} [{library_short(library)}]"


def _top_terms(table: pd.DataFrame, fdr: float, per_cluster: int) -> pd.DataFrame:
    """Cluster × term cells for the union of each cluster's `per_cluster` best significant terms."""
    if table.empty:
        return pd.DataFrame(columns=["cluster", "term", "label", "fdr", "score", "significant", "library"])
    t = table.assign(cluster=table["query"].str.removeprefix("cluster ").astype(int))
    best = t[t["fdr"] < fdr].groupby("cluster").head(per_cluster)
    chosen = best.drop_duplicates("term")["term"]
    cells = t[t["term"].isin(chosen)].drop_duplicates(["cluster", "term"]).copy()
    cells["label"] = [_term_label(t, lib) for t, lib in zip(cells["term"], cells["library"])]
    cells["significant"] = np.where(cells["fdr"] < fdr, "•", "")
    return cells


def enrichment_heatmap(ora: pd.DataFrame, gsea: pd.DataFrame, fdr: float, per_cluster: int = 2) -> alt.VConcatChart:
    """Cluster × pathway: KD-target ORA (−log10 FDR) above response GSEA (sign(NES) · −log10 FDR); • marks FDR < fdr.

    One heatmap a row, so the term labels keep their full width and print size."""
    panels = []
    specs = [
        (ora, "KD targets: over-representation (background: screen KDs)", "−log10 FDR", None, "oranges"),
        (gsea, "Response: prerank GSEA of the cluster's mean ΔY", "sign(NES) · −log10 FDR", "nes", "redblue"),
    ]
    for table, title, legend, sign, scheme in specs:
        cells = _top_terms(table, fdr, per_cluster)
        if cells.empty:
            panels.append(alt.Chart(pd.DataFrame({"text": [f"no term at FDR < {fdr}"]})).mark_text().encode(
                text="text:N").properties(title=title, width=200, height=60))
            continue
        score = -np.log10(cells["fdr"].clip(lower=1e-300))
        cells["score"] = np.round(score * (np.sign(cells[sign]) if sign else 1), 3)
        extent = float(cells["score"].abs().max()) or 1.0
        scale = (alt.Scale(scheme=scheme, domain=[-extent, extent], reverse=True) if sign
                 else alt.Scale(scheme=scheme, domain=[0, extent]))
        base = alt.Chart(cells).encode(
            x=alt.X("cluster:O", title="output cluster", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("label:N", title=None, sort=alt.EncodingSortField("cluster", op="min"),
                    axis=alt.Axis(labelLimit=0)))
        heat = base.mark_rect().encode(
            color=alt.Color("score:Q", scale=scale, title=legend),
            tooltip=["cluster", "term", "library", alt.Tooltip("fdr:Q", format=".2g")]
            + ([alt.Tooltip("nes:Q", format=".2f")] if sign else ["overlap"]))
        dots = base.mark_text(color="black", fontSize=14, baseline="middle").encode(text="significant:N")
        panels.append((heat + dots).properties(title=title, width=alt.Step(22), height=alt.Step(14)))
    return alt.vconcat(*panels, spacing=24).resolve_scale(color="independent")


# ---------------------------------------------------------------- jacobians
def linearity_by_cluster(linearity: pd.DataFrame) -> alt.LayerChart:
    """Per KD, the share of ΔY that the first-order term J·Δp explains, by output cluster."""
    # Seeded jitter, so the static image is the same on every render.
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(linearity))
    frame = linearity.assign(explained=linearity["explained"].clip(lower=-1), jitter=jitter)
    base = alt.Chart(frame).encode(x=alt.X("cluster:O", title="output cluster (0 = weak effect)",
                                           axis=alt.Axis(labelAngle=0)))
    box = base.mark_boxplot(extent="min-max", opacity=0.35, color="#4c78a8", size=30).encode(
        y=alt.Y("explained:Q", title="share of ΔY_k explained by J_k·(p_k − p_ctrl)"))
    points = base.mark_circle(size=18, opacity=0.6, color="#333").encode(
        y="explained:Q", xOffset=alt.XOffset("jitter:Q", scale=alt.Scale(domain=[-1, 1])),
        tooltip=["kd", "cluster", alt.Tooltip("explained:Q", format=".3f"), alt.Tooltip("jacobian_norm:Q", format=".3g")])
    rule = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(strokeDash=[4, 3], color="#888").encode(y="y:Q")
    return (box + points + rule).properties(width=420, height=180)


# ---------------------------------------------------------------- interventions
def substitution_by_cluster(table: pd.DataFrame) -> alt.LayerChart:
    """Per substituted KD, how well the model's response to a centroid put in place of its pert_repr points along its
    own ΔY: its cluster's leave-one-out centroid against random groups of the same size, by output cluster."""
    kinds = {"cosine": "its cluster's centroid (leave-one-out)", "random_cosine": "random groups' centroids (mean)"}
    frame = table.melt(id_vars=["kd", "cluster"], value_vars=list(kinds), var_name="centroid", value_name="cos")
    frame["centroid"] = frame["centroid"].map(kinds)
    colour = alt.Color("centroid:N", title="pert_repr replaced by", scale=alt.Scale(
        domain=list(kinds.values()), range=["#7b3294", "#9e9e9e"]), legend=alt.Legend(orient="bottom"))
    base = alt.Chart(frame).encode(x=alt.X("cluster:O", title="output cluster", axis=alt.Axis(labelAngle=0)),
                                   xOffset=alt.XOffset("centroid:N", sort=list(kinds.values())), color=colour)
    box = base.mark_boxplot(extent="min-max", opacity=0.45, size=14).encode(
        y=alt.Y("cos:Q", title="cos(ΔY(centroid), ΔY_k)", scale=alt.Scale(domain=[-1, 1])))
    points = base.mark_circle(size=14, opacity=0.7).encode(
        y="cos:Q", tooltip=["kd", "cluster", "centroid", alt.Tooltip("cos:Q", format=".3f")])
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(strokeDash=[4, 3], color="#888").encode(y="y:Q")
    return (box + points + zero).properties(width=420, height=200)


def steering_dose_response(table: pd.DataFrame, tolerance: float) -> alt.HConcatChart:
    """Steering along each routing axis: whether the change of ΔY follows the axis's gene loading (left) and how far
    the first-order prediction J·v·step holds (right: its relative error, log scale, against the tolerance)."""
    axis = alt.Color("axis:N", title="routing axis", legend=alt.Legend(orient="bottom"))
    tooltip = ["axis", "kd", "step", alt.Tooltip("relative_error:Q", format=".3g"),
               alt.Tooltip("cos_loading:Q", format=".3f")]
    base = alt.Chart(table).encode(color=axis, tooltip=tooltip)
    follows = (base.mark_line(point=True).encode(
        x=alt.X("step:Q", title="step along the axis (median KD offsets)"),
        y=alt.Y("cos_loading:Q", title="cos(change of ΔY, axis gene loading)", scale=alt.Scale(domain=[-1, 1])))
        .properties(width=230, height=190))
    floor = table.assign(relative_error=table["relative_error"].clip(lower=1e-6))
    error = (alt.Chart(floor).mark_point(filled=True).encode(
        x=alt.X("distance:Q", title="‖Δp‖ (pert_repr units)"),
        y=alt.Y("relative_error:Q", title="relative error of J·Δp", scale=alt.Scale(type="log")),
        color=axis, shape=alt.Shape("direction:N", title="direction"), tooltip=tooltip)
        .transform_calculate(direction="datum.step > 0 ? 'positive' : 'negative'")
        .properties(width=230, height=190))
    line = alt.Chart(pd.DataFrame({"y": [tolerance]})).mark_rule(strokeDash=[4, 3], color="#888").encode(y="y:Q")
    return alt.hconcat(follows, error + line)


# ---------------------------------------------------------------- routing
def _pairs(labels: np.ndarray):
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    weak = (labels[i] == 0) | (labels[j] == 0)
    kind = np.where(weak, "involves a weak-effect KD", np.where(same, "same cluster", "different clusters"))
    return i, j, kind


def routing_by_depth(routing) -> alt.HConcatChart:
    """Routing block by block through the backbone, then at the output (`routing`: `RoutingResult`): left, the two
    deciding statistics on the KD-specific part, both on the r scale (Mantel r and the contrast's point-biserial r)
    with ± one jackknife SE; right, the share of the Jacobian energy common to every KD. A block with no
    KD-specific part draws no r."""
    e = routing.evidence
    places = [(f"block {d.block}", d.mantel, d.contrast, d.decomposition.common_share, d.reading)
              for d in routing.depth]
    places.append(("output", e.mantel_pearson, e.contrast, e.decomposition.common_share, routing.verdict.call))
    order = [place[0] for place in places]
    rows = []
    for place, mantel, contrast, common, reading in places:
        for criterion, value, se in (("Mantel r(C_out, C_jac^spec)", mantel.statistic, mantel.standard_error),
                                     ("contrast as r (point-biserial)", contrast.r,
                                      contrast.test.standard_error * contrast.r_scale)):
            rows.append({"depth": place, "criterion": criterion, "r": value, "low": value - se, "high": value + se,
                         "common_share": common, "reading": reading})
    frame = pd.DataFrame(rows).dropna(subset=["r"])
    x = alt.X("depth:N", sort=order, title=None, axis=alt.Axis(labelAngle=0))
    colour = alt.Color("criterion:N", title=None, legend=alt.Legend(orient="bottom", columns=1))
    offset = alt.XOffset("criterion:N")
    tooltip = ["depth", "criterion", alt.Tooltip("r:Q", format=".3f"), "reading"]
    base = alt.Chart(frame).encode(x=x, xOffset=offset, color=colour, tooltip=tooltip)
    tracks = (base.mark_rule().encode(y=alt.Y("low:Q", title="r with output similarity (± SE)"), y2="high:Q")
              + base.mark_point(filled=True, size=60).encode(y="r:Q")).properties(width=280, height=200)
    shares = pd.DataFrame({"depth": order, "common_share": [place[3] for place in places]})
    common = (alt.Chart(shares).mark_bar(color="#999").encode(
        x=alt.X("depth:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("common_share:Q", title="share common to every KD", scale=alt.Scale(domain=[0, 1])),
        tooltip=["depth", alt.Tooltip("common_share:Q", format=".3f")])
        .properties(width=180, height=200))
    return alt.hconcat(tracks, common)


def routing_scatter(c_out: np.ndarray, c_jac: np.ndarray, kd_names, labels: np.ndarray, evidence,
                    max_points: int = MAX_SCATTER_POINTS, seed: int = 0) -> alt.Chart:
    """One point per KD pair: C_out against the KD-specific C_jac^spec (the matrix the criteria read), with r, its
    KD-bootstrap CI and the studentized Mantel p in the title (`evidence`: `routing.RoutingEvidence`)."""
    kd_names = np.asarray(kd_names)
    i, j, kind = _pairs(np.asarray(labels))
    n_pairs = len(i)
    shown = np.arange(n_pairs)
    if n_pairs > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(n_pairs, size=max_points, replace=False))
    frame = pd.DataFrame({"c_out": np.round(c_out[i[shown], j[shown]], 4), "c_jac": np.round(c_jac[i[shown], j[shown]], 4),
                          "pair": [f"{a}–{b}" for a, b in zip(kd_names[i[shown]], kd_names[j[shown]])],
                          "kind": kind[shown]})
    mantel = evidence.mantel_pearson
    lo, hi = evidence.pearson_ci
    title = (f"Pearson r = {mantel.statistic:.2f} (95% KD-bootstrap CI {lo:.2f} to {hi:.2f}), "
             f"studentized Mantel {p_phrase(mantel.p_value, mantel.n_permutations)}; "
             f"Spearman {evidence.mantel_spearman.statistic:.2f}")
    read = f"statistics use the {evidence.n_pairs:,} pairs of strong-effect KDs"
    subtitle = (f"all {n_pairs:,} pairs; {read}" if len(shown) == n_pairs
                else f"{len(shown):,} of {n_pairs:,} pairs drawn at random; {read}")
    kinds = ["same cluster", "different clusters", "involves a weak-effect KD"]
    return alt.Chart(frame).mark_circle(size=12, opacity=0.45).encode(
        x=alt.X("c_out:Q", title="output similarity C_out (cosine of ΔY)"),
        y=alt.Y("c_jac:Q", title="KD-specific routing similarity C_jac^spec"),
        color=alt.Color("kind:N", title="pair", scale=alt.Scale(domain=kinds, range=[PAIR_COLOURS[k] for k in kinds]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["pair", "kind", alt.Tooltip("c_out:Q", format=".3f"), alt.Tooltip("c_jac:Q", format=".3f")],
    ).properties(width=460, height=240, title=alt.Title(title, subtitle=subtitle))


def cluster_contrast(c_jac: np.ndarray, labels: np.ndarray, contrast, bins: int = 40) -> alt.LayerChart:
    """Distributions of the KD-specific C_jac^spec over same- and cross-cluster pairs (clusters ≥ 1), each normalised
    to density (`contrast`: `routing.ClusterContrast`)."""
    labels = np.asarray(labels)
    keep = labels > 0
    i, j, kind = _pairs(labels[keep])
    values = c_jac[np.ix_(keep, keep)][i, j]
    edges = np.linspace(min(values.min(), 0.0) if len(values) else -1, 1.0, bins + 1)
    frames = []
    for name in ("same cluster", "different clusters"):
        density, _ = np.histogram(values[kind == name], bins=edges, density=True)
        frames.append(pd.DataFrame({"kind": name, "start": edges[:-1], "end": edges[1:], "density": density}))
    hist = pd.concat(frames, ignore_index=True)
    c = contrast
    means = pd.DataFrame({"kind": ["same cluster", "different clusters"], "mean": [c.mean_same, c.mean_cross]})
    colour = alt.Color("kind:N", title="pair", scale=alt.Scale(domain=["same cluster", "different clusters"],
                                                               range=[PAIR_COLOURS["same cluster"],
                                                                      PAIR_COLOURS["different clusters"]]),
                       legend=alt.Legend(orient="bottom"))
    bars = alt.Chart(hist).mark_rect(opacity=0.5).encode(
        x=alt.X("start:Q", title="KD-specific routing similarity C_jac^spec"), x2="end:Q", y=alt.Y("density:Q", stack=None), y2=alt.datum(0),
        color=colour, tooltip=["kind", alt.Tooltip("start:Q", format=".2f"), alt.Tooltip("density:Q", format=".2f")])
    rules = alt.Chart(means).mark_rule(strokeDash=[5, 3], size=2).encode(x="mean:Q", color=colour,
                                                                          tooltip=["kind", alt.Tooltip("mean:Q", format=".3f")])
    title = (f"same − cross = {c.difference:.3f} ({c.test.statistic:.2f} SD, r = {c.r:.2f}), AUC {c.auc:.2f}; "
             f"studentized cluster-label permutation {p_phrase(c.test.p_value, c.test.n_permutations)}")
    subtitle = (f"{c.n_same:,} same-cluster and {c.n_cross:,} cross-cluster pairs; pair-level rank-sum "
                f"{p_phrase(c.rank_sum_p)} (anti-conservative); dashed lines: means")
    return (bars + rules).properties(width=460, height=220, title=alt.Title(title, subtitle=subtitle))


def svd_overview(variance_explained: np.ndarray, kd_scores: np.ndarray, kd_names, n_show: int = 12,
                 annotate=ANNOTATED_KDS) -> alt.HConcatChart:
    """Scree of the stacked-Jacobian SVD and the KDs' scores on the two leading axes, KD families coloured."""
    n_show = min(n_show, len(variance_explained))
    scree = pd.DataFrame({"axis": np.arange(1, n_show + 1), "share": variance_explained[:n_show],
                          "cumulative": np.cumsum(variance_explained)[:n_show]})
    base = alt.Chart(scree).encode(x=alt.X("axis:O", title="SVD axis", axis=alt.Axis(labelAngle=0)))
    scree_chart = (base.mark_bar(color="#4c78a8").encode(
        y=alt.Y("share:Q", title="share of the KD-specific routing energy", axis=alt.Axis(format="%")),
        tooltip=["axis", alt.Tooltip("share:Q", format=".1%"), alt.Tooltip("cumulative:Q", format=".1%")])
        + base.mark_line(color="#d62728", point=True).encode(y="cumulative:Q")).properties(
        width=alt.Step(18), height=220, title=alt.Title("Variance explained", subtitle="bars: each axis; line: cumulative"))

    kd_names = np.asarray(kd_names)
    two = kd_scores.shape[1] >= 2
    frame = pd.DataFrame({"kd": kd_names, "group": kd_groups(kd_names), "axis1": np.round(kd_scores[:, 0], 5),
                          "axis2": np.round(kd_scores[:, 1], 5) if two else np.argsort(np.argsort(-kd_scores[:, 0]))})
    frame["label"] = np.where(np.isin(kd_names, list(annotate)), kd_names, "")
    y_title = "score on axis 2" if two else "rank on axis 1"
    points = alt.Chart(frame).mark_circle(size=40, opacity=0.8).encode(
        x=alt.X("axis1:Q", title="score on axis 1", scale=alt.Scale(zero=False)),
        y=alt.Y("axis2:Q", title=y_title, scale=alt.Scale(zero=False)), color=_group_colour(),
        tooltip=["kd", "group", alt.Tooltip("axis1:Q", format=".3g"), alt.Tooltip("axis2:Q", format=".3g")])
    # Annotated KDs often sit together (TRAPPC3 beside TRAPPC5, MYC): give each its own vertical offset.
    named = frame[frame["label"] != ""].sort_values("axis1").reset_index(drop=True)
    offsets = (-10, 14, -24, 28)
    layers = [points]
    for k, dy in enumerate(offsets):
        rows = named[named.index % len(offsets) == k]
        if len(rows):
            layers.append(alt.Chart(rows).mark_text(align="left", dx=5, dy=dy, fontSize=MIN_FONT_PX, fontWeight="bold").encode(
                x="axis1:Q", y="axis2:Q", text="label:N"))
    return alt.hconcat(scree_chart, alt.layer(*layers).properties(width=300, height=220, title="KD scores"))


def gene_loadings(gene_loadings: np.ndarray, gene_names, n_axes: int = 3, top: int = 12) -> alt.HConcatChart:
    """The output genes with the largest |loading| on each leading axis; ribosomal-protein genes coloured."""
    gene_names = np.asarray(gene_names)
    panels = []
    for a in range(min(n_axes, gene_loadings.shape[0])):
        idx = np.argsort(-np.abs(gene_loadings[a]))[:top]
        frame = pd.DataFrame({"gene": gene_names[idx], "loading": np.round(gene_loadings[a, idx], 4)})
        frame["kind"] = np.where(frame["gene"].str.match(KD_FAMILIES["ribosomal"]), "ribosomal protein (RPL/RPS)", "other")
        panels.append(alt.Chart(frame).mark_bar().encode(
            x=alt.X("loading:Q", title="loading", axis=alt.Axis(tickCount=3, labelOverlap=True, format=".2f")), y=alt.Y("gene:N", sort=alt.EncodingSortField("loading", order="descending"),
                                                           title=None),
            color=alt.Color("kind:N", title="output gene", scale=alt.Scale(domain=["ribosomal protein (RPL/RPS)", "other"],
                                                                          range=["#d62728", "#9e9e9e"]),
                            legend=alt.Legend(orient="bottom")),
            tooltip=["gene", alt.Tooltip("loading:Q", format=".3f")]).properties(width=130, height=alt.Step(14),
                                                                                title=f"axis {a + 1}"))
    return alt.hconcat(*panels)


# ---------------------------------------------------------------- verdict
THRESHOLD_COLOURS = {"Model B: minimum effect": "#6a3d9a", "Model A: smallest effect of interest": "#1b9e77"}


def verdict_forest(estimates: pd.DataFrame) -> alt.HConcatChart:
    """The verdict at a glance: one panel per deciding criterion, one row per cell line, the statistic (point) between
    its one-sided 95% bounds (bar), the Model B minimum and the Model A smallest effect of interest (dashed lines), its
    p and the model it supports beside it. estimates: criterion, line, statistic, lower, upper, model_b, model_a, label,
    unit (one row per criterion and line, in the order shown)."""
    panels = []
    for criterion, frame in estimates.groupby("criterion", sort=False):
        y = alt.Y("line:N", title=None, sort=list(frame["line"]))
        low = float(min(frame["lower"].min(), frame["model_a"].min(), 0.0))
        high = float(max(frame["upper"].max(), frame["model_b"].max()))
        scale = alt.Scale(domain=[low - 0.1 * (high - low), high + 0.6 * (high - low)], nice=False)
        thresholds = pd.DataFrame({"x": [frame["model_b"].iloc[0], frame["model_a"].iloc[0]],
                                   "threshold": list(THRESHOLD_COLOURS)})
        rules = alt.Chart(thresholds).mark_rule(strokeDash=[5, 3], strokeWidth=1.5).encode(
            x=alt.X("x:Q", scale=scale, title=frame["unit"].iloc[0]),
            color=alt.Color("threshold:N", title=None, scale=alt.Scale(domain=list(THRESHOLD_COLOURS),
                                                                     range=list(THRESHOLD_COLOURS.values())),
                            legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=0)))
        base = alt.Chart(frame.round({"statistic": 4, "lower": 4, "upper": 4}))
        bars = base.mark_rule(strokeWidth=2.5, color="#333").encode(x="lower:Q", x2="upper:Q", y=y)
        points = base.mark_point(filled=True, size=80, color="#333").encode(
            x="statistic:Q", y=y, tooltip=["line", alt.Tooltip("statistic:Q", format=".3f"),
                                           alt.Tooltip("lower:Q", format=".3f"), alt.Tooltip("upper:Q", format=".3f")])
        labels = base.mark_text(align="left", dx=8, fontSize=MIN_FONT_PX).encode(x="upper:Q", y=y, text="label:N")
        panels.append(alt.layer(rules, bars, points, labels).properties(width=250, height=alt.Step(36), title=criterion))
    return alt.hconcat(*panels, spacing=30)


# ---------------------------------------------------------------- across cell lines
def cross_line_consistency(across) -> alt.Chart:
    """Per KD, consistency of ΔY (x) against consistency of J (y) between two lines, coloured by the primary line's
    output cluster: KD-specific cosines, each line's common direction projected off (left; 1 on both axes for a KD kept
    identical in both lines), and raw ones (right); above the diagonal a KD's routing agrees across the lines more
    than its output. One row per pair of lines (`across`: `results.AcrossResult`, or None when one line was
    analysed), each panel's comparison in its title."""
    if across is None:  # one line analysed: say so where the figure would be
        return alt.Chart(pd.DataFrame({"text": ["one cell line analysed: list two or more in [data] cell_line"]})).mark_text(
            fontSize=13, color="#666").encode(text="text:N").properties(width=420, height=60)
    rows = []
    for (a, b), frame in across.table.groupby(["line_a", "line_b"], sort=False):
        frame = frame.assign(cluster=frame["cluster"].astype(str))
        panels = []
        for test in across.pair_tests(a, b):
            x, y = ("cos_output", "cos_jacobian") if test.measure == "raw" else ("specific_output", "specific_jacobian")
            shown = frame.assign(x=frame[x].round(4), y=frame[y].round(4))
            low = float(min(shown["x"].min(), shown["y"].min(), 0.0))
            scale = alt.Scale(domain=[low, 1.0])
            points = alt.Chart(shown).mark_circle(size=22, opacity=0.7).encode(
                x=alt.X("x:Q", title=f"{MEASURES[test.measure]} cos ΔY, {a} vs {b}", scale=scale),
                y=alt.Y("y:Q", title=f"{MEASURES[test.measure]} cos J, {a} vs {b}", scale=scale),
                color=alt.Color("cluster:N", title=f"{a} cluster", scale=cluster_scale(shown["cluster"]),
                                legend=alt.Legend(orient="bottom", columns=8)),
                tooltip=["kd", "cluster", alt.Tooltip("x:Q", format=".3f"), alt.Tooltip("y:Q", format=".3f")])
            diagonal = alt.Chart(pd.DataFrame({"x": [low, 1.0], "y": [low, 1.0]})).mark_line(
                strokeDash=[4, 3], color="#888").encode(x="x:Q", y="y:Q")
            title = alt.Title(f"{MEASURES[test.measure]} cos J − cos ΔY: mean {test.estimate:+.2f}",
                              subtitle=f"95% CI {test.ci_low:+.2f} to {test.ci_high:+.2f}; sign-flip over "
                                       f"{test.n_units} clusters, {paired_p(test)}")
            panels.append((points + diagonal).properties(width=250, height=220, title=title))
        rows.append(alt.hconcat(*panels))
    return alt.vconcat(*rows) if len(rows) > 1 else rows[0]
