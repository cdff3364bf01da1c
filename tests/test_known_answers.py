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

import analysis
from analysis.datasets import known_answers
from analysis.present import prose
from analysis.stats import clustering

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
                results = analysis.run(config, progress=False)
            finally:
                logging.disable(previous)
            done[kind] = (results, known_answers.load_truth(folder), known_answers.planted_model(kind, SEED))
        return done[kind]

    return get


def _criterion(results, name, family):
    return next(c for c in results.routing.verdict.criteria if c.id == name and c.family == family)


def _same_cross(matrix, modules):
    modules = np.asarray(modules)
    same = (modules[:, None] == modules[None]) & ~np.eye(len(modules), dtype=bool)
    return matrix[same].mean(), matrix[modules[:, None] != modules[None]].mean()


@pytest.mark.parametrize("kind", known_answers.KINDS)
def test_pipeline_sees_the_planted_function(known, kind):
    """The run the pipeline loaded is the planted one: ΔY, pert_repr and C_jac agree with the p-space weights."""
    results, truth, planted = known(kind)
    effects = results.effects.responses
    assert effects.kd_names == planted.kd_names and list(truth["kd"]) == list(planted.kd_names)
    assert np.abs(effects.pert_repr - planted.pert_repr).max() < 1e-5
    assert np.abs(effects.control_repr).max() < 1e-6
    # A model that reads the control cells is planted on the cells the run drew (None: it ignores them).
    cells = None if planted.cell_values is None else effects.draw_cells
    # The final LayerNorm is ~linear in p (relative curvature ~1e-5); the rest is float32 rounding.
    assert np.abs(effects.delta_y - planted.delta_y(cells)).max() < 1e-3 * np.abs(planted.delta_y(cells)).max()
    planted_c_jac = clustering.cosine_similarity(planted.jacobians(cells).reshape(len(planted.kd_names), -1))
    assert np.abs(results.routing.c_jac - planted_c_jac).max() < 0.01
    # The planted routing lives in the output head; the backbone's blocks are identities on the residual stream
    # (∂h_ℓ/∂p = I for every KD), so routing by depth is common to all KDs until the head.
    assert [d.reading for d in results.routing.depth] == ["common only"] * 2
    assert all(d.decomposition.common_share > 1 - 1e-6 for d in results.routing.depth)


@pytest.mark.parametrize("kind", ["positive", "keyed", "degenerate"])
def test_the_response_split_matches_the_planted_weights(known, kind):
    """What produces the responses, through the real model's path-averaged Jacobians (the pipeline), against the same
    split computed from the planted weights alone (`calibration.known_answer_world`: ReLU gates opened along the
    path, no forward): medians within 0.02, and the path reproduces ΔY_k (a gate opens along it). The sharply keyed
    lookup's gates open only near p_k, past both midpoints: both sides find a split that explains nothing, so the
    call does not read it (the verdict keeps its Jacobian-energy rule) rather than read a zero."""
    from analysis.datasets import calibration
    from analysis.stats.verdict import readable_response

    results, _, _ = known(kind)
    measured, planted = results.routing.evidence.response, calibration.known_answer_world(kind, SEED).response
    print(kind, measured, planted)
    assert measured.path_points == planted.path_points > 0
    if kind == "keyed":
        assert measured.explained_median < 0.5 and planted.explained_median < 0.5
        assert readable_response(results.routing.evidence) is None
        return
    for field in ("common_median", "specific_median", "explained_median"):
        assert abs(getattr(measured, field) - getattr(planted, field)) < 0.02, (field, measured, planted)
    assert measured.explained_median > 0.9


