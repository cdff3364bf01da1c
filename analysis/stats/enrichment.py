"""Offline gene-set enrichment with gseapy on the bundled GMT libraries (no network).

Two questions, two tests, BH-FDR over all terms of all libraries within each query:
- KD-target over-representation (hypergeometric, `gseapy.enrich`): are a cluster's
  knocked-down genes enriched for a pathway, against the screen's KDs as background
  (the screen is biased toward essential genes, so the genome is the wrong background)?
- Response prerank GSEA (`gseapy.prerank`): is a ranked output-gene vector (a cluster's
  mean ΔY, or an SVD axis's gene loadings) enriched at either end for a pathway?
  Responses read in an embedding space have no genes: their tables are empty (KD names are still
  genes, so the KD-side tests run).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from ..console import silenced

ORA_COLUMNS = ["query", "library", "term", "overlap", "p_value", "fdr", "odds_ratio", "genes"]
PRERANK_COLUMNS = ["query", "library", "term", "nes", "p_value", "fdr", "size", "lead_genes"]


def _bh(frame: pd.DataFrame, strength: str) -> pd.DataFrame:
    """Add BH-FDR over all rows; sort by FDR, p, then decreasing |strength| (ties are common at the permutation floor)."""
    frame = frame.copy()
    frame["fdr"] = false_discovery_control(frame["p_value"].clip(0, 1).to_numpy(), method="bh") if len(frame) else []
    frame["_strength"] = -frame[strength].abs()
    # library and term last: a total order, so equal inputs give equal bytes whatever order gseapy returned
    return (frame.sort_values(["fdr", "p_value", "_strength", "library", "term"], kind="stable")
            .drop(columns="_strength").reset_index(drop=True))


def over_representation(query: str, genes, background, libraries: dict, min_overlap: int = 2) -> pd.DataFrame:
    """Hypergeometric test of `genes` against `background` for every term of every library."""
    import gseapy

    genes = sorted(set(genes))
    frames = []  # gseapy logs every call; the pipeline reports its own progress, hence silenced() below
    for library, sets in libraries.items():
        with silenced():
            result = gseapy.enrich(gene_list=genes, gene_sets=sets, background=sorted(set(background)),
                                   outdir=None, no_plot=True, cutoff=1.0, verbose=False)
        res = getattr(result, "results", None)
        if not isinstance(res, pd.DataFrame) or res.empty:
            continue
        hits = res["Overlap"].str.split("/").str[0].astype(int)
        res = res[hits >= min_overlap]
        frames.append(pd.DataFrame({
            "query": query, "library": library, "term": res["Term"], "overlap": res["Overlap"],
            "p_value": res["P-value"].astype(float), "odds_ratio": res["Odds Ratio"].astype(float),
            # gseapy lists the overlap in set-iteration order, which follows Python's per-process string hashing
            "genes": res["Genes"].str.split(";").map(sorted).str.join(";"),
        }))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ORA_COLUMNS)
    return _bh(frame, "odds_ratio")[ORA_COLUMNS]


def prerank(query: str, scores: pd.Series, libraries: dict, permutations: int, seed: int,
            min_size: int = 10, max_size: int = 500) -> pd.DataFrame:
    """Prerank GSEA of `scores` (index: gene symbols) against every library."""
    import gseapy

    # Many scores tie (genes a response leaves unchanged). A stable sort would keep ties in the input order, and
    # output genes are often grouped by pathway: shuffle first (seeded) so ties do not fake an enrichment.
    shuffled = scores.astype(float).sample(frac=1.0, random_state=seed)
    scores = shuffled.sort_values(ascending=False, kind="stable")
    frames = []
    for library, sets in libraries.items():
        with silenced():
            try:
                result = gseapy.prerank(rnk=scores, gene_sets=sets, permutation_num=permutations, min_size=min_size,
                                        max_size=max_size, seed=seed, threads=1, outdir=None, no_plot=True, verbose=False)
            except (LookupError, ValueError):  # no term of this library has min_size genes among the outputs
                continue
        res = result.res2d
        frames.append(pd.DataFrame({
            "query": query, "library": library, "term": res["Term"], "nes": res["NES"].astype(float),
            # A permutation p-value is never below 1/(permutations + 1); gseapy reports 0 there.
            "p_value": res["NOM p-val"].astype(float).clip(lower=1.0 / (permutations + 1)),
            "size": res["Tag %"].astype(str).str.split("/").str[1].astype(int),
            "lead_genes": res["Lead_genes"],
        }))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PRERANK_COLUMNS)
    return _bh(frame, "nes")[PRERANK_COLUMNS]


def cluster_enrichment(kd_names, labels: np.ndarray, delta_y: np.ndarray, gene_names, libraries: dict,
                       permutations: int, seed: int, responses_are_genes: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per cluster: KD-target ORA (background = all KDs of the screen) and prerank GSEA of the mean ΔY [G]
    (an empty table when the responses are not genes)."""
    kd_names = np.asarray(kd_names)
    response_libraries = libraries if responses_are_genes else {}
    ora, gsea = [], []
    for cluster in np.unique(labels):
        members = labels == cluster
        query = f"cluster {cluster}"
        if members.sum() >= 3:
            ora.append(over_representation(query, kd_names[members], kd_names, libraries))
        mean_response = pd.Series(delta_y[members].mean(axis=0), index=list(gene_names))
        gsea.append(prerank(query, mean_response, response_libraries, permutations, seed))
    ora_frame = pd.concat(ora, ignore_index=True) if ora else pd.DataFrame(columns=ORA_COLUMNS)
    return ora_frame, pd.concat(gsea, ignore_index=True)


