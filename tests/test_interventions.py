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
            assert len(group) == len(mates) == len(set(group)) and k not in group
            assert set(labels[group]) <= {1, 3}
    pert_repr = np.random.default_rng(1).normal(size=(len(labels), 4))
    points = interventions.centroids(pert_repr, plan)
    assert points.shape == (plan.n_points, 4) and plan.n_points == 7 * 6
    assert np.allclose(points[0], pert_repr[[3, 4]].mean(axis=0))  # KD 2's centroid: KDs 3 and 4
    assert np.allclose(points[1], pert_repr[plan.groups[0][1]].mean(axis=0))


def test_a_single_substitutable_cluster_is_not_decided():
    """One cluster cannot be compared across clusters: no p, and the use row supports neither answer."""
    labels = np.array([1, 1, 1, 1, 2, 2])
    plan = interventions.substitution_plan(labels, random_groups=3, seed=0)
    assert plan.n_points == 4 * 4
    test, table = interventions.substitution_test(np.ones((6, 3)), np.ones((16, 3)), plan, list("abcdef"), 99, 0)
    assert test.gain.n_clusters == 0 and np.isnan(test.gain.p_value) and len(table) == 4
    assert use_criteria(test, None, default_decision_rule())[0].supports == "neither"


def test_substitution_scores_against_a_hand_computed_oracle():
    """Two clusters of three KDs, responses chosen by hand: cosine, share, size ratio, random reference and gain."""
    labels = np.array([1, 1, 1, 2, 2, 2])
    plan = interventions.substitution_plan(labels, random_groups=2, seed=3)
    rng = np.random.default_rng(0)
    delta_y = rng.normal(size=(6, 5))
    responses = rng.normal(size=(plan.n_points, 5))
    responses[3] = 0.0  # the model gives no response to KD 1's centroid: cosine 0, share 0
    test, table = interventions.substitution_test(delta_y, responses, plan, list("abcdef"), 99, 0)
    for i, k in enumerate(plan.kds):
        y, r = delta_y[k], responses[3 * i]
        cos = 0.0 if not r.any() else y @ r / np.linalg.norm(y) / np.linalg.norm(r)
        randoms = responses[3 * i + 1: 3 * i + 3]
        rand_cos = np.mean([y @ q / np.linalg.norm(y) / np.linalg.norm(q) for q in randoms])
        assert table.loc[i, "cosine"] == pytest.approx(cos)
        assert table.loc[i, "share"] == pytest.approx(1 - np.sum((r - y) ** 2) / np.sum(y**2))
        assert table.loc[i, "size_ratio"] == pytest.approx(np.linalg.norm(r) / np.linalg.norm(y))
        assert table.loc[i, "random_cosine"] == pytest.approx(rand_cos)
        assert table.loc[i, "gain"] == pytest.approx(cos - rand_cos)
    assert table.loc[1, "cosine"] == 0 and table.loc[1, "share"] == 0
    assert test.gain.estimate == pytest.approx(table["gain"].mean()) and test.no_response == pytest.approx(1 / 6)


def test_cluster_inference_against_enumeration_and_an_explicit_jackknife():
    values = np.array([0.5, 0.1, -0.2, 0.4, 0.3, 0.6, -0.1, 0.2])
    clusters = np.array([1, 1, 2, 2, 3, 4, 4, 5])
    result = interventions.cluster_inference(values, clusters, 99, 0)
    sums = np.array([values[clusters == c].sum() for c in range(1, 6)])
    patterns = [np.dot(signs, sums) for signs in itertools.product((1, -1), repeat=5)]
    assert result.exact and result.n_sign_patterns == 32
    assert result.p_value == pytest.approx(np.mean(np.array(patterns) >= sums.sum() - 1e-12))
    leave_out = [values[clusters != c].mean() for c in range(1, 6)]
    se = np.sqrt(4 / 5 * np.sum((np.array(leave_out) - np.mean(leave_out)) ** 2))
    assert result.standard_error == pytest.approx(se)
    assert result.bound == pytest.approx(values.mean() + 2.131846786 * se, rel=1e-6)  # t(0.95, 4 df)


def test_all_zero_gains_give_p_one_and_a_zero_bound():
    """A lookup: nothing is reproduced by any centroid, every gain is 0 — no evidence of use, and use ruled out."""
    result = interventions.cluster_inference(np.zeros(9), np.repeat([1, 2, 3], 3), 99, 0)
    assert result.p_value == 1.0 and result.bound == 0.0


def _planted_use(kind: str, seed: int = 0) -> tuple:
    planted = known_answers.planted_model(kind, seed)
    delta_y = planted.delta_y()
    plan = interventions.substitution_plan(cluster_kds(delta_y, 8, 0, 0).labels, 4, seed)
    test, _ = interventions.substitution_test(delta_y, planted.respond(interventions.centroids(planted.pert_repr,
                                                                                              plan)),
                                              plan, planted.kd_names, 999, seed)
    swap = interventions.interchange_plan(planted.pert_repr, np.zeros(planted.pert_repr.shape[1]), plan, seed)
    interchange, _ = interventions.interchange_test(delta_y, planted.respond(swap.points), swap, 999, seed)
    return planted, test, interchange


@pytest.mark.parametrize("kind", known_answers.KINDS)
def test_planted_models_get_their_planted_use(kind):
    """Every known-answer model, through its planted p-space function: the use it was built to have."""
    planted, test, interchange = _planted_use(kind)
    row = use_criteria(test, interchange, default_decision_rule())[0]
    print(f"{kind}: cos {test.cosine:.3f} vs random {test.random_cosine:.3f}, gain {test.gain.estimate:.3f} "
          f"(bound {test.gain.bound:.3f}, p {test.gain.p_value:.3g}); interchange {interchange.accuracy:.2f} vs "
          f"{interchange.null_accuracy:.2f}")
    assert use_answer(row.supports) == planted.expected_use
    if planted.expected_use == "used":  # the shared component also carries the response across clusters
        assert interchange.accuracy > 0.9 and interchange.gain.p_value < 0.05
    else:  # a lookup collapses: no response at all to the cluster's centroid
        assert test.no_response == 1.0 and interchange.accuracy == 0.0


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
    "used" (including one whose every centroid reproduces a response common to all KDs), and partial use at a
    quarter of the response is never answered "not used". The full table (500 seeds a world) is the benchmark's."""
    from analysis.datasets import calibration

    rates = calibration.use_rates(world, 30, default_decision_rule())
    print(rates.summary())
    assert rates.false_rate == 0.0
    assert rates.uses[rates.expected] >= 0.9
