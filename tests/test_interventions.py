"""Interventions on pert_repr: the substitution and interchange statistics against hand-computed oracles, the planted
models' answers, and the model side against the effects stage's own forward passes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tiny import write_tiny_run

from analysis.config import default_decision_rule
from analysis.datasets import known_answers
from analysis.model.effects import draw_control_sets
from analysis.model.interventions import substituted_responses
from analysis.model.load import load_run
from analysis.pipeline.executors import LocalExecutor, WorkerState
from analysis.stats import interventions
from analysis.stats.clustering import cluster_kds
from analysis.stats.verdict import use_answer, use_criteria


def test_plan_substitutes_clusters_of_three_or_more_with_leave_one_out_centroids():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4])  # group 0 weak; cluster 2 has two KDs, 4 one
    plan = interventions.substitution_plan(labels, random_groups=5, seed=0)
    assert list(plan.kds) == [2, 3, 4, 7, 8, 9, 10]
    for k, (mates, *randoms) in zip(plan.kds, plan.groups):
        assert k not in mates and set(mates) == set(np.flatnonzero(labels == labels[k])) - {k}
        assert len(randoms) == 5
        for group in randoms:  # drawn from the other substituted KDs, without repeats, never the KD itself
            assert len(group) in (2, 3) and len(group) == len(set(group)) and k not in group
            assert set(labels[group]) <= {1, 3}
    for r in range(1, 6):  # each random group is one joint label permutation: KD + group is a permuted cluster
        blocks = {frozenset((k, *groups[r])) for k, groups in zip(plan.kds, plan.groups)}
        assert sorted(len(b) for b in blocks) == [3, 4] and set().union(*blocks) == set(plan.kds)
    pert_repr = np.random.default_rng(1).normal(size=(len(labels), 4))
    points = interventions.centroids(pert_repr, plan)
    assert points.shape == (plan.n_points, 4) and plan.n_points == 7 * 6
    assert np.allclose(points[0], pert_repr[[3, 4]].mean(axis=0))  # KD 2's centroid: KDs 3 and 4
    assert np.allclose(points[1], pert_repr[plan.groups[0][1]].mean(axis=0))


def _distance(pert_repr, plan, probe_ratio=0.5, moves=3, control=None):
    control = np.zeros(pert_repr.shape[1]) if control is None else control
    return interventions.distance_plan(pert_repr, control, plan, probe_ratio, moves, 0)


def test_distance_plan_moves_as_far_as_the_centroid_within_the_encoders_range():
    """ρ_k = ‖c₋ₖ − p_k‖/‖p_k − p_ctrl‖; KDs closer than probe_ratio are amplified along p_k − c₋ₖ to exactly that
    ratio; every matched move lies as far from the probe point as the centroid does, inside the offsets' span."""
    rng = np.random.default_rng(4)
    labels = np.repeat([1, 2, 3], 4)
    basis = np.linalg.qr(rng.normal(size=(10, 5)))[0].T  # the offsets span 5 of 10 dimensions
    control = rng.normal(size=10)
    pert_repr = control + (np.repeat(np.eye(5)[:3] * 3, 4, axis=0) + rng.normal(size=(12, 5)) * [0.2] * 5) @ basis
    plan = interventions.substitution_plan(labels, 2, 0)
    distance = _distance(pert_repr, plan, probe_ratio=0.5, moves=3, control=control)
    assert distance.points.shape == (12 * 4, 10)
    for i, (k, groups) in enumerate(zip(plan.kds, plan.groups)):
        centroid = pert_repr[groups[0]].mean(axis=0)
        rho = np.linalg.norm(centroid - pert_repr[k]) / np.linalg.norm(pert_repr[k] - control)
        assert distance.ratio[i] == pytest.approx(rho)
        lam = max(1.0, 0.5 / rho)
        assert distance.amplification[i] == pytest.approx(lam)
        probe, moves = distance.points[4 * i], distance.points[4 * i + 1:4 * i + 4]
        assert np.allclose(probe, centroid + lam * (pert_repr[k] - centroid))
        assert np.linalg.norm(probe - centroid) / np.linalg.norm(pert_repr[k] - control) == pytest.approx(max(rho, 0.5))
        assert np.allclose(np.linalg.norm(moves - probe, axis=1), np.linalg.norm(probe - centroid))
        off_span = (moves - probe) - (moves - probe) @ basis.T @ basis
        assert np.abs(off_span).max() < 1e-9
    assert (distance.amplification > 1).any() and (distance.amplification == 1).any()  # both cases are checked