def axis_enrichment(source: str, kd_scores: np.ndarray, gene_loadings: np.ndarray, kd_names, gene_names,
                    libraries: dict, permutations: int, seed: int, n_axes: int,
                    responses_are_genes: bool) -> pd.DataFrame:
    """Prerank GSEA of the leading `n_axes` SVD axes of `source` ("routing" or "output"): gene loadings [A, G] over
    output genes (no rows when the outputs are not genes) and KD scores [K, A] over KDs (KD gene sets).
    Columns: PRERANK_COLUMNS + source, axis, kind."""
    response_libraries = libraries if responses_are_genes else {}
    frames = []
    for a in range(min(n_axes, kd_scores.shape[1])):
        genes = prerank(f"{source} axis {a + 1} genes", pd.Series(gene_loadings[a], index=list(gene_names)),
                        response_libraries, permutations, seed)
        kds = prerank(f"{source} axis {a + 1} KDs", pd.Series(kd_scores[:, a], index=list(kd_names)), libraries,
                      permutations, seed, min_size=5)
        frames += [genes.assign(source=source, axis=a + 1, kind="genes"), kds.assign(source=source, axis=a + 1, kind="KDs")]
    return pd.concat(frames, ignore_index=True)


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / max(len(a | b), 1)


def matched_pathway(genes: pd.DataFrame, kds: pd.DataFrame, libraries: dict, fdr: float,
                    min_jaccard: float = 0.25) -> tuple[str, pd.Series | None, pd.Series | None]:
    """The best pathway shown on both sides of one axis: a term significant (FDR < fdr) in the gene loadings and,
    at the high-score end (NES > 0), in the KD scores — the same term, or two terms whose gene sets overlap
    (Jaccard ≥ `min_jaccard`, e.g. a GO process and its Hallmark counterpart). Returns (label, gene row, KD row),
    ("", None, None) when no pathway is shared; ties broken by the larger of the two FDRs."""
    gene_hits = genes[genes["fdr"] < fdr]
    kd_hits = kds[(kds["fdr"] < fdr) & (kds["nes"] > 0)]
    best, best_fdr = ("", None, None), np.inf
    for _, g in gene_hits.iterrows():
        for _, k in kd_hits.iterrows():
            same = g["library"] == k["library"] and g["term"] == k["term"]
            if not same and _jaccard(libraries[g["library"]][g["term"]], libraries[k["library"]][k["term"]]) < min_jaccard:
                continue
            worst = max(g["fdr"], k["fdr"])
            if worst < best_fdr:
                label = g["term"] if same else f"{g['term']} ~ {k['term']}"
                best, best_fdr = (label, g, k), worst
    return best