@pytest.mark.parametrize("kind", known_answers.KINDS)
def test_interventions_give_the_planted_use(known, kind):
    """Through the real forward: each kind's encoder geometry is used or not, as it was built (substitution of the
    cluster's leave-one-out centroid against random groups), and the words say what the intervention showed."""
    results, _, planted = known(kind)
    test, verdict = results.interventions.substitution, results.routing.verdict
    d = test.distance
    print(f"{kind}: {verdict.call} / {verdict.use}; cos {test.cosine:.3f} vs random {test.random_cosine:.3f}, gain "
          f"{test.gain.estimate:.3f} [{test.gain.lower:.3f}, {test.gain.bound:.3f}], p {test.gain.p_value:.3g}; median "
          f"share {test.share:.3f}, size ratio {test.size_ratio:.2f}; distance ratio {d.ratio_median:.2f} "
          f"({d.ratio_low:.2f}–{d.ratio_high:.2f}), centroid {d.probe_cosine:.3f} vs matched move "
          f"{d.matched_cosine:.3f}, excess {d.excess.estimate:.3f} [{d.excess.lower:.3f}, {d.excess.bound:.3f}]; "
          f"{results.interventions.n_sets} sets in {results.interventions.seconds:.1f} s")
    assert verdict.use == planted.expected_use
    assert verdict.call in planted.expected_calls
    assert prose.use_meaning(results.routing) == prose.USE_MEANINGS[verdict.use]
    reason = prose.use_reason(results.interventions, verdict.use)
    assert f"gain of {test.gain.estimate:.3f}" in reason and f"median {d.ratio_median:.2f}" in reason
    # The claim quotes the bound that supports it: the lower one where use is shown, the upper one where it is denied.
    assert ("lower bound" in reason.split("The centroid")[0]) == (verdict.use == "used")
    table = results.interventions.table  # the bounds stay within the range the per-KD gains span
    assert table["gain"].min() - 1e-12 <= test.gain.lower <= test.gain.bound <= table["gain"].max() + 1e-12


def why(results) -> str:
    return prose.reason(results.routing)


def _deciding(results):
    mantel, contrast = results.routing.verdict.deciding
    return mantel, contrast


def test_positive_shared_routing_is_called_positive(known):
    results, truth, _ = known("positive")
    ev = results.routing.evidence
    print(f"positive: Mantel r = {ev.mantel_pearson.statistic:.3f} (p {ev.mantel_pearson.p_value:.3g}), "
          f"contrast {ev.contrast.test.statistic:.2f} SD (p {ev.contrast.test.p_value:.3g}); {why(results)}")
    # Clusters recover the planted modules.
    assert adjusted_rand_score(truth["module"], results.effects.labels) > 0.9
    assert ev.mantel_pearson.statistic > 0.3 and ev.mantel_pearson.p_value < 0.01 and ev.pearson_ci[0] > 0.3
    assert ev.contrast.test.statistic > 1 and ev.contrast.test.p_value < 0.01
    assert [c.supports for c in _deciding(results)] == ["Model B", "Model B"]
    caveat = prose.caveat(results.routing, results.interventions)
    assert results.routing.verdict.call == "cluster circuits" and "the intervention rules it out" in caveat
    assert "shown (r = " in why(results) and "p " in why(results)
    assert prose.synthesis(results.routing).startswith("Model B")
    assert "formed after the backbone" in prose.depth_text(results.routing)


def test_positive_routing_axes_show_the_planted_modules(known):
    """The routing axes (SVD of the KD-specific routing) are carried by one planted module each: the KDs scoring
    highest on each of the first two axes, and on any axis read as a pathway, are by a large majority the KDs of one
    module (the planted truth, not the enrichment's own words)."""
    results, truth, _ = known("positive")
    svd, modules = results.routing.svd, np.asarray(truth["module"])
    axes = sorted({1, 2} | {a.axis for a in svd.axes if a.interpretable(svd.fdr)})
    for axis in axes:
        top = modules[np.argsort(-results.routing.kd_scores[:, axis - 1])[:known_answers.KDS_PER_MODULE]]
        values, counts = np.unique(top, return_counts=True)
        print(axis, dict(zip(values, counts)))
        assert counts.max() >= 0.8 * len(top), (axis, dict(zip(values, counts)))


