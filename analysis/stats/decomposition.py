"""Routing split into the direction every KD shares and the KD-specific rest, exactly from the K × K Gram of the
Jacobians (`decompose`): the common share and C_jac^spec, the matrix the deciding tests read.
"""

from __future__ import annotations

import numpy as np

from ..results import Decomposition
from .gram import cosine_from_gram, cosines_in_place
from .pairs import offdiagonal_moments, row_blocks


def decompose(gram: np.ndarray) -> tuple[Decomposition, np.ndarray]:
    """Routing split into the direction every KD shares and the KD-specific rest, exactly from the K × K Gram.

    On unit-norm Jacobians u_k = J_k / ‖J_k‖ (a KD's gain is not its routing) with mean ū and common direction
    ĝ = ū / ‖ū‖: each u_k = (u_k·ĝ) ĝ + u_k^⊥. common_share = Σ_k (u_k·ĝ)² / K, the share of Σ_k ‖u_k‖² = K along ĝ
    (≥ ‖ū‖² = mean of C_jac); specific_share = 1 − common_share = Σ_k ‖u_k^⊥‖² / K. C_jac^spec = cos(u_k^⊥, u_l^⊥),
    from the projected Gram C − (C1)(C1)ᵀ / 1ᵀC1. No pass over the shards.

    Projection rather than centring (H·C·H, cos(u_k − ū, u_l − ū)): centring keeps each KD's loading on ĝ minus the
    mean loading, and that loading follows the noise's size — when routing is identical up to noise whose level is
    shared within output modules, the centred matrix clusters by module (cluster circuits in 5 of 20 replicates of
    `calibration`'s "identical-noise-modules" world); the projected one does not. Returns (Decomposition, C_jac^spec
    [K, K] float64). Memory: C_jac^spec is the one K × K array it allocates; every step after the cosines runs in
    place, row block by row block.
    """
    c = cosine_from_gram(gram)
    n_kds = len(c)
    loading = c.sum(axis=1)  # K ⟨u_k, ū⟩
    total = float(loading.sum())  # K² ‖ū‖²
    common = 0.0
    if total > 0:
        common = float(np.clip((loading**2).sum() / total / n_kds, 0.0, 1.0))
        for rows in row_blocks(n_kds, n_kds):
            c[rows] -= np.outer(loading[rows], loading) / total
    spec = cosines_in_place(_double_centre_offdiagonal(c))
    mean, sd = offdiagonal_moments(spec)
    return Decomposition(common, 1.0 - common, mean, sd), spec


def _double_centre_offdiagonal(gram: np.ndarray) -> np.ndarray:
    """The off-diagonal entries less their row and column means (plus the grand mean), in place; the diagonal kept.

    The common direction is estimated from the KDs themselves, so each u_k^⊥ carries −(its own part of the mean)
    and every off-diagonal product a term −(b_k + b_l) with b_k ∝ ‖u_k^⊥‖² / K: additive in k and l, and it
    follows the modules whenever the size of the KD-specific part does. Double-centring the off-diagonal removes any
    such additive term exactly and leaves block (cluster) structure; the diagonal keeps each KD's own energy.
    """
    n = len(gram)
    if n < 3:
        return gram
    diagonal = np.diag(gram).copy()
    np.fill_diagonal(gram, 0.0)
    rows_mean = gram.sum(axis=1) / (n - 1)
    grand = rows_mean.sum() / n
    # least-squares additive fit a + b_k + b_l to the off-diagonal: b_k = (n−1)/(n−2)·(row_k − grand)
    b = (n - 1) / (n - 2) * (rows_mean - grand)
    for rows in row_blocks(n, n):
        block = gram[rows]
        block -= b[rows, None]
        block -= b[None, :]
        block -= grand
    np.fill_diagonal(gram, diagonal)
    return gram