def test_a_single_substitutable_cluster_is_not_decided():
    """One cluster cannot be compared across clusters: no p, and the use rows support neither answer."""
    labels = np.array([1, 1, 1, 1, 2, 2])
    plan = interventions.substitution_plan(labels, random_groups=3, seed=0)
    assert plan.n_points == 4 * 4
    distance = _distance(np.random.default_rng(0).normal(size=(6, 3)), plan)
    test, table = interventions.substitution_test(np.ones((6, 3)), np.ones((16, 3)), np.ones((16, 3)), plan,
                                                  distance, list("abcdef"), 99, 0)
    assert test.gain.n_clusters == 0 and np.isnan(test.gain.p_value) and len(table) == 4
    rows = use_criteria(test, None, default_decision_rule())
    assert [r.supports for r in rows] == ["neither", "neither"] and use_answer(rows) == "inconclusive"


def test_substitution_scores_against_a_hand_computed_oracle():
    """Two clusters of three KDs, responses chosen by hand: cosine, share, size ratio, random reference, gain, the
    permutation p, and the distance control's cosines and excess cost."""
    labels = np.array([1, 1, 1, 2, 2, 2])
    plan = interventions.substitution_plan(labels, random_groups=2, seed=3)
    rng = np.random.default_rng(0)
    delta_y = rng.normal(size=(6, 5))
    responses = rng.normal(size=(plan.n_points, 5))
    responses[3] = 0.0  # the model gives no response to KD 1's centroid: cosine 0, share 0
    distance = _distance(rng.normal(size=(6, 4)), plan, moves=2)
    probes = rng.normal(size=(6 * 3, 5))
    test, table = interventions.substitution_test(delta_y, responses, probes, plan, distance, list("abcdef"), 99, 0)

    def cos(a, b):
        return 0.0 if not a.any() else a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    own_cos, perm_cos = [], []
    for i, k in enumerate(plan.kds):
        y, r = delta_y[k], responses[3 * i]
        randoms = [cos(q, y) for q in responses[3 * i + 1: 3 * i + 3]]
        own_cos.append(cos(r, y))
        perm_cos.append(randoms)
        assert table.loc[i, "cosine"] == pytest.approx(cos(r, y))
        assert table.loc[i, "share"] == pytest.approx(1 - np.sum((r - y) ** 2) / np.sum(y**2))
        assert table.loc[i, "size_ratio"] == pytest.approx(np.linalg.norm(r) / np.linalg.norm(y))
        assert table.loc[i, "random_cosine"] == pytest.approx(np.mean(randoms))
        assert table.loc[i, "gain"] == pytest.approx(cos(r, y) - np.mean(randoms))
        target = probes[3 * i]
        matched = np.mean([cos(q, target) for q in probes[3 * i + 1:3 * i + 3]])
        assert table.loc[i, "probe_cosine"] == pytest.approx(cos(r, target))
        assert table.loc[i, "excess_cost"] == pytest.approx(matched - cos(r, target))
    assert table.loc[1, "cosine"] == 0 and table.loc[1, "share"] == 0
    assert test.gain.estimate == pytest.approx(table["gain"].mean()) and test.no_response == pytest.approx(1 / 6)
    assert test.share == pytest.approx(table["share"].median())  # the robust summary: the median
    permuted = np.array(perm_cos).mean(axis=0)  # T under each of the 2 permutations
    assert test.gain.p_value == pytest.approx((1 + np.sum(permuted >= np.mean(own_cos))) / 3)
    assert test.gain.p_floor == pytest.approx(1 / 3) and test.gain.p_reference == "label permutation"
    assert test.distance.excess.estimate == pytest.approx(table["excess_cost"].mean())
    assert test.distance.ratio_median == pytest.approx(np.median(distance.ratio))


