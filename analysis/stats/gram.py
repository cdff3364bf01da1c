"""The Gram matrix of the stacked Jacobians, streamed from their shards, its cosines C_jac, and their SVD.

One K × K float64 Gram whatever the Jacobians' size: shards are read in row blocks (`stream_gram`), and the SVD's
right vectors come from one more streamed pass (`jacobian_svd`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .pairs import row_blocks


class JacobianShards(Protocol):
    """What the statistics read of stored Jacobians (`store.shards.JacobianShards` is the store's reader): K KDs of
    shape (G, H), in shards of `sizes` KDs."""

    n_kds: int
    shape: tuple

    @property
    def sizes(self) -> list[int]: ...

    def rows(self, shard_numbers: range) -> tuple[np.ndarray, np.ndarray]: ...

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


def stream_gram(shards: JacobianShards, memory_bytes: int = 2 << 30, other: JacobianShards | None = None) -> np.ndarray:
    """Gram matrix [K, K] of the flattened Jacobians, Σ_gh J_k[g,h] J_l[g,h], in float64; with `other` (another
    run's shards, e.g. another cell line's) the cross Gram [K, K_other] of Σ_gh J_k[g,h] J'_l[g,h].

    Shards are read in row blocks that fit `memory_bytes / 2`; each block is multiplied with every shard from
    itself on (every shard of `other`). Memory: one row block + one shard + K² doubles, whatever K is.
    """
    gram = np.zeros((shards.n_kds, (other or shards).n_kds))
    sizes = shards.sizes
    n_shards = len(sizes)
    row_bytes = int(np.prod(shards.shape)) * 4
    per_block = max(1, (memory_bytes // 2) // max(row_bytes, 1))
    start = 0
    while start < n_shards:
        stop, rows = start, 0
        while stop < n_shards and (rows + sizes[stop] <= per_block or stop == start):
            rows += sizes[stop]
            stop += 1
        block_index, block = shards.rows(range(start, stop))
        columns_from = other or shards
        for shard in (range(start, n_shards) if other is None else range(len(other.sizes))):
            other_index, columns = columns_from.rows(range(shard, shard + 1))
            product = block @ columns.T
            gram[np.ix_(block_index, other_index)] = product
            if other is None:
                gram[np.ix_(other_index, block_index)] = product.T
        start = stop
    return gram


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """Cosines [K, K] float64 from a Gram matrix (a new array; the Gram is not changed)."""
    return cosines_in_place(np.array(gram, dtype=np.float64))


def cosines_in_place(gram: np.ndarray) -> np.ndarray:
    """A float64 Gram [K, K] turned into its cosines in place, row block by row block: g_kl / √(g_kk g_ll), clipped
    to [−1, 1], diagonal 1 (a zero row stays 0 off the diagonal)."""
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    safe = np.where(norms > 0, norms, 1.0)
    for rows in row_blocks(len(gram), len(gram)):
        gram[rows] /= np.outer(safe[rows], safe)
    np.clip(gram, -1, 1, out=gram)
    np.fill_diagonal(gram, 1.0)
    return gram


@dataclass(frozen=True)
class JacobianSVD:
    """The unit-norm Jacobians u_k = J_k / ‖J_k‖_F [K, G·H] split as `decomposition` splits them: the direction
    every KD shares, ĝ, and the SVD of the KD-specific rest u_k^⊥ = u_k − (u_k·ĝ)ĝ — the routing axes.

    Unit norm because an uncentred SVD of raw Jacobians lets the KDs with the largest Jacobian norms define the
    first axis by size alone; on unit-norm rows an axis is a shared routing *direction*. The SVD of the raw u_k
    would spend its first axis on ĝ (every KD scores high on it: it is what all KDs share, not how they differ),
    so the axes are of u_k^⊥ and ĝ is reported as the common component.
    singular_values [A]; variance_explained [A] (share of the KD-specific energy Σ_k ‖u_k^⊥‖², the trace of its
    Gram); kd_scores [K, A] = U·s; axes [A, G, H] right singular vectors; gene_loadings [A, G] (leading gene factor of
    each axis, signed so that genes going up in high-scoring KDs load positively); input_directions [A, H] (the
    matching pert_repr factor, unit norm: moving p along it moves the output along the gene loading, to first
    order). common_direction [G, H]: ĝ (unit Frobenius norm; zeros when the u_k cancel); common_gene_loading [G] and
    common_input_direction [H]: its leading factors (signed so that genes going up in the mean response load
    positively).
    """

    singular_values: np.ndarray
    variance_explained: np.ndarray
    kd_scores: np.ndarray
    axes: np.ndarray
    gene_loadings: np.ndarray
    input_directions: np.ndarray
    common_direction: np.ndarray
    common_gene_loading: np.ndarray
    common_input_direction: np.ndarray


def jacobian_svd(gram: np.ndarray, shards: JacobianShards, delta_y: np.ndarray, n_axes: int) -> JacobianSVD:
    """ĝ and the SVD of the u_k^⊥ from the Gram [K, K] and one streamed pass over the shards.

    With C the cosines of the Gram and S = 1ᵀC1: ĝ = Σ_l u_l / √S, u_k·ĝ = (C1)_k / √S, so the Gram of the u_k^⊥ is
    P = C − (C1)(C1)ᵀ / S. Left vectors U from P's leading `n_axes` eigenpairs (Lanczos when they are few, so
    K = 10⁴ KDs avoids a K³ decomposition); right vectors V_a = Σ_k u_k^⊥ U[k,a] / s_a = Σ_l u_l (U[l,a] − β_a) / s_a
    with β_a = (C1)·U_a / S, accumulated in the same pass as Σ_l u_l. Shares of variance against the trace of P.
    delta_y [K, G] signs the loadings.
    """
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    norms = np.where(norms > 0, norms, 1.0)
    unit_gram = gram / np.outer(norms, norms)
    loading = unit_gram.sum(axis=1)  # (C1)_k
    total = float(loading.sum())  # S = ‖Σ_l u_l‖²
    specific_gram = unit_gram - np.outer(loading, loading) / total if total > 0 else unit_gram
    n_kds = gram.shape[0]
    n_axes = int(min(n_axes, n_kds))
    if 10 * n_axes < n_kds:
        eigenvalues, u = eigsh(specific_gram, k=n_axes, which="LA", v0=np.ones(n_kds))
        order = np.argsort(eigenvalues)
        eigenvalues, u = eigenvalues[order], u[:, order]
    else:
        eigenvalues, u = eigh(specific_gram, subset_by_index=[n_kds - n_axes, n_kds - 1])
    eigenvalues, u = np.clip(eigenvalues[::-1], 0, None), u[:, ::-1]
    s = np.sqrt(eigenvalues)
    n_axes = int(np.sum(s > max(s[0], 1e-300) * 1e-8))
    eigenvalues, s = eigenvalues[:n_axes], s[:n_axes]
    u = u[:, :n_axes] * np.sign(u[np.argmax(np.abs(u[:, :n_axes]), axis=0), np.arange(n_axes)])
    shift = loading @ u / total if total > 0 else np.zeros(n_axes)  # β_a
    weights = np.concatenate([np.ones((n_kds, 1)), (u - shift) / s], axis=1)  # [K, 1 + A]: Σ u_l, then the V_a
    sums = np.zeros((1 + n_axes,) + tuple(shards.shape))
    for kd_index, jac in shards:
        sums += np.einsum("ka,kgh->agh", weights[kd_index] / norms[kd_index, None], jac.astype(np.float64))
    common, axes = sums[0] / np.sqrt(total) if total > 0 else np.zeros_like(sums[0]), sums[1:]
    mean_response = delta_y.mean(axis=0)
    loadings = np.zeros((n_axes, shards.shape[0]))
    directions = np.zeros((n_axes, shards.shape[1]))
    for a in range(n_axes):
        loadings[a], directions[a] = _leading_factors(axes[a], u[:, a] @ delta_y)
    common_loading, common_input = _leading_factors(common, mean_response)
    return JacobianSVD(s, eigenvalues / max(float(np.trace(specific_gram)), 1e-300), u * s, axes, loadings, directions,
                       common, common_loading, common_input)


def _leading_factors(matrix: np.ndarray, response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The leading left [G] and right [H] singular vectors of `matrix` [G, H], signed so that the left one points
    with `response` [G] (genes going up in it load positively)."""
    left, _, right = np.linalg.svd(matrix, full_matrices=False)
    sign = -1.0 if left[:, 0] @ response < 0 else 1.0
    return sign * left[:, 0], sign * right[0]
