"""Statistics of KD pairs: the upper triangles of K × K similarity matrices, read in row blocks.

Every routing statistic is a function of sums over the K(K−1)/2 KD pairs. They read the K × K matrices in row blocks
of at most BLOCK_BYTES (float64 copies, diagonal zeroed), so besides their inputs a statistic holds a few blocks,
never another K × K array (permutations, below `normal_reference_kds` or near α, hold two zeroed copies and one
permuted copy at a time: `stats.mantel`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy.spatial.distance import squareform
from scipy.stats import rankdata

BLOCK_BYTES = 32 << 20
Reader = Callable[[slice], np.ndarray]


def row_blocks(n_rows: int, n_columns: int) -> Iterator[slice]:
    step = max(1, BLOCK_BYTES // (8 * max(n_columns, 1)))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def zero_diagonal(block: np.ndarray, rows: slice) -> np.ndarray:
    """`block` [rows, K'] of a symmetric matrix with its entries on the diagonal (k, k) set to 0, in place."""
    block[np.arange(block.shape[0]), np.arange(rows.start, rows.stop)] = 0.0
    return block


def block_reader(matrix: np.ndarray, index: np.ndarray | None = None) -> Reader:
    """Row blocks of `matrix` [K, K] (any float dtype), or of its sub-matrix on the KDs `index`, as float64 copies
    [rows, K'] with the diagonal zeroed."""
    def read(rows: slice) -> np.ndarray:
        block = matrix[rows] if index is None else matrix[np.ix_(index[rows], index)]
        return zero_diagonal(np.array(block, dtype=np.float64), rows)
    return read


def upper(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a symmetric [K, K] matrix, row by row [K(K−1)/2]."""
    return squareform(matrix, checks=False)


def upper_values(read: Reader, n: int) -> np.ndarray:
    """The upper triangle of a read matrix [n, n], row by row [n(n−1)/2] (as `upper`), block by block."""
    parts = [read(rows)[np.arange(rows.start, rows.stop)[:, None] < np.arange(n)] for rows in row_blocks(n, n)]
    return np.concatenate(parts) if parts else np.zeros(0)


def offdiagonal_moments(matrix: np.ndarray) -> tuple[float, float]:
    """Mean and SD (population) of the off-diagonal entries of a symmetric [K, K] matrix, in two passes."""
    n = len(matrix)
    if n < 2:
        return float("nan"), float("nan")
    read = block_reader(matrix)
    mean = sum(read(rows).sum() for rows in row_blocks(n, n)) / (n * (n - 1))
    squares = sum((zero_diagonal(read(rows) - mean, rows) ** 2).sum() for rows in row_blocks(n, n))
    return float(mean), float(np.sqrt(squares / (n * (n - 1))))


def rank_matrix(matrix: np.ndarray) -> np.ndarray:
    """Off-diagonal entries replaced by their ranks (for Spearman Mantel); the diagonal 0."""
    return squareform(rankdata(upper(matrix)))


def jackknife_se(leave_one_out: np.ndarray) -> np.ndarray:
    """Delete-one jackknife SE from leave-one-out values [..., K] (NaN entries ignored)."""
    finite = np.isfinite(leave_one_out)
    n = finite.sum(axis=-1)
    mean = np.where(finite, leave_one_out, 0.0).sum(axis=-1, keepdims=True) / np.maximum(n, 1)[..., None]
    centred = np.where(finite, leave_one_out - mean, 0.0)
    se = np.sqrt((n - 1) / np.maximum(n, 1) * (centred**2).sum(axis=-1))
    return np.where(n >= 2, se, np.nan)


def pearson_from_sums(n, sx, sy, sxx, syy, sxy):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (n * sxy - sx * sy) / np.sqrt((n * sxx - sx**2) * (n * syy - sy**2))


def pair_sums(x: Reader, y: Reader, n: int) -> tuple[np.ndarray, ...]:
    """Off-diagonal row sums (rx, rxx, ry, ryy, rxy) [n] each of x, x², y, y², x·y, in one blocked pass."""
    sums = np.zeros((5, n))
    for rows in row_blocks(n, n):
        bx, by = x(rows), y(rows)
        sums[:, rows] = bx.sum(1), (bx * bx).sum(1), by.sum(1), (by * by).sum(1), (bx * by).sum(1)
    return tuple(sums)


def pearson_and_leave_one_out(rx, rxx, ry, ryy, rxy):
    """r of two upper triangles and its K leave-one-KD-out values, from off-diagonal row sums [..., K].

    Dropping KD k removes the K − 1 pairs it belongs to, i.e. its row sums: every leave-one-out r is O(1).
    """
    n_kds = rx.shape[-1]
    n = n_kds * (n_kds - 1) / 2
    totals = [r.sum(axis=-1, keepdims=True) / 2 for r in (rx, ry, rxx, ryy, rxy)]
    r = pearson_from_sums(n, *(t[..., 0] for t in totals))
    loo = pearson_from_sums(n - (n_kds - 1), *(t - row for t, row in zip(totals, (rx, ry, rxx, ryy, rxy))))
    return r, loo


def blocked_pearson(x: Reader, y: Reader, n: int) -> float:
    """Pearson r of the upper triangles of two read matrices [n, n]."""
    rx, rxx, ry, ryy, rxy = pair_sums(x, y, n)
    return float(pearson_from_sums(n * (n - 1) / 2, rx.sum() / 2, ry.sum() / 2, rxx.sum() / 2, ryy.sum() / 2,
                                   rxy.sum() / 2))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of the upper triangles of two [K, K] matrices (blocked: no copy of either)."""
    return blocked_pearson(block_reader(a), block_reader(b), len(a))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rank_matrix(a), rank_matrix(b))