def test_cluster_inference_against_enumeration_and_an_explicit_bootstrap():
    values = np.array([0.5, 0.1, -0.2, 0.4, 0.3, 0.6, -0.1, 0.2])
    clusters = np.array([1, 1, 2, 2, 3, 4, 4, 5])
    result = interventions.cluster_inference(values, clusters, 99, 500, 0)
    sums = np.array([values[clusters == c].sum() for c in range(1, 6)])
    sizes = np.array([np.sum(clusters == c) for c in range(1, 6)])
    patterns = [np.dot(signs, sums) for signs in itertools.product((1, -1), repeat=5)]
    assert result.exact and result.n_null == 32 and result.p_floor == 1 / 32
    assert result.p_value == pytest.approx(np.mean(np.array(patterns) >= sums.sum() - 1e-12))
    draws = np.random.default_rng(0).integers(5, size=(500, 5))
    means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    assert (result.lower, result.bound) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])))
    cluster_means = sums / sizes
    assert cluster_means.min() <= result.lower <= result.bound <= cluster_means.max()  # inside the range


def test_bounds_stay_in_the_statistics_range_with_two_clusters():
    """With 2 clusters the bootstrap has three outcomes: the upper bound is the larger cluster mean, never beyond (a
    jackknife-t bound over 2 clusters is ± t(0.95, 1 df) = 6.3 SE wide and leaves the range)."""
    values = np.array([0.9, 0.95, 0.85, 0.2, 0.3, 0.25])
    clusters = np.repeat([1, 2], 3)
    lower, upper = interventions.cluster_bounds(values, clusters, 1000, 0)
    assert (lower, upper) == pytest.approx((0.25, 0.9))


def test_all_zero_gains_give_p_one_and_a_zero_bound():
    """A lookup: nothing is reproduced by any centroid, every gain is 0 — no evidence of use, and use ruled out."""
    result = interventions.cluster_inference(np.zeros(9), np.repeat([1, 2, 3], 3), 99, 100, 0)
    assert result.p_value == 1.0 and result.bound == 0.0
    assert interventions.permutation_p(np.zeros(9), np.zeros((9, 19))) == 1.0


def _planted_use(kind: str, seed: int = 0) -> tuple:
    planted = known_answers.planted_model(kind, seed)
    delta_y = planted.delta_y()
    plan = interventions.substitution_plan(cluster_kds(delta_y, 8, 0, 0).labels, 39, seed)
    distance = _distance(planted.pert_repr, plan, moves=4)
    test, _ = interventions.substitution_test(delta_y, planted.respond(interventions.centroids(planted.pert_repr,
                                                                                              plan)),
                                              planted.respond(distance.points), plan, distance, planted.kd_names,
                                              1000, seed)
    swap = interventions.interchange_plan(planted.pert_repr, np.zeros(planted.pert_repr.shape[1]), plan, seed)
    interchange, _ = interventions.interchange_test(delta_y, planted.respond(swap.points), swap, 999, 1000, seed)
    return planted, test, interchange


@pytest.mark.parametrize("kind", known_answers.KINDS)
def test_planted_models_get_their_planted_use(kind):
    """Every known-answer model, through its planted p-space function: the use it was built to have, under the gain
    and its distance control together."""
    planted, test, interchange = _planted_use(kind)
    rows = use_criteria(test, interchange, default_decision_rule())
    d = test.distance
    print(f"{kind}: cos {test.cosine:.3f} vs random {test.random_cosine:.3f}, gain {test.gain.estimate:.3f} "
          f"[{test.gain.lower:.3f}, {test.gain.bound:.3f}] p {test.gain.p_value:.3g}; distance ratio "
          f"{d.ratio_median:.2f} ({d.ratio_low:.2f}–{d.ratio_high:.2f}), amplified {d.amplified:.0%}; centroid "
          f"{d.probe_cosine:.3f} vs matched move {d.matched_cosine:.3f}, excess {d.excess.estimate:.3f} "
          f"[{d.excess.lower:.3f}, {d.excess.bound:.3f}]; interchange {interchange.accuracy:.2f} vs "
          f"{interchange.null_accuracy:.2f}")
    assert use_answer(rows) == planted.expected_use
    if planted.expected_use == "used":  # the shared component also carries the response across clusters
        assert interchange.accuracy > 0.9 and interchange.gain.p_value < 0.05
        assert d.excess.bound < 0.1  # dropping the KD-specific part costs no more than a random move of its size
    else:  # a lookup collapses: no response at all to the cluster's centroid, while a same-size random move keeps it
        assert test.no_response == 1.0 and interchange.accuracy == 0.0
        assert d.excess.lower > 0.9


