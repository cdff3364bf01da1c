"""Stage 4 — routing statistics: does Jacobian (routing) similarity track output similarity?

Matrices are K × K similarities between KDs; statistics use their upper triangles. Pairs
share KDs, so pair-level p-values are not valid: inference permutes KD labels (Mantel),
resamples KDs (bootstrap CI) or permutes cluster labels. The seed's pair-level rank-sum
test is computed too, and labelled anti-conservative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu, rankdata

from .jacobians import JacobianShards


# ---------------------------------------------------------------- streamed Gram and SVD
def stream_gram(shards: JacobianShards, memory_bytes: int = 2 << 30) -> np.ndarray:
    """Gram matrix [K, K] of the flattened Jacobians, Σ_gh J_k[g,h] J_l[g,h], in float64.

    Shards are read in row blocks that fit `memory_bytes / 2`; each block is multiplied with every shard from
    itself on. Memory: one row block + one shard + K² doubles, whatever K is.
    """
    n_kds = shards.n_kds
    gram = np.zeros((n_kds, n_kds))
    paths = list(shards.paths)
    sizes = [np.load(p, mmap_mode=None)["kd_index"].size for p in paths]
    row_bytes = int(np.prod(shards.shape)) * 4
    per_block = max(1, (memory_bytes // 2) // max(row_bytes, 1))
    start = 0
    while start < len(paths):
        block_paths, rows = [], 0
        while start + len(block_paths) < len(paths) and (rows + sizes[start + len(block_paths)] <= per_block or not block_paths):
            rows += sizes[start + len(block_paths)]
            block_paths.append(paths[start + len(block_paths)])
        block_index, block = _read(block_paths)
        for path in paths[start:]:
            other_index, other = _read([path])
            product = block @ other.T.astype(np.float64)
            gram[np.ix_(block_index, other_index)] = product
            gram[np.ix_(other_index, block_index)] = product.T
        start += len(block_paths)
    return gram


def _read(paths) -> tuple[np.ndarray, np.ndarray]:
    indices, rows = [], []
    for path in paths:
        with np.load(path) as shard:
            indices.append(shard["kd_index"])
            rows.append(shard["jacobian"].reshape(len(shard["kd_index"]), -1))
    return np.concatenate(indices), np.concatenate(rows).astype(np.float64)


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    safe = np.where(norms > 0, norms, 1.0)
    sim = np.clip(gram / np.outer(safe, safe), -1, 1)
    np.fill_diagonal(sim, 1.0)
    return sim


@dataclass(frozen=True)
class JacobianSVD:
    """SVD of the stacked Jacobians [K, G·H] through the Gram matrix (uncentred).

    singular_values [A]; variance_explained [A] (share of Σ‖J_k‖² = trace of the Gram); kd_scores [K, A] = U·s;
    axes [A, G, H] right singular vectors; gene_loadings [A, G] (leading gene factor of each axis, signed so
    that genes going up in high-scoring KDs load positively).
    """

    singular_values: np.ndarray
    variance_explained: np.ndarray
    kd_scores: np.ndarray
    axes: np.ndarray
    gene_loadings: np.ndarray


def jacobian_svd(gram: np.ndarray, shards: JacobianShards, delta_y: np.ndarray, n_axes: int) -> JacobianSVD:
    """Left vectors from the Gram eigendecomposition; right vectors V_a = Σ_k J_k U[k,a] / s_a in one streamed pass.

    Only the leading `n_axes` eigenpairs are computed (Lanczos when they are few, so K = 10⁴ KDs avoids a K³
    decomposition), and shares of variance are taken against the trace.
    """
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    n_kds = gram.shape[0]
    n_axes = int(min(n_axes, n_kds))
    if 10 * n_axes < n_kds:
        eigenvalues, u = eigsh(gram, k=n_axes, which="LA", v0=np.ones(n_kds))
        order = np.argsort(eigenvalues)
        eigenvalues, u = eigenvalues[order], u[:, order]
    else:
        eigenvalues, u = eigh(gram, subset_by_index=[n_kds - n_axes, n_kds - 1])
    eigenvalues, u = np.clip(eigenvalues[::-1], 0, None), u[:, ::-1]
    s = np.sqrt(eigenvalues)
    n_axes = int(np.sum(s > s[0] * 1e-8))
    eigenvalues, s = eigenvalues[:n_axes], s[:n_axes]
    u = u[:, :n_axes] * np.sign(u[np.argmax(np.abs(u[:, :n_axes]), axis=0), np.arange(n_axes)])
    axes = np.zeros((n_axes,) + tuple(shards.shape))
    for kd_index, jac in shards:
        axes += np.einsum("ka,kgh->agh", u[kd_index], jac.astype(np.float64))
    axes /= s[:, None, None]
    loadings = np.zeros((n_axes, shards.shape[0]))
    for a in range(n_axes):
        left, _, _ = np.linalg.svd(axes[a], full_matrices=False)
        gene = left[:, 0]
        if gene @ (u[:, a] @ delta_y) < 0:
            gene = -gene
        loadings[a] = gene
    return JacobianSVD(s, eigenvalues / max(np.trace(gram), 1e-300), u * s, axes, loadings)


# ---------------------------------------------------------------- pair statistics
def upper(matrix: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(matrix.shape[0], k=1)
    return matrix[i, j]


def _zscore(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    sd = np.sqrt((centred**2).mean())
    return centred / sd if sd > 0 else centred


def _standardised(matrix: np.ndarray) -> np.ndarray:
    """A symmetric matrix whose upper triangle is z-scored (diagonal 0), so a Pearson r is a mean of products."""
    i, j = np.triu_indices(matrix.shape[0], k=1)
    out = np.zeros_like(matrix, dtype=np.float64)
    z = _zscore(matrix[i, j].astype(np.float64))
    out[i, j] = z
    out[j, i] = z
    return out


def rank_matrix(matrix: np.ndarray) -> np.ndarray:
    """Off-diagonal entries replaced by their ranks (for Spearman Mantel)."""
    i, j = np.triu_indices(matrix.shape[0], k=1)
    out = np.zeros_like(matrix, dtype=np.float64)
    ranks = rankdata(matrix[i, j])
    out[i, j] = ranks
    out[j, i] = ranks
    return out


def _permuted_correlations(fixed_z: np.ndarray, moving_z: np.ndarray, n_permutations: int, seed: int,
                           batch: int = 64) -> np.ndarray:
    """r between the upper triangles of `fixed_z` and `moving_z` with KD labels of `moving_z` permuted."""
    n = fixed_z.shape[0]
    i, j = np.triu_indices(n, k=1)
    x = fixed_z[i, j]
    rng = np.random.default_rng(seed)
    out = np.empty(n_permutations)
    moving = moving_z.astype(np.float32)
    for start in range(0, n_permutations, batch):
        size = min(batch, n_permutations - start)
        perms = np.argsort(rng.random((size, n)), axis=1)
        y = moving[perms[:, i], perms[:, j]]  # [size, pairs]
        out[start:start + size] = y @ x.astype(np.float32) / len(x)
    return out


@dataclass(frozen=True)
class PermutationTest:
    statistic: float
    p_value: float
    n_permutations: int


def _p_greater(observed: float, null: np.ndarray) -> float:
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def mantel(a: np.ndarray, b: np.ndarray, n_permutations: int, seed: int, method: str = "pearson") -> PermutationTest:
    """One-sided Mantel test (r > 0) between two K × K similarity matrices; KD labels permuted."""
    if method == "spearman":
        a, b = rank_matrix(a), rank_matrix(b)
    az, bz = _standardised(a), _standardised(b)
    observed = float(upper(az) @ upper(bz) / len(upper(az)))
    null = _permuted_correlations(az, bz, n_permutations, seed)
    return PermutationTest(observed, _p_greater(observed, null), n_permutations)


def partial_mantel(a: np.ndarray, b: np.ndarray, given: np.ndarray, n_permutations: int, seed: int) -> PermutationTest:
    """Partial Mantel r(a, b | given), one-sided; KD labels of `a` permuted (Smouse et al. 1986)."""
    az, bz, cz = _standardised(a), _standardised(b), _standardised(given)
    n_pairs = len(upper(az))
    r_bc = float(upper(bz) @ upper(cz) / n_pairs)

    def partial(r_ab, r_ac):
        return (r_ab - r_ac * r_bc) / np.sqrt(np.clip((1 - r_ac**2) * (1 - r_bc**2), 1e-12, None))

    observed = float(partial(upper(az) @ upper(bz) / n_pairs, upper(az) @ upper(cz) / n_pairs))
    r_ab = _permuted_correlations(bz, az, n_permutations, seed)
    r_ac = _permuted_correlations(cz, az, n_permutations, seed)  # same seed: the same permutations of a
    return PermutationTest(observed, _p_greater(observed, partial(r_ab, r_ac)), n_permutations)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    x, y = _zscore(upper(a)), _zscore(upper(b))
    return float(x @ y / len(x))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rank_matrix(a), rank_matrix(b))


def kd_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the Pearson r of the upper triangles, resampling KDs (not pairs) with replacement.

    Pairs of a KD with a copy of itself are dropped.
    """
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    i, j = np.triu_indices(n, k=1)
    values = np.empty(n_bootstrap)
    for t in range(n_bootstrap):
        idx = rng.integers(n, size=n)
        keep = idx[i] != idx[j]
        x, y = a[idx[i[keep]], idx[j[keep]]], b[idx[i[keep]], idx[j[keep]]]
        values[t] = np.corrcoef(x, y)[0, 1]
    tail = (1 - level) / 2
    return float(np.nanquantile(values, tail)), float(np.nanquantile(values, 1 - tail))


