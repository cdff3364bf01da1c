"""Routing split into the direction every KD shares and the KD-specific rest, exactly from the K × K Gram of the
Jacobians (`decompose`): the common share and C_jac^spec, the matrix the deciding tests read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results import Decomposition, ResponseShares
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


def common_loadings(gram: np.ndarray) -> np.ndarray:
    """J_k·ĝ [K] for the Jacobians whose Gram [K, K] this is and their own common direction ĝ = Σ_l u_l / ‖Σ_l u_l‖:
    (G·n⁻¹)_k / √S (n: the Jacobian norms, S = ‖Σ_l u_l‖² = n⁻¹ᵀ G n⁻¹). No pass over the Jacobians."""
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    loading = gram @ inverse  # ⟨J_k, Σ_l u_l⟩
    total = float(inverse @ loading)
    return loading / np.sqrt(total) if total > 0 else np.zeros_like(loading)


def explained(delta_y: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """[K] the share of each ΔY_k [K, G] a prediction [K, G] explains: 1 − ‖ΔY_k − prediction_k‖² / ‖ΔY_k‖²."""
    return 1 - ((delta_y - prediction) ** 2).sum(axis=1) / np.maximum((delta_y**2).sum(axis=1), 1e-300)


def response_shares(along: np.ndarray, common_direction: np.ndarray, delta_p: np.ndarray, produced: np.ndarray,
                    delta_y: np.ndarray, labels: np.ndarray, path_points: int = 0, n_bootstrap: int = 0,
                    seed: int = 0, first_order: np.ndarray | None = None) -> tuple[ResponseShares, pd.DataFrame]:
    """What produces each KD's response: the common routing or the KD-specific routing.

    ΔY_k ≈ y_k = J_k·Δp_k (Δp_k = p_k − p_ctrl; to first order with the local J_k, exactly with the path-averaged
    Jacobian ∫₀¹ J(p_ctrl + tΔp_k) dt). J_k splits as `decompose` splits its unit-norm form, J_k = (J_k·ĝ) ĝ + J_k^⊥,
    so y_k = c_k + s_k with c_k = (J_k·ĝ) ĝ·Δp_k, what the direction every KD shares produces, and s_k = J_k^⊥·Δp_k,
    what the KD-specific routing produces. The shares are norms against ‖y_k‖: ‖c_k‖ / ‖y_k‖ and ‖s_k‖ / ‖y_k‖ (they
    need not sum to 1: c_k and s_k are not orthogonal in gene space; both are quoted). A Jacobian-energy share cannot
    say this: a common direction orthogonal to every Δp_k carries most of the energy and produces none of the
    response.

    along [K]: J_k·ĝ (`common_loadings` for the local Jacobians); common_direction ĝ [G, H] (`gram.jacobian_svd`);
    delta_p [K, H]; produced [K, G] the y_k; delta_y [K, G]; labels [K] output clusters (0: weak effect);
    path_points: the Q of the path-averaged Jacobians behind `along` and `produced` (0: the local ones);
    n_bootstrap, seed: the cluster bootstrap of the KD-specific median's 95 % interval (0: none). Returns
    the summary over the strong-effect KDs (medians) and the per-KD frame (kd index order): cluster, explained (the
    share of ΔY_k the local first order `first_order` [K, G] explains, `explained`; None: `produced`),
    split_explained (the share y_k explains), common_share, specific_share. Where y_k explains little of ΔY_k (a
    sharply gated response's local Jacobian) the shares describe y_k, not ΔY_k; the summary carries the median so
    the call can tell.
    """
    first_order = produced if first_order is None else first_order
    common = along[:, None] * (delta_p @ common_direction.T)  # [K, G] c_k
    specific = produced - common
    size = np.linalg.norm(produced, axis=1)
    safe = np.where(size > 0, size, 1.0)
    common_share = np.where(size > 0, np.linalg.norm(common, axis=1) / safe, np.nan)
    specific_share = np.where(size > 0, np.linalg.norm(specific, axis=1) / safe, np.nan)
    frame = pd.DataFrame({"cluster": labels, "explained": explained(delta_y, first_order),
                          "split_explained": explained(delta_y, produced), "common_share": common_share,
                          "specific_share": specific_share})
    strong = frame[frame["cluster"] > 0] if (labels > 0).any() else frame
    low, high = _median_interval(strong["specific_share"].to_numpy(), strong["cluster"].to_numpy(), n_bootstrap, seed)
    return ResponseShares(len(strong), float(strong["common_share"].median()),
                          float(strong["specific_share"].median()), float(strong["specific_share"].quantile(0.9)),
                          float(strong["split_explained"].median()), path_points, low, high, n_bootstrap), frame


def _median_interval(values: np.ndarray, clusters: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of the median of `values` [n] resampling whole clusters (`clusters` [n]: KDs of one
    output cluster share their routing, so they are not independent); NaN without resamples."""
    finite = np.isfinite(values)
    values, clusters = values[finite], clusters[finite]
    if n_bootstrap < 1 or len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng([seed, 31])
    groups = [values[clusters == c] for c in np.unique(clusters)]
    medians = [np.median(np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))]))
               for _ in range(n_bootstrap)]
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))