def test_interchange_swaps_only_the_shared_component():
    """p' keeps the KD-specific rest: its projection off the centroids' span equals p_k's, on it the target's."""
    rng = np.random.default_rng(2)
    labels = np.repeat([1, 2, 3], 4)
    pert_repr, control = rng.normal(size=(12, 10)), rng.normal(size=10)
    plan = interventions.substitution_plan(labels, 2, 0)
    swap = interventions.interchange_plan(pert_repr, control, plan, 0)
    means = np.stack([(pert_repr - control)[labels == c].mean(axis=0) for c in (1, 2, 3)])
    q, _ = np.linalg.qr(means.T)  # an independent basis of the span
    projector = q @ q.T
    moved = swap.points[:12] - control
    assert swap.rank == 3 and (swap.targets != labels).all()
    assert np.allclose(moved - moved @ projector, (pert_repr - control) - (pert_repr - control) @ projector)
    assert np.allclose(moved @ projector, means[swap.targets - 1] @ projector)


def test_substituted_responses_reproduce_the_effects_at_each_kds_own_representation(tmp_path):
    """ΔY(p_k) through the substituted forward equals ΔY_k from the KD's own perturbation features (two independent
    paths through the real model: the encoder on features (`set_means`) vs p substituted (`expected_output`))."""
    config = write_tiny_run(tmp_path)
    run = load_run(config)
    draw_cells = draw_control_sets(len(run.controls), run.set_size, 2, 0)
    features = run.features(run.kd_names)
    with torch.no_grad():
        pert_repr = run.encode(run.kd_names).double().numpy()
        control_repr = run.encode([run.control_label])[0].double().numpy()
        direct = []
        for rows in draw_cells:
            basal = torch.as_tensor(run.controls[rows])[None]
            kd = run.set_means(features, basal.expand(len(features), -1, -1))
            control = run.set_means(run.features([run.control_label]), basal)
            direct.append((kd - control).double().numpy())
    responses = substituted_responses(run, pert_repr, control_repr, draw_cells, LocalExecutor(),
                                      WorkerState(run, ship=lambda: None), "test",
                                      progress=False)
    assert np.abs(responses - np.mean(direct, axis=0)).max() < 1e-5 * np.abs(responses).max()


@pytest.mark.parametrize("world", ["keyed-common", "lookup", "partial-use"])
def test_use_calibration_worlds_give_no_wrong_answer(world):
    """The calibration's model-level worlds (planted functions with draw noise), 30 seeds each: no lookup is answered
    "used" or "partly used" (including one whose every centroid reproduces a response common to all KDs), and partial
    use at a quarter of the response is never answered "not used". The full table is the benchmark's."""
    from analysis.datasets import calibration

    rates = calibration.use_rates(world, 30, default_decision_rule())
    print(rates.summary())
    assert rates.false_rate == 0.0
    assert rates.uses[rates.expected] >= 0.9


@pytest.mark.parametrize("n_modules", [2, 3, 4])
def test_use_is_answered_with_few_clusters(n_modules):
    """The answer at C = 2, 3, 4 output clusters (the KDs of the first C planted modules), 20 seeds a world: the label
    permutations have no floor of 2^−C, so use is found with two clusters (a cluster sign flip never could: its p is
    at least 1/4); no lookup is answered used. Rates ± binomial SE printed; the full table is the benchmark's."""
    from analysis.datasets import calibration

    for world in ("lookup", "keyed-common", "positive", "partial-use"):
        rates = calibration.use_rates(world, 20, default_decision_rule(), n_modules=n_modules)
        print(rates.summary())
        assert rates.mean_clusters == pytest.approx(n_modules, abs=0.5)
        assert rates.false_rate == 0.0
        assert rates.uses[rates.expected] >= 0.9
