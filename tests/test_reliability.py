"""The noise floor (issue 18): split-half reliabilities against direct computations on explicit half matrices, the
half-Jacobians against reverse mode on each half's draws, the cluster-level r against a loop over cluster pairs, and
the "unreliable" call."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny import relative_error, write_tiny_run

import analysis
from analysis.config import default_decision_rule
from analysis.datasets import calibration
from analysis.model import jacobians
from analysis.present.wording import words
from analysis.results import NoiseFloor
from analysis.stats import reliability
from analysis.stats.decomposition import decompose
from analysis.stats.gram import stream_gram
from analysis.stats.mantel import cluster_level
from analysis.stats.clustering import cosine_similarity
from analysis.stats.verdict import decide
from analysis.store.shards import open_shards

RULE = default_decision_rule()


def _halves(rng, n_kds=30, dim=200, noise=0.5):
    """Two noisy copies of one set of vectors: their Grams [K, K]."""
    base = rng.normal(size=(n_kds, dim))
    return [(base + noise * rng.normal(size=base.shape)) for _ in range(2)]


def test_split_half_reliability_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    a, b = (cosine_similarity(x) for x in _halves(rng))
    i, j = np.triu_indices(len(a), k=1)
    direct = np.corrcoef(a[i, j], b[i, j])[0, 1]
    r, se = reliability.split_half_r(a, b)
    assert r == pytest.approx(direct, abs=1e-12)
    # the jackknife SE from an explicit leave-one-KD-out loop
    n = len(a)
    loo = []
    for k in range(n):
        keep = np.delete(np.arange(n), k)
        ii, jj = np.triu_indices(n - 1, k=1)
        loo.append(np.corrcoef(a[np.ix_(keep, keep)][ii, jj], b[np.ix_(keep, keep)][ii, jj])[0, 1])
    loo = np.asarray(loo)
    assert se == pytest.approx(np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()), rel=1e-9)
    assert reliability.spearman_brown(direct) == pytest.approx(2 * direct / (1 + direct))


def test_noise_floor_reads_each_halfs_specific_routing_and_corrects_for_attenuation():
    rng = np.random.default_rng(1)
    out = [cosine_similarity(x) for x in _halves(rng, noise=0.3)]
    jac = _halves(rng, noise=1.0)
    grams = [x @ x.T for x in jac]
    floor = reliability.noise_floor(tuple(out), tuple(grams), (2, 2), mantel_r=0.3)
    i, j = np.triu_indices(len(out[0]), k=1)
    spec = [decompose(g)[1] for g in grams]
    r_out, r_jac = (np.corrcoef(m[0][i, j], m[1][i, j])[0, 1] for m in (out, spec))
    rel_out, rel_jac = 2 * r_out / (1 + r_out), 2 * r_jac / (1 + r_jac)
    assert floor.reliability_out == pytest.approx(rel_out, abs=1e-10)
    assert floor.reliability_jac == pytest.approx(rel_jac, abs=1e-10)
    assert floor.corrected_r == pytest.approx(0.3 / np.sqrt(rel_out * rel_jac), abs=1e-10)
    assert floor.half_draws == (2, 2) and 0 < rel_jac < rel_out < 1  # noisier routing halves reproduce less
    assert np.isnan(reliability.corrected_for_attenuation(0.3, -0.1, 0.9))


def test_cluster_level_r_matches_a_loop_over_cluster_pairs():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2, 3, 4, 5], 6)  # group 0 (weak effects) is left out
    a, b = (cosine_similarity(rng.normal(size=(36, 8))) for _ in range(2))
    b = b + 0.5 * a
    clusters = range(1, 6)
    pairs = [(c, d) for c in clusters for d in clusters if c < d]
    mean = lambda m, c, d: m[np.ix_(labels == c, labels == d)].mean()  # noqa: E731
    x = [mean(a, c, d) for c, d in pairs]
    y = [mean(b, c, d) for c, d in pairs]
    level = cluster_level(a, b, labels, 199, 0)
    assert level.n_clusters == 5 and level.n_pairs == 10
    assert level.r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert np.isnan(cluster_level(a, b, np.repeat([1, 2], 18), 99, 0).r)  # two clusters: one pair


def test_cluster_level_p_is_uniform_under_exchangeable_clusters():
    """Under independent matrices the permutation p rejects at about its level (200 replicates, SE 1.5 %)."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(1, 7), 5)
    rejections = sum(cluster_level(cosine_similarity(rng.normal(size=(30, 6))),
                                   cosine_similarity(rng.normal(size=(30, 6))), labels, 99, s).p_value < 0.05
                     for s in range(200))
    print(f"cluster-level r, independent matrices: {rejections / 200:.1%} rejections at 5 % (200 replicates)")
    assert rejections / 200 <= 0.095


