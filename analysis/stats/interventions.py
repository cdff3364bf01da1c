"""Is the encoder geometry used? Interventions on pert_repr, scored from the responses the model gave to them (the
model side computes those: `model.interventions`; here only numbers).

Correlations between similarity matrices can only say that two geometries agree: a per-KD lookup whose gate reads
each KD's own embedding gives C_jac = C_out ⊙ C_rep and passes every routing criterion. The model is in our hands,
so the question is asked of it directly (the interchange interventions of causal abstraction, as pyvene's
`IntervenableModel` or activation patching do for language models).

**Centroid substitution** (decides). For KD k of an output cluster with n ≥ `MIN_CLUSTER` KDs, c₋ₖ is the mean
pert_repr of the cluster's *other* n − 1 KDs (leave-one-out, so k's own KD-specific part is not in it): it keeps what
the cluster's embeddings share and averages away what is KD-specific. If the shared part carries the response, the
model's ΔY(c₋ₖ) reproduces ΔY_k; if the response is read from KD-specific components (a lookup, Model A), it
collapses. Direction and size are scored apart (a KD far from its cluster's mean strength gets the size wrong and the
direction right): cos(ΔY(c₋ₖ), ΔY_k) (0 when the model gives no response at all), the size ratio
‖ΔY(c₋ₖ)‖/‖ΔY_k‖, and both together as the share reproduced, 1 − ‖ΔY(c₋ₖ) − ΔY_k‖²/‖ΔY_k‖².
The reference is the same substitution by centroids of *random* groups of n − 1 KDs drawn from the other
substituted KDs, `random_groups` per KD (for KD k, the group a cluster-label permutation would give it). The
deciding quantity is the gain
d_k = cos(cluster centroid) − mean cos(random centroids): how much better the cluster's shared part reproduces the
response than an arbitrary group's average does (a response common to all KDs, which any centroid reproduces, is
not cluster geometry).

Inference: KDs of one cluster share centroid members, so their d's are dependent; the clusters are the units.
One-sided sign-flip p of the cluster sums of d (exact up to 2^16 patterns; with C clusters the smallest p is 2^−C,
so fewer than 5 clusters can never reach α = 0.05), and a one-sided 95 % upper bound from the delete-one-cluster
jackknife SE with t on C − 1 degrees of freedom.

Clusters of one or two KDs are not substituted: with one there is no centroid; with two the leave-one-out centroid
is the other KD's own embedding, so substitution would only repeat that the two respond alike. The weak-effect
group 0 is not an output cluster and is not substituted.

**Interchange** (reported). Π projects onto the span of the substituted clusters' centroids (of p − p_ctrl). For KD
k of cluster a and a seeded other cluster b, the cluster-shared component is swapped and the KD-specific rest kept:
p' = p_ctrl + (I − Π)(p_k − p_ctrl) + Π(c̄_b − p_ctrl). The intervention succeeds when ΔY(p') is closer (cosine) to
cluster b's mean response than to cluster a's (interchange accuracy). Its null makes the same swap along a random
subspace of the same rank (Π_rand, seeded): a model that moves towards b with any change of p passes that too. The
paired per-KD difference of successes is tested as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ..results import ClusterInference, InterchangeTest, SubstitutionTest
from .consistency import sign_flip_p

MIN_CLUSTER = 3  # KDs a cluster needs to be substituted (see the module docstring)


@dataclass(frozen=True)
class SubstitutionPlan:
    """Which pert_repr centroids the model is asked about.

    kds [n]: indices (into the run's KDs) of the substituted KDs; clusters [n]: their output clusters; groups: for
    each substituted KD, 1 + random_groups member-index arrays — its cluster's other KDs first, then random groups of
    the same size from the other substituted KDs. Points, in `centroids`' order: KD by KD, its leave-one-out
    centroid, then its random groups' centroids.
    """

    kds: np.ndarray
    clusters: np.ndarray
    groups: tuple
    random_groups: int

    @property
    def n_points(self) -> int:
        return len(self.kds) * (1 + self.random_groups)


def substitution_plan(labels: np.ndarray, random_groups: int, seed: int) -> SubstitutionPlan:
    """The substitution design for output clusters `labels` [K] (0: weak-effect group, not substituted)."""
    labels = np.asarray(labels)
    names, sizes = np.unique(labels, return_counts=True)
    eligible = [c for c, n in zip(names, sizes) if c != 0 and n >= MIN_CLUSTER]
    kds = np.flatnonzero(np.isin(labels, eligible))
    rng = np.random.default_rng([seed, 17])
    groups = []
    for k in kds:
        mates = kds[(labels[kds] == labels[k]) & (kds != k)]
        others = kds[kds != k]
        groups.append((mates,) + tuple(np.sort(rng.choice(others, size=len(mates), replace=False))
                                       for _ in range(random_groups)))
    return SubstitutionPlan(kds, labels[kds], tuple(groups), random_groups)


def centroids(pert_repr: np.ndarray, plan: SubstitutionPlan) -> np.ndarray:
    """The substituted pert_repr [n_points, H] in the plan's order."""
    points = [pert_repr[group].mean(axis=0) for kd_groups in plan.groups for group in kd_groups]
    return np.stack(points) if points else np.zeros((0, pert_repr.shape[1]))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cos(a_i, b_i) [n]; 0 where either row is zero (no response reproduces nothing)."""
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(norms > 0, (a * b).sum(axis=-1) / np.maximum(norms, 1e-300), 0.0)


def _share(response: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1 − ‖response − target‖² / ‖target‖², row-wise (1: reproduced; 0: nothing; below 0: worse than nothing)."""
    return 1.0 - ((response - target) ** 2).sum(axis=-1) / np.maximum((target**2).sum(axis=-1), 1e-300)


def cluster_inference(values: np.ndarray, clusters: np.ndarray, n_permutations: int, seed: int) -> ClusterInference:
    """Mean of `values` [n] over KDs with clusters [n] as the units: one-sided (values > 0) sign-flip p of the cluster
    sums and a delete-one-cluster jackknife SE (bounds: t on C − 1 df)."""
    names, index = np.unique(clusters, return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(names))
    sizes = np.bincount(index, minlength=len(names)).astype(np.float64)
    estimate = float(values.mean())
    n_units = len(names)
    if n_units < 2:
        return ClusterInference(estimate, float("nan"), float("nan"), float("nan"), float("nan"), 0, True, n_units)
    p, n_patterns, exact = sign_flip_p(sums, n_permutations, seed, one_sided=True)
    leave_out = (sums.sum() - sums) / (sizes.sum() - sizes)  # the mean without each cluster
    se = float(np.sqrt((n_units - 1) / n_units * ((leave_out - leave_out.mean()) ** 2).sum()))
    t = float(scipy_stats.t.ppf(0.95, n_units - 1))
    return ClusterInference(estimate, se, estimate - t * se, estimate + t * se, p, n_patterns, exact, n_units)


def substitution_test(delta_y: np.ndarray, responses: np.ndarray, plan: SubstitutionPlan, kd_names,
                      n_permutations: int, seed: int) -> tuple[SubstitutionTest, pd.DataFrame]:
    """Score the model's responses [n_points, G] to the plan's centroids against ΔY [K, G].

    Returns the test and the per-KD table (kd, cluster, cosine, share, size_ratio, random_cosine, random_share, gain).
    """
    n, groups = len(plan.kds), plan.random_groups
    if n == 0 or len(np.unique(plan.clusters)) < 2:
        nan = float("nan")
        undecided = ClusterInference(nan, nan, nan, nan, nan, 0, True, 0)
        return SubstitutionTest(n, groups, *([nan] * 6), undecided), _table(kd_names, plan)
    target = delta_y[plan.kds]  # [n, G]
    answers = responses.reshape(n, 1 + groups, -1)
    own, random = answers[:, 0], answers[:, 1:]
    cosine, share = _cosines(own, target), _share(own, target)  # [n]
    random_cosine = _cosines(random, target[:, None]).mean(axis=1)
    random_share = _share(random, target[:, None]).mean(axis=1)
    size = np.linalg.norm(own, axis=-1) / np.maximum(np.linalg.norm(target, axis=-1), 1e-300)
    gain = cosine - random_cosine
    inference = cluster_inference(gain, plan.clusters, n_permutations, seed)
    table = _table(kd_names, plan, cosine=cosine, share=share, size_ratio=size, random_cosine=random_cosine,
                   random_share=random_share, gain=gain)
    test = SubstitutionTest(n, groups, float(cosine.mean()), float(random_cosine.mean()), float(share.mean()),
                            float(random_share.mean()), float(np.median(size)),
                            float((np.linalg.norm(own, axis=-1) == 0).mean()), inference)
    return test, table


def _table(kd_names, plan: SubstitutionPlan, **columns) -> pd.DataFrame:
    names = np.asarray(kd_names, dtype=object)[plan.kds] if len(plan.kds) else np.array([], dtype=object)
    return pd.DataFrame({"kd": names, "cluster": plan.clusters, **columns})


# ---------------------------------------------------------------- interchange
@dataclass(frozen=True)
class InterchangePlan:
    """Swapped pert_repr for the substituted KDs: kds [n], source clusters [n], target clusters [n]; rank: the
    dimension of the swapped span; points [2n, H]: the swap along the centroids' span for every KD, then along a
    random subspace of the same rank (the null)."""

    kds: np.ndarray
    clusters: np.ndarray
    targets: np.ndarray
    rank: int
    points: np.ndarray


def _projector(basis: np.ndarray) -> tuple[np.ndarray, int]:
    """Orthogonal projector [H, H] onto the row span of `basis` [r, H], and its rank."""
    u, s, vt = np.linalg.svd(basis, full_matrices=False)
    rank = int((s > s.max() * 1e-8).sum()) if s.size and s.max() > 0 else 0
    return vt[:rank].T @ vt[:rank], rank


def interchange_plan(pert_repr: np.ndarray, control_repr: np.ndarray, plan: SubstitutionPlan,
                     seed: int) -> InterchangePlan | None:
    """The interchange design over the substitution plan's KDs (None with fewer than 2 clusters)."""
    names = np.unique(plan.clusters)
    if len(names) < 2:
        return None
    rng = np.random.default_rng([seed, 23])
    offsets = pert_repr - control_repr  # [K, H]
    means = np.stack([offsets[plan.kds[plan.clusters == c]].mean(axis=0) for c in names])  # [C, H]
    shared, rank = _projector(means)
    random_basis = rng.normal(size=(rank, pert_repr.shape[1]))
    random_projector, _ = _projector(random_basis)
    targets = np.array([rng.choice(names[names != c]) for c in plan.clusters])
    target_means = means[np.searchsorted(names, targets)]
    points = []
    for projector in (shared, random_projector):
        own = offsets[plan.kds]
        points.append(control_repr + own - own @ projector + target_means @ projector)
    return InterchangePlan(plan.kds, plan.clusters, targets, rank, np.concatenate(points))


def interchange_test(delta_y: np.ndarray, responses: np.ndarray, plan: InterchangePlan, n_permutations: int,
                     seed: int) -> tuple[InterchangeTest, pd.DataFrame]:
    """Score the responses [2n, G] to the interchange plan: success when ΔY(p') is closer to the target cluster's
    mean response than to the source cluster's. Returns the test and the per-KD table (kd index, target,
    interchange_success, interchange_null_success)."""
    n = len(plan.kds)
    names = np.unique(plan.clusters)
    cluster_means = np.stack([delta_y[plan.kds[plan.clusters == c]].mean(axis=0) for c in names])
    source = cluster_means[np.searchsorted(names, plan.clusters)]
    target = cluster_means[np.searchsorted(names, plan.targets)]
    success = [(_cosines(r, target) > _cosines(r, source)).astype(float) for r in (responses[:n], responses[n:])]
    inference = cluster_inference(success[0] - success[1], plan.clusters, n_permutations, seed)
    test = InterchangeTest(n, plan.rank, float(success[0].mean()), float(success[1].mean()), inference)
    return test, pd.DataFrame({"target": plan.targets, "interchange_success": success[0].astype(bool),
                               "interchange_null_success": success[1].astype(bool)})


# ---------------------------------------------------------------- steering along the routing axes
# In units of the median ‖p_k − p_ctrl‖; small steps first, so a trust radius far below a KD's own offset shows.
STEPS = tuple(sign * size for size in (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0) for sign in (-1.0, 1.0))
TRUST_TOLERANCE = 0.1  # the first-order prediction holds while its relative error stays below this
STEERED_AXES = 3  # leading routing axes steered along


@dataclass(frozen=True)
class SteeringPlan:
    """Steps along the leading routing axes: for axis a, from the representation of KD kds[a] (its highest scorer)
    along directions[a] [H] (the axis's pert_repr factor, unit norm) by steps × scale; points [A·(1 + T), H]: for
    each axis the start, then its T steps."""

    kds: np.ndarray
    directions: np.ndarray
    steps: np.ndarray
    scale: float
    points: np.ndarray


def steering_plan(pert_repr: np.ndarray, control_repr: np.ndarray, kd_scores: np.ndarray,
                  input_directions: np.ndarray, labels: np.ndarray, n_axes: int = STEERED_AXES) -> SteeringPlan:
    """Where to steer from and how far: from the KD of an output cluster (any KD when none is clustered) scoring
    highest on the axis; scale = the median ‖p_k − p_ctrl‖ over KDs, so a step of 1 moves p as far as a typical KD
    lies from the control."""
    n_axes = min(n_axes, len(input_directions))
    clustered = np.asarray(labels) > 0
    scores = np.where(clustered[:, None], kd_scores[:, :n_axes], -np.inf) if clustered.any() else kd_scores[:, :n_axes]
    kds = np.argmax(scores, axis=0)
    scale = float(np.median(np.linalg.norm(pert_repr - control_repr, axis=1)))
    steps = np.asarray(STEPS)
    points = [np.concatenate([pert_repr[k][None], pert_repr[k] + np.outer(steps * scale, input_directions[a])])
              for a, k in enumerate(kds)]
    return SteeringPlan(kds, input_directions[:n_axes], steps, scale,
                        np.concatenate(points) if points else np.zeros((0, pert_repr.shape[1])))


def first_order_columns(shards, plan: SteeringPlan) -> np.ndarray:
    """J_k·v [A, G] for each steered axis (its KD's stored Jacobian times its direction), from the shards."""
    out = np.zeros((len(plan.kds), shards.shape[0]))
    for kd_index, jac in shards:
        for a, k in enumerate(plan.kds):
            hit = np.flatnonzero(kd_index == k)
            if hit.size:
                out[a] = jac[hit[0]].astype(np.float64) @ plan.directions[a]
    return out


def steering_table(responses: np.ndarray, columns: np.ndarray, plan: SteeringPlan, gene_loadings: np.ndarray,
                   kd_names) -> tuple[pd.DataFrame, tuple]:
    """Dose-response along each axis: the change of ΔY from the start, ΔY(p + t·s·v) − ΔY(p), against its first-order
    prediction t·s·J·v. Returns the table (axis, kd, step, distance, relative_error = ‖change − prediction‖ /
    ‖prediction‖, cos_first_order, cos_loading: cosine of the change with the axis's gene loading) and each axis's
    trust radius: the largest |step| up to which every step (both signs) keeps the relative error below
    TRUST_TOLERANCE (0 when the smallest does not). Along an axis that carries almost no routing energy the changes
    at small steps are at the float rounding of the outputs, and so is their relative error (and the radius)."""
    n_steps = len(plan.steps)
    rows, radii = [], []
    for a, k in enumerate(plan.kds):
        block = responses[a * (1 + n_steps):(a + 1) * (1 + n_steps)]
        change = block[1:] - block[0]  # [T, G]
        predicted = np.outer(plan.steps * plan.scale, columns[a])
        error = np.linalg.norm(change - predicted, axis=1) / np.maximum(np.linalg.norm(predicted, axis=1), 1e-300)
        cos_first = _cosines(change, predicted)
        cos_loading = _cosines(change, np.broadcast_to(gene_loadings[a], change.shape))
        for t, e, c, g in zip(plan.steps, error, cos_first, cos_loading):
            rows.append({"axis": a + 1, "kd": kd_names[k], "step": float(t), "distance": float(abs(t) * plan.scale),
                         "relative_error": float(e), "cos_first_order": float(c), "cos_loading": float(g)})
        held = 0.0
        for size in np.unique(np.abs(plan.steps)):
            if np.all(error[np.abs(plan.steps) <= size] < TRUST_TOLERANCE):
                held = float(size)
            else:
                break
        radii.append(held)
    return pd.DataFrame(rows), tuple(radii)