def test_negative_per_kd_lookup_is_called_per_kd_by_equivalence(known):
    """Outputs cluster by module, routing directions are KD-specific: equivalence shown for both criteria."""
    results, truth, _ = known("negative")
    ev, p3 = results.routing.evidence, results.routing
    print(f"negative: Mantel r = {ev.mantel_pearson.statistic:.3f} (bound {ev.mantel_pearson.upper_bound:.3f}), "
          f"contrast {ev.contrast.test.statistic:.2f} SD (bound {ev.contrast.test.upper_bound:.2f}), "
          f"pair-level Wilcoxon p {ev.contrast.rank_sum_p:.3g}; {why(results)}")
    assert adjusted_rand_score(truth["module"], results.effects.labels) > 0.9  # outputs do cluster by module
    same, cross = _same_cross(clustering.cosine_similarity(results.effects.responses.pert_repr), truth["module"])
    assert same > 0.5 > cross + 0.3  # and so does the encoder geometry
    assert ev.mantel_pearson.upper_bound < 0.1 and ev.contrast.r_bound < 0.1  # both bounds on the r scale
    assert ev.decomposition.common_share < 0.5  # most routing is KD-specific
    assert [c.supports for c in _deciding(results)] == ["Model A", "Model A"]
    assert p3.verdict.call == "per-KD" and not prose.caveat(p3, results.interventions)
    assert prose.synthesis(p3).startswith("Model A")
    assert "smaller than the smallest effect of interest" in why(results) and "decorative" not in why(results)


def test_random_model_is_not_called_cluster_circuits(known):
    results, _, _ = known("random")
    ev = results.routing.evidence
    print(f"random: Mantel r = {ev.mantel_pearson.statistic:.3f} (p {ev.mantel_pearson.p_value:.3g}); "
          f"{results.routing.verdict.call}: {why(results)}")
    assert ev.mantel_pearson.p_value >= 0.05 and ev.contrast.test.p_value >= 0.05
    assert results.routing.verdict.call in known_answers.EXPECTED_CALLS["random"]


def test_keyed_lookup_routes_like_cluster_circuits_and_the_intervention_detects_it(known):
    """The Jacobians' blind spot: a lookup keyed on each KD's own embedding routes like shared routing; substituting
    the cluster's shared embedding collapses its responses, and the words say the lookup was detected."""
    results, _, _ = known("keyed")
    ev = results.routing.evidence
    caveat = prose.caveat(results.routing, results.interventions)
    print(f"keyed: r(C_jac, C_out ⊙ C_rep) = {ev.keyed_lookup_r:.3f}; {caveat}")
    assert results.routing.verdict.call == "cluster circuits" and results.routing.verdict.use == "not used"
    assert ev.keyed_lookup_r > 0.95 and caveat.startswith("Keyed lookup detected") and "cannot distinguish" not in caveat
    assert results.interventions.substitution.no_response > 0.9  # no unit opens at a centroid
    assert prose.synthesis(results.routing).startswith("a keyed lookup")


def test_smoothly_gated_lookup_is_shared_routing_to_every_test(known):
    """What the tests cannot tell apart: a lookup whose gates open for the module's other KDs interpolates over the
    module's embeddings — routing shared within modules, and the module centroid reproduces the responses."""
    results, _, _ = known("keyed-smooth")
    assert results.routing.verdict.call == "cluster circuits" and results.routing.verdict.use == "used"
    assert results.interventions.substitution.cosine > 0.9 and results.interventions.interchange.accuracy > 0.9


