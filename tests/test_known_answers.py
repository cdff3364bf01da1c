"""Known answers: arc-state models with hand-set routing go through the whole pipeline and get the planted verdict.

Each model (analysis.known_answers) is a real StateTransitionPerturbationModel written as a `state tx train`
run directory; the pipeline loads, differentiates and scores it exactly as it would a user's run.
About 25 s per model on 2 CPU cores.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from analysis import clustering, known_answers
from analysis.pipeline import run_analysis

SEED = 0


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """kind -> (Results, truth table, PlantedModel), built and analysed once per module."""
    done = {}

    def get(kind):
        if kind not in done:
            folder = tmp_path_factory.mktemp(f"known-answer-{kind}")
            config = known_answers.build_known_answer(kind, folder, seed=SEED, cache_dir=str(folder / "cache"))
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                results = run_analysis(config, progress=False)
            finally:
                logging.disable(previous)
            done[kind] = (results, known_answers.load_truth(folder), known_answers.planted_model(kind, SEED))
        return done[kind]

    return get


def _criterion(results, name, family):
    return next(c for c in results.part3.verdict.criteria if c.name == name and c.family == family)


def _same_cross(matrix, modules):
    modules = np.asarray(modules)
    same = (modules[:, None] == modules[None]) & ~np.eye(len(modules), dtype=bool)
    return matrix[same].mean(), matrix[modules[:, None] != modules[None]].mean()


@pytest.mark.parametrize("kind", known_answers.KINDS)
def test_pipeline_sees_the_planted_function(known, kind):
    """The run the pipeline loaded is the planted one: ΔY, pert_repr and C_jac agree with the p-space weights."""
    results, truth, planted = known(kind)
    effects = results.part1.effects
    assert effects.kd_names == planted.kd_names and list(truth["kd"]) == list(planted.kd_names)
    assert np.abs(effects.pert_repr - planted.pert_repr).max() < 1e-5
    assert np.abs(effects.control_repr).max() < 1e-6
    # The final LayerNorm is ~linear in p (relative curvature ~1e-5); the rest is float32 rounding.
    assert np.abs(effects.delta_y - planted.delta_y()).max() < 1e-3 * np.abs(planted.delta_y()).max()
    planted_c_jac = clustering.cosine_similarity(planted.jacobians().reshape(len(planted.kd_names), -1))
    assert np.abs(results.part3.c_jac - planted_c_jac).max() < 0.01


def test_positive_shared_routing_is_called_positive(known):
    results, truth, _ = known("positive")
    stats = results.part3.stats
    print(f"positive: Mantel r = {stats['pearson_r']:.3f} (p {stats['mantel_pearson']['p_value']:.3g}), "
          f"C_jac same − cross = {stats['contrast']['difference']:.3f} (permutation p {stats['contrast']['permutation_p']:.3g})")
    # Why: output clusters are the planted modules, and KDs of one module share their Jacobian.
    assert adjusted_rand_score(truth["module"], results.part1.labels) > 0.9
    same, cross = _same_cross(results.part3.c_jac, truth["module"])
    assert same > 0.5 and abs(cross) < 0.05
    assert stats["pearson_r"] > 0.3 and stats["mantel_pearson"]["p_value"] < 0.01
    assert stats["pearson_ci"][0] > 0.3
    assert stats["contrast"]["difference"] > 0.3 and stats["contrast"]["permutation_p"] < 0.01
    # Routing is read from the module direction, so it tracks outputs beyond the encoder geometry too.
    assert stats["partial_mantel"]["p_value"] < 0.05 and stats["partial_mantel"]["statistic"] > 0
    assert results.part3.verdict.call == "positive"


def test_negative_decorative_geometry_is_not_shared_routing(known):
    """Why the negative model is Model A: outputs and encoder geometry cluster by module, routing does not."""
    results, truth, _ = known("negative")
    stats, p3 = results.part3.stats, results.part3
    print(f"negative: Mantel r = {stats['pearson_r']:.3f} (p {stats['mantel_pearson']['p_value']:.3g}), "
          f"C_jac same − cross = {stats['contrast']['difference']:.4f} (permutation p {stats['contrast']['permutation_p']:.3g}, "
          f"pair-level Wilcoxon p {stats['contrast']['rank_sum_p']:.3g})")
    assert adjusted_rand_score(truth["module"], results.part1.labels) > 0.9  # outputs cluster by module
    rep_same, rep_cross = _same_cross(p3.c_rep, truth["module"])
    assert rep_same > 0.5 and abs(rep_cross) < 0.1  # the encoder geometry clusters by module too
    jac_same, jac_cross = _same_cross(p3.c_jac, truth["module"])
    assert abs(jac_same) < 0.05 and abs(jac_cross) < 0.05  # but routing directions are near-orthogonal
    assert stats["pearson_r"] < 0.3
    assert not _criterion(results, "Output similarity predicts routing similarity", "dependence-aware").held
    assert not _criterion(results, "Output similarity predicts routing similarity", "seed").held
    assert abs(stats["contrast"]["difference"]) < 0.05
    assert not (stats["partial_mantel"]["p_value"] < 0.05 and stats["partial_mantel"]["statistic"] > 0)


def test_negative_decorative_geometry_is_called_negative(known):
    results, _, _ = known("negative")
    assert results.part3.verdict.call == "negative"


def test_random_model_is_called_negative(known):
    results, truth, _ = known("random")
    stats = results.part3.stats
    print(f"random: Mantel r = {stats['pearson_r']:.3f} (p {stats['mantel_pearson']['p_value']:.3g}), "
          f"C_jac same − cross = {stats['contrast']['difference']:.4f} (permutation p {stats['contrast']['permutation_p']:.3g})")
    assert adjusted_rand_score(truth["module"], results.part1.labels) < 0.3  # no module structure anywhere
    assert abs(stats["pearson_r"]) < 0.3 and stats["mantel_pearson"]["p_value"] >= 0.05
    assert stats["contrast"]["permutation_p"] >= 0.05
    assert results.part3.verdict.call == "negative"