def _evidence_with(reliability_jac: float, world: str = "draw-per-KD"):
    w = calibration.draw_world(np.random.default_rng(4), world)
    evidence = calibration.world_evidence(w, 99, 0)
    return replace(evidence, noise_floor=replace(evidence.noise_floor, reliability_jac=reliability_jac))


def test_unreliable_replaces_the_calls_that_read_specific_structure_and_only_below_the_minimum():
    reliable = decide(_evidence_with(0.9), RULE)
    assert reliable.call == "per-KD"
    assert decide(_evidence_with(RULE.min_reliability - 0.01), RULE).call == "unreliable"
    assert decide(_evidence_with(RULE.min_reliability), RULE).call == "per-KD"  # at the minimum: reliable
    unmeasured = replace(_evidence_with(0.0), noise_floor=None)  # one draw: today's calls stand
    assert decide(unmeasured, RULE).call == "per-KD"
    assert not any(c.family == "noise_floor" for c in decide(unmeasured, RULE).criteria)
    row = next(c for c in reliable.criteria if c.family == "noise_floor")
    assert row.value == 0.9 and row.held and "corrected for attenuation" in words(row).note


def test_a_global_readout_stays_one_when_its_small_specific_part_is_noise():
    w = calibration.draw_world(np.random.default_rng(5), "identical-noise")
    evidence = calibration.world_evidence(w, 99, 0)
    floor = NoiseFloor((1, 1), 1.0, 0.0, 0.0, 0.01, 1.0, 0.0, float("nan"))
    before = decide(evidence, RULE).call
    assert before in ("global readout", "inconclusive")
    after = decide(replace(evidence, noise_floor=floor), RULE).call
    assert after == ("global readout" if before == "global readout" else "unreliable")


# ---------------------------------------------------------------- half Jacobians through the pipeline
@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("halves")
    config = write_tiny_run(folder).replace(n_draws=3)  # odd R: halves of 1 and 2 draws
    from analysis.pipeline.run import load_line

    return analysis.run(config, progress=False), load_line(config)


def test_stored_halves_match_reverse_mode_on_each_halfs_draws(tiny_results):
    """J^(1) and J^(2), rebuilt from the stored J and halves' difference, against the seed's reverse-mode Jacobian
    taken over that half's draw sets only; and J over all draws is their draw-weighted mean."""
    results, line = tiny_results
    responses = results.effects.responses
    shards = open_shards(results.stage_paths["jacobians"])
    assert shards.half_draws == (1, 2)
    halves = shards.halves()
    run = line.run
    model = dataclasses.replace(run, model=copy.deepcopy(run.model))
    for k in (0, len(responses.kd_names) - 1):
        p = torch.as_tensor(responses.pert_repr[k], dtype=run.dtype)
        for reader, draws in zip(halves, jacobians.draw_halves(3)):
            sets = torch.as_tensor(run.controls[responses.draw_cells[draws.start:draws.stop]], dtype=run.dtype)
            oracle = jacobians.reverse_mode_jacobian(model, p, sets)
            stored = next(jac[list(index).index(k)] for index, jac in reader if k in index)
            assert relative_error(torch.as_tensor(stored), oracle.double()) <= 1e-4
        full = next(jac[list(index).index(k)] for index, jac in shards if k in index).astype(float)
        parts = [next(jac[list(index).index(k)] for index, jac in reader if k in index) for reader in halves]
        assert np.abs(full - (parts[0] + 2 * parts[1]) / 3).max() <= 1e-6 * np.abs(full).max()


def test_the_pipeline_reports_the_noise_floor_from_its_halves(tiny_results):
    results, _ = tiny_results
    floor = results.routing.evidence.noise_floor
    assert floor is not None and floor.half_draws == (1, 2)
    shards = open_shards(results.stage_paths["jacobians"])
    grams = [stream_gram(h) for h in shards.halves()]
    draws = results.effects.responses.delta_y_draws
    out = [cosine_similarity(draws[:1].mean(0)), cosine_similarity(draws[1:].mean(0))]
    direct = reliability.noise_floor(tuple(out), tuple(grams), (1, 2), results.routing.evidence.mantel_pearson.statistic)
    assert floor == direct
    assert any(c.family == "noise_floor" for c in results.routing.verdict.criteria)


def test_one_draw_stores_no_halves_and_says_the_floor_was_not_measured(tmp_path):
    from analysis.present import prose

    config = write_tiny_run(tmp_path).replace(n_draws=1)
    results = analysis.run(config, progress=False)
    shards = open_shards(results.stage_paths["jacobians"])
    assert shards.halves() is None and results.routing.evidence.noise_floor is None
    assert "Noise floor not measured" in prose.reason(results.routing)


def test_every_call_has_its_words():
    from analysis.present import prose
    from analysis.results import CALLS

    assert set(prose.CALL_MEANINGS) == set(CALLS) and "unreliable" in CALLS