def test_one_linear_map_is_a_global_readout_not_cluster_circuits(known):
    """Every KD through one linear map: the KD-specific share of the Jacobian energy is below the floor — a global
    readout, whatever the correlations of that remainder say (the LayerNorm's curvature still follows the modules)."""
    results, _, _ = known("degenerate")
    ev = results.routing.evidence
    print(f"degenerate: C_jac mean {ev.spread.jac_mean:.9f}; KD-specific share {ev.decomposition.specific_share:.3g}; "
          f"raw r {ev.raw_mantel.statistic:.3f}; {why(results)}")
    assert 1 - ev.spread.jac_mean < 1e-3
    assert ev.decomposition.specific_share < results.config.decision_rule.min_specific_share
    assert results.routing.verdict.call == "global readout" and results.routing.verdict.degenerate_matrix == "C_jac"
    assert "below the floor" in why(results)


@pytest.mark.parametrize("kind", ["positive", "degenerate"])
def test_steering_follows_the_planted_function(known, kind):
    """Steering through the real forward agrees with the planted p-space function and its Jacobian (an independent
    numpy oracle): the relative error of the first-order prediction at every step. Only axes that carry routing
    energy are compared (more than 1 % of the unit-norm Jacobians' energy: the axis's share of the KD-specific energy
    times that part's share): the linear map's routing axes, of a KD-specific part of 2.5e-6 (the LayerNorm's
    curvature), carry none, and their first-order changes are at float32 rounding."""
    results, _, planted = known(kind)
    steering, routing = results.steering, results.routing
    jacobians = planted.jacobians()
    specific = routing.evidence.decomposition.specific_share
    carried = [a + 1 for a in range(len(steering.trust_radius)) if routing.variance_explained[a] * specific > 0.01]
    assert carried == [] if kind == "degenerate" else carried[0] == 1
    for axis, frame in steering.table[steering.table["axis"].isin(carried)].groupby("axis"):
        k = planted.kd_names.index(frame["kd"].iloc[0])
        v = routing.input_directions[axis - 1]
        start = planted.pert_repr[k]
        steps = frame["step"].to_numpy() * steering.scale
        change = planted.respond(start + np.outer(steps, v)) - planted.respond(start[None])
        predicted = np.outer(steps, jacobians[k] @ v)
        oracle = np.linalg.norm(change - predicted, axis=1) / np.linalg.norm(predicted, axis=1)
        print(kind, axis, np.round(frame["relative_error"].to_numpy(), 4), np.round(oracle, 4))
        assert np.allclose(frame["relative_error"], oracle, atol=0.02, rtol=0.05)


def test_draw_to_draw_noise_in_routing_is_called_unreliable(known):
    """KD-specific routing that is pure draw-to-draw noise (each KD's share of the clamp units decided by which control
    cells a draw holds): the KD-specific structure does not reproduce between the halves of the draws → unreliable,
    never per-KD (which the deciding rows alone would say: both bounds below the margin) or cluster circuits."""
    results, _, planted = known("unreliable")
    ev, rule = results.routing.evidence, results.config.decision_rule
    floor = ev.noise_floor
    print(f"unreliable: common share {ev.decomposition.common_share:.3f}; reliability C_jac^spec "
          f"{floor.reliability_jac:.3f} (half r {floor.half_r_jac:.3f} ± {floor.half_r_jac_se:.3f}), C_out "
          f"{floor.reliability_out:.4f}; supports {[c.supports for c in _deciding(results)]}; {why(results)}")
    assert floor.half_draws == (1, 1)
    assert floor.reliability_jac < rule.min_reliability and floor.half_r_jac + 3 * floor.half_r_jac_se < 0.2
    assert floor.reliability_out > 0.99  # the outputs barely depend on the cells: their structure reproduces
    assert ev.decomposition.common_share < rule.global_share  # KD-specific routing is most of the energy
    # With every control cell (the expectation over draws) every KD has the same Jacobian: no KD-specific routing.
    from analysis.stats.decomposition import decompose
    every = planted.jacobians().reshape(len(planted.kd_names), -1)
    assert decompose(every @ every.T)[0].specific_share < 1e-9
    assert results.routing.verdict.call == "unreliable"
    assert "does not reproduce across control draws" in why(results) and "Noise floor" in why(results)
