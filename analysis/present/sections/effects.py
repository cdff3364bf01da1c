"""The effects section: its numbers (`EffectsNumbers`: clusters, their stability, the draws' reproducibility), the
cluster table with its enrichment legend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...results import Results
from ..formatting import (
    Md,
    breakable,
    fmt,
    fmt_p,
    library_legend,
    library_short,
    markdown_table,
    top_terms,
    typeset_record,
)


@dataclass(frozen=True)
class EffectsNumbers:
    """Output clusters (how many, the weak-effect group 0, the chosen silhouette, the bootstrap ARI over
    n_cluster_bootstrap resamples of genes) and the cosine of ΔY between control draws (median and lowest KD)."""

    n_clusters: Md
    n_weak: Md
    n_clustered: Md
    silhouette: Md
    n_cluster_bootstrap: Md
    ari_median: Md
    ari_min: Md
    draw_cosine_median: Md
    draw_cosine_min: Md


def effects_numbers(results: Results) -> EffectsNumbers:
    p1 = results.effects
    labels, ari = p1.labels, p1.bootstrap_ari
    reproducibility = p1.kd_table["draw_cosine"]
    chosen = p1.silhouette.loc[p1.silhouette["silhouette"].idxmax()]
    return typeset_record(
        EffectsNumbers,
        n_clusters=f"{int(labels.max())}", n_weak=f"{int((labels == 0).sum())}",
        n_clustered=f"{int((labels > 0).sum())}", silhouette=fmt(float(chosen["silhouette"])),
        n_cluster_bootstrap=f"{len(ari)}",
        ari_median=fmt(float(np.median(ari))) if len(ari) else "—",
        ari_min=fmt(float(np.min(ari))) if len(ari) else "—",
        draw_cosine_median=fmt(float(reproducibility.median()), 3),
        draw_cosine_min=fmt(float(reproducibility.min()), 3))


def _term_cell(row: pd.Series, statistic: str | None = None) -> str:
    """'term [library]' with its FDR (and NES), the name wrappable at underscores."""
    stat = f"NES {fmt(row[statistic])}, " if statistic else ""
    return f"{breakable(row['term'])} [{library_short(row['library'])}] ({stat}FDR {fmt_p(row['fdr'])})"


MAX_TABLE_CLUSTERS = 15  # clusters a table lists (the largest: labels are numbered by size); the rest share one row


def _listed_clusters(labels: np.ndarray) -> tuple[list[int], list[int]]:
    """(listed, rest): the weak-effect group 0 and clusters 1..MAX_TABLE_CLUSTERS, then the smaller ones."""
    present = sorted(set(np.asarray(labels).tolist()))
    return [c for c in present if c <= MAX_TABLE_CLUSTERS], [c for c in present if c > MAX_TABLE_CLUSTERS]


def _rest_row(results: Results, rest: list[int], labels: np.ndarray, line: int, columns: list[str]) -> dict:
    """The row standing for the clusters a table does not list: how many, their KDs, and the stage file (in the
    cache) that has every KD's cluster."""
    suffix = f" ({results.lines[line].cell_line})" if len(results.lines) > 1 else ""
    folder = Path((results.stage_paths or {}).get(f"effects{suffix}", "effects"))
    note = (f"{len(rest)} smaller clusters; every KD's cluster: "
            f"{breakable(f'{folder.parent.name}/{folder.name}/kd_table.parquet')} in the cache")
    return {columns[0]: f"{rest[0]}–{rest[-1]}", columns[1]: f"{int(np.isin(labels, rest).sum())}", columns[2]: note}


def cluster_table(results: Results, line: int = 0) -> Md:
    """Per output cluster of the `line`-th analysed line (0: the primary one): size and members, the best KD-target
    ORA term and the best response GSEA term; the clusters past MAX_TABLE_CLUSTERS in one row."""
    if line >= len(results.lines):
        return markdown_table(pd.DataFrame({"Cluster": ["—"], "Note": ["one cell line was analysed"]}), [10, 40])
    p1 = results.lines[line].effects
    top_ora = top_terms(p1.ora).set_index("query")
    top_gsea = top_terms(p1.gsea).set_index("query")
    listed, rest = _listed_clusters(p1.labels)
    rows = []
    for cluster, members in p1.kd_table[p1.kd_table["cluster"].isin(listed)].groupby("cluster"):
        q = f"cluster {cluster}"
        names = list(members["kd"])
        shown = ", ".join(names[:6]) + (f", … (+{len(names) - 6})" if len(names) > 6 else "")
        rows.append({"Cluster": "0 (weak)" if cluster == 0 else str(cluster), "KDs": len(names), "Members": shown,
                     "KD targets (ORA)": _term_cell(top_ora.loc[q]) if q in top_ora.index else "—",
                     "Response (GSEA)": _term_cell(top_gsea.loc[q], "nes") if q in top_gsea.index else "—"})
    if rest:
        rows.append(_rest_row(results, rest, p1.labels, line, ["Cluster", "KDs", "Members"])
                    | {"KD targets (ORA)": "—", "Response (GSEA)": "—"})
    return markdown_table(pd.DataFrame(rows), [10, 5, 25, 30, 30], "lrlll")


def enrichment_legend(results: Results) -> Md:
    """Beneath the tables that name gene-set libraries: what the short names stand for."""
    libraries = pd.concat([results.effects.ora["library"], results.effects.gsea["library"],
                           results.routing.svd_enrichment.get("library", pd.Series(dtype=str))])
    legend = library_legend(libraries)
    return Md(f"Libraries: {legend}." if legend else "")
