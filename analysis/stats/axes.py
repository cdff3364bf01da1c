"""The SVD axes read as biology: the output SVD beside the routing SVD, each axis's enrichment on both sides (gene
loadings and KD scores), and how far the routing axes reach beyond the output axes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results import AxisReading, SvdEvidence
from .enrichment import axis_enrichment, matched_pathway
from .gram import JacobianSVD


def output_svd(delta_y: np.ndarray, n_axes: int) -> tuple[np.ndarray, np.ndarray]:
    """SVD of unit-norm ΔY rows [K, G]: KD scores [K, A] and gene loadings [A, G], signed like `jacobian_svd`'s
    (the KD with the largest |score| scores positive; genes going up in high-scoring KDs load positively)."""
    norms = np.linalg.norm(delta_y, axis=1, keepdims=True)
    unit = delta_y / np.where(norms > 0, norms, 1.0)
    u, s, vt = np.linalg.svd(unit, full_matrices=False)
    n_axes = min(n_axes, len(s))
    sign = np.sign(u[np.argmax(np.abs(u[:, :n_axes]), axis=0), np.arange(n_axes)])
    return u[:, :n_axes] * s[:n_axes] * sign, vt[:n_axes] * sign[:, None]


def subspace_overlap(loadings: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """Per row of `loadings` [A, G], the norm of its unit vector's projection onto span(reference [B, G]); and the
    cosine of the largest principal angle between the two spans."""
    from scipy.linalg import subspace_angles

    q, _ = np.linalg.qr(reference.T)
    unit = loadings / np.linalg.norm(loadings, axis=1, keepdims=True)
    overlap = np.linalg.norm(unit @ q, axis=1)
    return overlap, float(np.cos(subspace_angles(loadings.T, reference.T).max()))



def read_axes(svd: JacobianSVD, output_scores: np.ndarray, output_loadings: np.ndarray, kd_names, gene_names,
              libraries: dict, fdr: float, prerank_permutations: int, seed: int, responses_are_genes: bool,
              axes_read: int = 3, output_overlap: float = 0.9) -> tuple[pd.DataFrame, SvdEvidence]:
    """Enrichment of the leading `axes_read` routing and output axes, and what it shows (`SvdEvidence`).

    A routing axis whose gene loading projects less than `output_overlap` onto the span of ΔY's leading gene loadings
    carries something the output axes do not. With responses_are_genes False (embedding space) the gene-loading
    tables are empty, so no axis reads as a pathway.
    """
    n_axes = min(axes_read, svd.kd_scores.shape[1], output_scores.shape[1])
    tables = {source: axis_enrichment(source, scores, loadings, kd_names, gene_names, libraries,
                                      prerank_permutations, seed, n_axes, responses_are_genes)
              for source, scores, loadings in (("routing", svd.kd_scores, svd.gene_loadings),
                                               ("output", output_scores, output_loadings))}
    overlap, principal_cosine = subspace_overlap(svd.gene_loadings[:n_axes], output_loadings[:n_axes])

    def readings(table: pd.DataFrame, overlaps) -> tuple:
        out = []
        for a in range(1, n_axes + 1):
            side = {kind: table[(table["axis"] == a) & (table["kind"] == kind)] for kind in ("genes", "KDs")}
            label, gene, kd = matched_pathway(side["genes"], side["KDs"], libraries, fdr)
            value = (lambda row, col: float(row[col]) if row is not None else float("nan"))
            out.append(AxisReading(a, label, value(gene, "fdr"), value(gene, "nes"), value(kd, "fdr"),
                                           value(kd, "nes"), float(overlaps[a - 1])))
        return tuple(out)

    axis1 = tables["routing"][tables["routing"]["axis"] == 1]
    best = {kind: axis1[axis1["kind"] == kind].head(1) for kind in ("genes", "KDs")}  # tables are sorted by FDR
    first = (lambda frame, col, default: frame[col].iloc[0] if len(frame) else default)
    evidence = SvdEvidence(
        fdr=fdr, overlap_threshold=output_overlap, n_axes=n_axes,
        seed_gene_term=str(first(best["genes"], "term", "")), seed_gene_fdr=float(first(best["genes"], "fdr", 1.0)),
        seed_kd_term=str(first(best["KDs"], "term", "")), seed_kd_fdr=float(first(best["KDs"], "fdr", 1.0)),
        seed_kd_nes=float(first(best["KDs"], "nes", float("nan"))),
        axes=readings(tables["routing"], overlap), output_axes=readings(tables["output"], np.ones(n_axes)),
        min_principal_cosine=principal_cosine)
    return pd.concat(tables.values(), ignore_index=True), evidence