# ---------------------------------------------------------------- same- vs cross-cluster routing
@dataclass(frozen=True)
class ClusterContrast:
    """Same- vs cross-cluster C_jac over KDs in clusters ≥ 1 (weak-effect group 0 excluded).

    difference: mean(same) − mean(cross); auc: P(same pair > cross pair) (rank-sum effect size);
    rank_sum_p: the seed's pair-level Mann–Whitney test (anti-conservative: pairs share KDs);
    permutation: cluster labels permuted over KDs, statistic = difference / its delete-one-KD jackknife SE.
    """

    n_same: int
    n_cross: int
    mean_same: float
    mean_cross: float
    difference: float
    auc: float
    rank_sum_p: float
    permutation: PermutationTest


def _contrast_and_jackknife_se(sim: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sim [n, n] (zero diagonal); onehot [B, n, C] cluster indicators of B labelings.

    Returns mean(same) − mean(cross) [B] and its delete-one-KD jackknife standard error [B]. Dropping KD k removes
    its row sum s_k over same-cluster partners and t_k − s_k over cross-cluster partners, so every leave-one-out
    value comes from row sums: O(B·n²·C), no loop over KDs.
    """
    n = sim.shape[0]
    same_rows = np.einsum("kl,blc,bkc->bk", sim, onehot, onehot)
    rows = sim.sum(axis=1)[None]
    sizes = onehot.sum(axis=1)
    own_size = np.einsum("bkc,bc->bk", onehot, sizes)
    same_sum, total = same_rows.sum(axis=1) / 2, sim.sum() / 2
    n_same, n_pairs = (sizes * (sizes - 1) / 2).sum(axis=1), n * (n - 1) / 2
    difference = same_sum / n_same - (total - same_sum) / (n_pairs - n_same)
    loo_same, loo_n_same = same_sum[:, None] - same_rows, n_same[:, None] - (own_size - 1)
    loo_cross, loo_n_cross = (total - rows) - loo_same, (n_pairs - (n - 1)) - loo_n_same
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = loo_same / loo_n_same - loo_cross / loo_n_cross
    loo = np.where(np.isfinite(loo), loo, np.nan)
    centred = loo - np.nanmean(loo, axis=1, keepdims=True)
    return difference, np.sqrt((n - 1) / n * np.nansum(centred**2, axis=1))


def cluster_contrast(similarity: np.ndarray, labels: np.ndarray, n_permutations: int, seed: int) -> ClusterContrast:
    """Do same-cluster KD pairs have higher `similarity` than cross-cluster pairs?

    The permutation test studentizes the difference: under a per-KD lookup (Model A) same-cluster C_jac has the
    same mean as cross-cluster C_jac but a larger spread, which breaks the exchangeability a raw-difference label
    permutation needs (it rejected ~20 % at α = 0.05 on the negative known answer); the studentized statistic
    is robust to that (Janssen 1997; Chung & Romano 2013) and keeps ~5 % (tests/test_calibration.py).
    """
    keep = labels > 0
    sim, lab = similarity[np.ix_(keep, keep)].astype(np.float64), labels[keep]
    i, j = np.triu_indices(len(lab), k=1)
    values = sim[i, j]
    same = lab[i] == lab[j]
    u = mannwhitneyu(values[same], values[~same], alternative="greater")
    auc = float(u.statistic / (same.sum() * (~same).sum()))

    np.fill_diagonal(sim, 0.0)
    clusters = np.unique(lab)

    def studentized(label_rows: np.ndarray) -> np.ndarray:
        difference, se = _contrast_and_jackknife_se(sim, (label_rows[:, :, None] == clusters).astype(np.float64))
        return difference / np.where(se > 0, se, np.inf)

    observed = float(studentized(lab[None])[0])
    rng = np.random.default_rng(seed)
    null = np.concatenate([studentized(np.stack([rng.permutation(lab) for _ in range(min(128, n_permutations - s))]))
                           for s in range(0, n_permutations, 128)])
    return ClusterContrast(int(same.sum()), int((~same).sum()), float(values[same].mean()), float(values[~same].mean()),
                           float(values[same].mean() - values[~same].mean()), auc, float(u.pvalue),
                           PermutationTest(observed, _p_greater(observed, null), n_permutations))


# ---------------------------------------------------------------- linearity
def linearity(delta_y: np.ndarray, linear_prediction: np.ndarray) -> pd.Series:
    """Per KD, the share of ΔY_k explained by J_k·(p_k − p_ctrl): 1 − ‖ΔY − J·Δp‖² / ‖ΔY‖²."""
    residual = ((delta_y - linear_prediction) ** 2).sum(axis=1)
    return pd.Series(1 - residual / np.maximum((delta_y**2).sum(axis=1), 1e-300))
