"""Output similarity C_out and KD clusters.

Clusters: average-linkage hierarchical clustering on 1 − cosine of ΔY; the number of
clusters maximises the mean silhouette (on the same distance) over 2..max_clusters.
KDs whose effect is weak (‖ΔY_k‖ below `weak_fraction` × the median ‖ΔY‖) carry no
direction worth clustering: they form group 0, "weak or no effect", and are set aside first.
Stability: ARI between the clustering and re-clusterings of bootstrap resamples of the
output genes at the same number of clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.metrics.pairwise import cosine_similarity as _pairwise_cosine

from ..results import ClusterExistence

MAX_EXISTENCE_KDS = 1_000  # strong KDs the existence test reads at most (a seeded subsample beyond: K² silhouettes)


class TooFewStrongEffects(ValueError):
    """Fewer than 3 KDs with a strong effect: nothing to cluster (the pipeline names the config field to change)."""


@dataclass(frozen=True)
class Clusters:
    """labels [K]: 0 = weak/no effect, 1..n_clusters by decreasing size; silhouette per candidate k; bootstrap ARIs."""

    labels: np.ndarray
    n_clusters: int
    silhouette: pd.DataFrame
    bootstrap_ari: np.ndarray
    order: np.ndarray  # [K] leaf order of the dendrogram, for heatmaps

    @property
    def stability(self) -> float:
        return float(np.median(self.bootstrap_ari)) if len(self.bootstrap_ari) else float("nan")


def cosine_similarity(rows: np.ndarray) -> np.ndarray:
    """[K, D] -> [K, K] cosine similarity; an all-zero row has similarity 0 to everything (1 to itself)."""
    sim = np.clip(_pairwise_cosine(rows), -1.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim


def _tree(similarity: np.ndarray):
    distance = np.clip(1.0 - similarity, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    return linkage(squareform(distance, checks=False), method="average"), distance


def _cut(tree, k: int) -> np.ndarray:
    raw = fcluster(tree, t=k, criterion="maxclust")
    # Relabel 1..k by decreasing size so "cluster 1" is the largest in every run.
    sizes = pd.Series(raw).value_counts()
    rank = {old: new for new, old in enumerate(sorted(sizes.index, key=lambda c: (-sizes[c], c)), start=1)}
    return np.array([rank[c] for c in raw])


def cluster_kds(delta_y: np.ndarray, max_clusters: int, n_bootstrap: int, seed: int,
                weak_fraction: float = 0.25) -> Clusters:
    """Cluster KDs by the cosine of their ΔY [K, G]; weak-effect KDs go to group 0."""
    from scipy.cluster.hierarchy import leaves_list

    norms = np.linalg.norm(delta_y, axis=1)
    strong = norms >= weak_fraction * np.median(norms)
    if strong.sum() < 3:  # silhouette needs 2 clusters with at least one of them holding 2 KDs
        raise TooFewStrongEffects(f"only {int(strong.sum())} of {len(delta_y)} KDs have a strong effect "
                                  f"(‖ΔY‖ ≥ {weak_fraction} × median); at least 3 are needed to cluster")
    effects = delta_y[strong]
    tree, distance = _tree(cosine_similarity(effects))
    candidates = range(2, min(max_clusters, len(effects) - 1) + 1)
    silhouette = pd.DataFrame({"n_clusters": list(candidates), "silhouette": _silhouettes(tree, distance, candidates)})
    best = int(silhouette.loc[silhouette["silhouette"].idxmax(), "n_clusters"])
    strong_labels = _cut(tree, best)

    rng = np.random.default_rng(seed)
    aris = []
    for _ in range(n_bootstrap):
        genes = rng.integers(effects.shape[1], size=effects.shape[1])
        boot_tree, _ = _tree(cosine_similarity(effects[:, genes]))
        aris.append(adjusted_rand_score(strong_labels, _cut(boot_tree, best)))

    labels = np.zeros(len(delta_y), dtype=int)
    labels[strong] = strong_labels
    # Heatmap order: weak-effect KDs first, then the dendrogram's leaf order of the others.
    order = np.concatenate([np.flatnonzero(~strong), np.flatnonzero(strong)[leaves_list(tree)]])
    return Clusters(labels, best, silhouette, np.asarray(aris), order)


def _silhouettes(tree, distance: np.ndarray, candidates: range) -> list[float]:
    return [silhouette_score(distance, _cut(tree, k), metric="precomputed") for k in candidates]


def _best_silhouette(effects: np.ndarray, max_clusters: int) -> float:
    """The best mean silhouette over 2..max_clusters of `cluster_kds`' procedure on rows `effects` [n, G]."""
    tree, distance = _tree(cosine_similarity(effects))
    return float(max(_silhouettes(tree, distance, range(2, min(max_clusters, len(effects) - 1) + 1))))


def cluster_existence(delta_y: np.ndarray, clusters: Clusters, max_clusters: int, n_draws: int,
                      seed: int) -> ClusterExistence:
    """Do the strong KDs' outputs ΔY [K, G] cluster beyond what points without clusters give?

    The reference: `n_draws` draws of as many points from a Gaussian with the strong KDs' ΔY mean and covariance
    (exactly the sample covariance: μ + Z·S·Vᵀ/√(n − 1) from the SVD of the centred rows, Z iid N(0, 1)), clustered
    by the same procedure; its best silhouette against the observed one. Hierarchical clustering always returns
    clusters, and a smooth readout of unclustered embeddings gives outputs whose similarity is graded, not blocked —
    the best silhouette of such outputs is what this reference draws. Beyond MAX_EXISTENCE_KDS strong KDs both sides
    read a seeded subsample of that many (K² silhouettes). p = (1 + #{null ≥ observed}) / (1 + n_draws).
    """
    rng = np.random.default_rng([seed, 29])
    effects = delta_y[clusters.labels > 0]
    if len(effects) > MAX_EXISTENCE_KDS:
        effects = effects[np.sort(rng.choice(len(effects), MAX_EXISTENCE_KDS, replace=False))]
    observed = _best_silhouette(effects, max_clusters) if len(effects) >= 4 else float("nan")
    mean = effects.mean(axis=0)
    _, spread, basis = np.linalg.svd(effects - mean, full_matrices=False)
    scale = spread / np.sqrt(max(len(effects) - 1, 1))
    null = np.array([_best_silhouette(mean + (rng.normal(size=(len(effects), len(scale))) * scale) @ basis,
                                      max_clusters) for _ in range(n_draws)]) if observed == observed else np.array([])
    p = float((1 + np.sum(null >= observed)) / (1 + n_draws)) if len(null) else float("nan")
    return ClusterExistence(observed, float(np.median(null)) if len(null) else float("nan"),
                            float(np.quantile(null, 0.95)) if len(null) else float("nan"), p, n_draws, len(effects),
                            clusters.stability)


def cluster_table(kd_names, clusters: Clusters, reproducibility: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per KD: kd, cluster (and per-KD reproducibility when given)."""
    table = pd.DataFrame({"kd": list(kd_names), "cluster": clusters.labels})
    if reproducibility is not None:
        table = table.merge(reproducibility, on="kd")
    return table
