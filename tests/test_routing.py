"""Routing statistics against direct computations and planted truth."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

from analysis.config import default_decision_rule
from analysis.results import ClusterContrast, Decomposition, ResponseShares, RoutingEvidence, Spread, StudentizedTest
from analysis.stats import axes, clustering, enrichment, verdict
from analysis.stats.contrast import cluster_contrast
from analysis.stats.decomposition import common_loadings, decompose, response_shares
from analysis.stats.evidence import core_evidence, routing_by_depth, routing_evidence
from analysis.stats.gram import cosine_from_gram, jacobian_svd, stream_gram
from analysis.stats.mantel import kd_bootstrap_ci, mantel, partial_mantel, within_cluster_mantel
from analysis.stats.nulls import p_greater
from analysis.stats.pairs import pearson, upper
from analysis.store import cache
from analysis.store.shards import open_shards


def write_shards(folder, stacked, shard_kds):
    for s, start in enumerate(range(0, len(stacked), shard_kds)):
        block = stacked[start:start + shard_kds]
        cache.write_npz(folder / f"shard_{s:05d}.npz", jacobian=block.astype(np.float32),
                        kd_index=np.arange(start, start + len(block)), linear_prediction=np.zeros(block.shape[:2]))
    return open_shards(folder)


@pytest.fixture
def planted(tmp_path):
    rng = np.random.default_rng(0)
    stacked = rng.normal(size=(23, 12, 5)).astype(np.float32)
    return stacked, write_shards(tmp_path, stacked, shard_kds=4)


def test_streamed_gram_equals_direct_product_with_a_tiny_memory_budget(planted):
    stacked, shards = planted
    flat = stacked.reshape(len(stacked), -1).astype(np.float64)
    # 600 bytes: room for one KD per block, so every block pairing is exercised.
    assert np.allclose(stream_gram(shards, memory_bytes=600), flat @ flat.T)
    assert np.allclose(stream_gram(shards), flat @ flat.T)


def specific_svd_oracle(flat: np.ndarray):
    """Explicit vectors: u_k = J_k/‖J_k‖, ĝ = Σu/‖Σu‖, u_k^⊥ = u_k − (u_k·ĝ)ĝ, and numpy's SVD of the u_k^⊥."""
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    common = unit.sum(axis=0) / np.linalg.norm(unit.sum(axis=0))
    perp = unit - np.outer(unit @ common, common)
    u, s, vt = np.linalg.svd(perp, full_matrices=False)
    return common, perp, u, s, vt


def test_lanczos_path_matches_numpy(tmp_path):
    """With many KDs and few axes the leading eigenpairs come from Lanczos: same answer."""
    rng = np.random.default_rng(3)
    stacked = (rng.normal(size=(60, 1)) * rng.normal(size=(1, 40)) + 0.3 * rng.normal(size=(60, 40))).reshape(60, 8, 5)
    shards = write_shards(tmp_path, stacked, shard_kds=16)
    flat = stacked.reshape(60, -1).astype(np.float32).astype(np.float64)
    _, _, u, s, _ = specific_svd_oracle(flat)
    svd = jacobian_svd(flat @ flat.T, shards, np.ones((60, 8)), n_axes=3)
    assert np.allclose(svd.singular_values, s[:3]) and np.allclose(np.abs(svd.kd_scores), np.abs(u[:, :3] * s[:3]), atol=1e-6)


def test_svd_of_the_kd_specific_part_through_the_gram_matches_numpy(planted):
    """The routing axes are the SVD of the KD-specific part u_k^⊥ (the common direction ĝ is reported apart):
    against explicit vectors and numpy's SVD."""
    stacked, shards = planted
    flat = stacked.reshape(len(stacked), -1).astype(np.float64)
    common, perp, u, s, vt = specific_svd_oracle(flat)
    svd = jacobian_svd(flat @ flat.T, shards, np.ones((23, 12)), n_axes=3)
    assert np.allclose(svd.singular_values[:3], s[:3])
    assert np.allclose(np.abs(svd.kd_scores), np.abs(u[:, :3] * s[:3]), atol=1e-8)
    assert np.allclose(np.abs(svd.axes.reshape(3, -1)), np.abs(vt[:3]), atol=1e-8)
    assert np.allclose(svd.variance_explained, s[:3] ** 2 / (s**2).sum())
    assert np.allclose(svd.common_direction.reshape(-1), common, atol=1e-8)
    # U s Vᵀ rebuilds the KD-specific stack along the leading axes.
    rebuilt = svd.kd_scores @ svd.axes.reshape(3, -1)
    assert np.allclose(rebuilt, (u[:, :3] * s[:3]) @ vt[:3], atol=1e-8)
    # ĝ's leading gene factor: numpy's, signed with the mean response (here all ones)
    left = np.linalg.svd(common.reshape(12, 5))[0][:, 0]
    assert np.allclose(svd.common_gene_loading, left * np.sign(left.sum()), atol=1e-8)


def test_a_jacobian_s_size_does_not_move_the_axes(tmp_path):
    """Unit norm: one KD's Jacobian scaled by 100 leaves ĝ and the routing axes as they were (an uncentred SVD of raw
    Jacobians would give that KD the first axis by size alone); the shared direction is the common component."""
    rng = np.random.default_rng(9)
    shared = rng.normal(size=40)
    stacked = shared + 0.3 * rng.normal(size=(30, 40))
    results = []
    for scale in (1.0, 100.0):
        scaled = stacked.copy()
        scaled[0] *= scale
        flat = scaled.astype(np.float32).astype(np.float64)
        results.append(jacobian_svd(flat @ flat.T, write_shards(tmp_path / f"x{scale:g}", scaled.reshape(30, 8, 5), 8),
                                    np.ones((30, 8)), 2))
    assert np.allclose(results[0].singular_values, results[1].singular_values, rtol=1e-5)
    assert np.allclose(results[0].common_direction, results[1].common_direction, atol=1e-6)
    assert abs(results[0].common_direction.reshape(-1) @ shared / np.linalg.norm(shared)) > 0.95


def test_subspace_overlap_against_principal_angles():
    rng = np.random.default_rng(10)
    reference = rng.normal(size=(3, 50))
    inside = rng.normal(size=(2, 3)) @ reference
    outside = rng.normal(size=(1, 50))
    overlap, cosine = axes.subspace_overlap(np.vstack([inside, outside]), reference)
    assert np.allclose(overlap[:2], 1.0) and overlap[2] < 0.6
    q, _ = np.linalg.qr(reference.T)
    unit = outside[0] / np.linalg.norm(outside[0])
    assert np.isclose(overlap[2], np.linalg.norm(q.T @ unit))
    assert cosine == pytest.approx(np.linalg.svd(np.linalg.qr(np.vstack([inside, outside]).T)[0].T @ q)[1].min())


def similarity_pair(rng, n=40, shared=0.6):
    """Two similarity matrices whose KD vectors share a planted component of weight `shared`."""
    base = rng.normal(size=(n, 30))
    a = clustering.cosine_similarity(base + 0.5 * rng.normal(size=(n, 30)))
    b = clustering.cosine_similarity(shared * base + rng.normal(size=(n, 30)))
    return a, b


def naive_jackknife_r(a, b):
    """Pearson r of the upper triangles and its delete-one-KD jackknife SE, by explicit loops."""
    n = len(a)
    r = lambda x, y: pearsonr(upper(x), upper(y))[0]  # noqa: E731
    loo = np.array([r(a[np.ix_(keep, keep)], b[np.ix_(keep, keep)]) for keep in (np.arange(n) != k for k in range(n))])
    return r(a, b), np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())


def test_studentized_mantel_matches_loops_over_the_same_permutations():
    rng = np.random.default_rng(8)
    a, b = similarity_pair(rng, n=18, shared=0.15)
    test = mantel(a, b, 60, seed=3)
    r, se = naive_jackknife_r(a, b)
    assert np.isclose(test.statistic, r) and np.isclose(test.standard_error, se)
    perms = np.argsort(np.random.default_rng(3).random((60, 18)), axis=1)
    null = np.array([np.divide(*naive_jackknife_r(a, b[np.ix_(p, p)])) for p in perms])
    assert test.p_value == pytest.approx((1 + np.sum(null >= r / se - 1e-9)) / 61)
    assert np.isclose(test.upper_bound, r + 1.6448536269514722 * se)


def test_mantel_statistic_is_pearson_and_detects_planted_correlation():
    rng = np.random.default_rng(1)
    a, b = similarity_pair(rng)
    test = mantel(a, b, 999, seed=0)
    assert np.isclose(test.statistic, pearsonr(upper(a), upper(b))[0])
    assert test.p_value == pytest.approx(1 / 1000)
    spearman = mantel(a, b, 999, seed=0, method="spearman")
    assert np.isclose(spearman.statistic, spearmanr(upper(a), upper(b))[0])


def test_mantel_on_independent_matrices_is_not_significant():
    rng = np.random.default_rng(2)
    a, _ = similarity_pair(rng)
    _, b = similarity_pair(rng)
    assert mantel(a, b, 999, seed=0).p_value > 0.05


def test_partial_mantel_removes_a_shared_cause():
    """a and b both follow c; given c, nothing is left."""
    rng = np.random.default_rng(3)
    n = 40
    cause = rng.normal(size=(n, 30))
    c = clustering.cosine_similarity(cause)
    a = clustering.cosine_similarity(cause + 0.7 * rng.normal(size=(n, 30)))
    b = clustering.cosine_similarity(cause + 0.7 * rng.normal(size=(n, 30)))
    assert mantel(a, b, 499, 0).p_value < 0.01
    partial = partial_mantel(a, b, c, 499, 0)
    # Against the textbook formula on the upper triangles.
    r = lambda x, y: pearsonr(upper(x), upper(y))[0]
    expected = (r(a, b) - r(a, c) * r(b, c)) / np.sqrt((1 - r(a, c) ** 2) * (1 - r(b, c) ** 2))
    assert np.isclose(partial.statistic, expected)
    assert abs(partial.statistic) < abs(r(a, b))


def test_bootstrap_ci_covers_the_statistic_and_is_wider_for_fewer_kds():
    rng = np.random.default_rng(4)
    a, b = similarity_pair(rng, n=60)
    low, high = kd_bootstrap_ci(a, b, 300, 0)
    assert low < pearson(a, b) < high
    small_low, small_high = kd_bootstrap_ci(a[:15, :15], b[:15, :15], 300, 0)
    assert small_high - small_low > high - low


def naive_studentized(sim, labels):
    """(mean same − mean cross) / delete-one-KD jackknife SE, by explicit loops."""
    def difference(keep):
        sub, lab = sim[np.ix_(keep, keep)], labels[keep]
        i, j = np.triu_indices(len(lab), 1)
        same = lab[i] == lab[j]
        return sub[i, j][same].mean() - sub[i, j][~same].mean()

    n = len(labels)
    full = difference(np.ones(n, bool))
    loo = np.array([difference(np.arange(n) != k) for k in range(n)])
    se = np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())
    return full, full / se


def test_cluster_contrast_matches_direct_loops_and_finds_planted_routing():
    rng = np.random.default_rng(5)
    labels = np.repeat([1, 2, 3], 8)
    centres = rng.normal(size=(3, 20))
    sim = clustering.cosine_similarity(centres[labels - 1] + 1.5 * rng.normal(size=(24, 20)))
    result = cluster_contrast(sim, labels, 499, 0)
    difference, t = naive_studentized(sim, labels)
    assert np.isclose(result.difference, difference)
    assert np.isclose(result.difference / (result.test.standard_error * result.spread), t)
    assert np.isclose(result.test.statistic, difference / upper(sim[np.ix_(labels > 0, labels > 0)]).std())
    assert result.test.p_value < 0.01 and result.auc > 0.6

    # Without planted routing, the permutation p equals the one from studentized statistics computed by loops over
    # the same seeded permutations (argsort of uniforms, the documented scheme).
    flat = clustering.cosine_similarity(rng.normal(size=(24, 20)))
    perms = np.argsort(np.random.default_rng(0).random((40, 24)), axis=1)
    null = [naive_studentized(flat, labels[p])[1] for p in perms]
    observed = naive_studentized(flat, labels)[1]
    vectorised = cluster_contrast(flat, labels, 40, 0)
    assert vectorised.test.p_value == pytest.approx((1 + np.sum(np.array(null) >= observed - 1e-9)) / 41)


def test_contrast_without_same_cluster_pairs_is_undefined_not_significant():
    """Every KD its own cluster: no same-cluster pair, so no statistic and no p-value (was p = 1/(N+1))."""
    sim = clustering.cosine_similarity(np.random.default_rng(7).normal(size=(10, 6)))
    result = cluster_contrast(sim, np.arange(1, 11), 99, 0)
    assert result.n_same == 0 and np.isnan(result.test.p_value) and np.isnan(result.test.statistic)
    evidence = core_evidence(sim, sim, np.arange(1, 11), 99, 0, 0)
    row = verdict.deciding_criteria(evidence, default_decision_rule())[1]
    assert row.p_value is None and not row.held and row.supports == "neither"


def test_ties_in_discrete_matrices_count_as_extreme():
    """Six KDs in two blocks: 72 of 720 permutations map the block matrix onto itself, so those permuted statistics
    equal the observed one up to summation order; all of them must count (the float32 null undercounted them)."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    a = (labels[:, None] == labels[None]).astype(float)
    b = a + 0.5 * (np.arange(6)[:, None] % 2 == np.arange(6)[None] % 2)
    test = mantel(a, b, 2000, 0)
    perms = np.argsort(np.random.default_rng(0).random((2000, 6)), axis=1)
    preserving = sum(np.array_equal(b, b[np.ix_(p, p)]) for p in perms)
    assert preserving > 0 and test.p_value >= (1 + preserving) / 2001
    assert p_greater(0.3, np.array([0.3 - 1e-13, 0.1])) == pytest.approx(2 / 3)


def test_weak_effect_group_is_left_out_of_the_contrast():
    rng = np.random.default_rng(6)
    sim = clustering.cosine_similarity(rng.normal(size=(12, 8)))
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    result = cluster_contrast(sim, labels, 99, 0)
    assert result.n_same + result.n_cross == 10 * 9 // 2


def test_the_mantel_statistics_read_the_strong_effect_kds_only():
    """A screen with a weak tail routing through the common direction alone (calibration's "weak-tail-cluster",
    the genome-scale failure): every Mantel statistic is Pearson r over the strong KDs' pairs (numpy oracle on the
    sub-matrices), which shows the planted cluster circuits; over all KDs the tail dilutes r well below it."""
    from analysis.datasets import calibration

    world = calibration.draw_world(np.random.default_rng(1), "weak-tail-cluster")
    strong = np.flatnonzero(world.labels > 0)
    assert 0.25 * len(world.labels) < len(world.labels) - len(strong) < 0.6 * len(world.labels)
    evidence = routing_evidence(world.c_out, world.c_jac, world.c_rep, world.labels, 99, 50, 0)
    _, spec = decompose(world.c_jac)
    sub = np.ix_(strong, strong)

    def r(a, b):
        return pearsonr(upper(a), upper(b))[0]

    assert (evidence.n_kds, evidence.n_strong, evidence.n_pairs) == (len(world.labels), len(strong),
                                                                     len(strong) * (len(strong) - 1) // 2)
    assert evidence.mantel_pearson.statistic == pytest.approx(r(world.c_out[sub], spec[sub]), abs=1e-10)
    assert evidence.mantel_spearman.statistic == pytest.approx(
        spearmanr(upper(world.c_out[sub]), upper(spec[sub]))[0], abs=1e-10)
    assert evidence.raw_mantel.statistic == pytest.approx(r(world.c_out[sub], world.c_jac[sub]), abs=1e-10)
    assert evidence.mantel_out_rep.statistic == pytest.approx(r(world.c_out[sub], world.c_rep[sub]), abs=1e-10)
    assert evidence.keyed_lookup_r == pytest.approx(r(world.c_jac[sub], world.c_out[sub] * world.c_rep[sub]),
                                                    abs=1e-10)
    assert evidence.pearson_ci[0] < evidence.mantel_pearson.statistic < evidence.pearson_ci[1]
    assert r(world.c_out, spec) < evidence.mantel_pearson.statistic - 0.3
    assert verdict.decide(evidence, default_decision_rule()).call == "cluster circuits"


def test_response_shares_against_explicit_parts():
    """c_k = (J_k·ĝ) ĝ Δp_k and s_k = J_k Δp_k − c_k from explicit vectors (the oracle), against `common_loadings`
    (from the Gram alone) and `response_shares`; and the planted extremes: one map for every KD produces the whole
    response through the common routing; a common direction orthogonal to every Δp_k produces none of it."""
    rng = np.random.default_rng(4)
    n_kds, genes, hidden = 12, 7, 5
    jac = rng.normal(size=(n_kds, genes, hidden)) + 2 * rng.normal(size=(genes, hidden))
    delta_p = rng.normal(size=(n_kds, hidden))
    flat = jac.reshape(n_kds, -1)
    gram = flat @ flat.T
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    common = unit.sum(axis=0) / np.linalg.norm(unit.sum(axis=0))
    along = flat @ common
    assert np.allclose(common_loadings(gram), along)
    produced = np.einsum("kgh,kh->kg", jac, delta_p)
    c = along[:, None] * (delta_p @ common.reshape(genes, hidden).T)
    labels = np.repeat([1, 2, 3], 4)
    summary, frame = response_shares(along, common.reshape(genes, hidden), delta_p, produced, produced, labels)
    share = np.linalg.norm(produced - c, axis=1) / np.linalg.norm(produced, axis=1)
    assert np.allclose(frame["specific_share"], share)
    assert np.allclose(frame["common_share"], np.linalg.norm(c, axis=1) / np.linalg.norm(produced, axis=1))
    assert summary.specific_median == pytest.approx(np.median(share)) and np.allclose(frame["explained"], 1.0)

    one_map = np.broadcast_to(jac[0], jac.shape) * rng.uniform(0.5, 2, size=(n_kds, 1, 1))  # gains differ, routing not
    flat = one_map.reshape(n_kds, -1)
    summary, _ = response_shares(common_loadings(flat @ flat.T), jac[0] / np.linalg.norm(jac[0]), delta_p,
                                 np.einsum("kgh,kh->kg", one_map, delta_p), np.einsum("kgh,kh->kg", one_map, delta_p),
                                 labels)
    assert summary.specific_median < 1e-9 and summary.common_median == pytest.approx(1.0)

    # the common direction reads an input coordinate no Δp_k moves: most of the energy, none of the response
    blind = np.zeros((genes, hidden))
    blind[:, 0] = 10 * rng.normal(size=genes)
    noise = 0.3 * rng.normal(size=(n_kds, genes, hidden))
    routed = blind + noise - noise.mean(axis=0)  # centred: no KD-specific part leaks into ĝ (12 KDs would leak 1/√12)
    delta_p[:, 0] = 0.0
    flat = routed.reshape(n_kds, -1)
    gram = flat @ flat.T
    assert decompose(gram)[0].common_share > 0.9
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    direction = (unit.sum(axis=0) / np.linalg.norm(unit.sum(axis=0))).reshape(genes, hidden)
    produced = np.einsum("kgh,kh->kg", routed, delta_p)
    summary, _ = response_shares(common_loadings(gram), direction, delta_p, produced, produced, labels)
    assert summary.common_median < 0.05 and summary.specific_median > 0.95


# ---------------------------------------------------------------- the call, from records built by hand
RULE = default_decision_rule()
# Deciding rows that clearly support one model under the default rule (α 0.05; r > 0.3, contrast ≥ 0.5 SD and
# same − cross ≥ 0.1; ruled out: bound < 0.1 on the r scale): B = significant and large; A = the one-sided bound
# (statistic + 1.645 SE; for the contrast × √(q(1 − q)), q = 20/190 same-cluster pairs) below the margin.
MANTEL_B = StudentizedTest(0.6, 0.05, 0.001, 999)  # p < α, r > 0.3
MANTEL_A = StudentizedTest(0.0, 0.02, 0.6, 999)  # bound 0.033 < 0.1
CONTRAST_B = StudentizedTest(2.0, 0.3, 0.001, 999)  # p < α, 2 SD ≥ 0.5
CONTRAST_A = StudentizedTest(0.0, 0.1, 0.5, 999)  # bound 0.164 SD = r 0.050 < 0.1
SPREAD = Spread(jac_sd=0.2, jac_mean=0.1, out_sd=0.3, out_mean=0.2)


SPLIT = Decomposition(common_share=0.3, specific_share=0.7, spec_mean=0.1, spec_sd=0.2)


def evidence(mantel, contrast, spread=SPREAD, decomposition=SPLIT):
    cluster = ClusterContrast(n_same=20, n_cross=170, mean_same=0.3, mean_cross=0.1, difference=0.2, spread=0.2,
                              auc=0.7, rank_sum_p=0.01, test=contrast, pair_share=20 / 190)
    return RoutingEvidence(n_kds=20, n_strong=20, n_pairs=190, mantel_pearson=mantel, mantel_spearman=mantel,
                           pearson_ci=(0.1, 0.5), contrast=cluster, spread=spread, decomposition=decomposition)


def test_the_default_rule_is_the_one_these_records_were_built_for():
    assert (RULE.alpha, RULE.min_r, RULE.equivalence_r, RULE.min_contrast, RULE.min_specific_share,
            RULE.min_response_share, RULE.global_share, RULE.min_cluster_share) == (0.05, 0.3, 0.1, 0.5, 1e-4, 0.2,
                                                                                  0.5, 0.1)


@pytest.mark.parametrize("mantel, contrast, call", [
    (MANTEL_B, CONTRAST_B, "cluster circuits"), (MANTEL_A, CONTRAST_A, "per-KD"),  # common share 0.3 < 0.5
    (MANTEL_B, CONTRAST_A, "mixed"), (MANTEL_A, CONTRAST_B, "mixed"),
    (MANTEL_B, StudentizedTest(2.0, 0.3, 0.2, 999), "inconclusive"),  # contrast: not significant, bound 2.5 ≥ 0.5
])
def test_the_call_follows_what_each_deciding_row_supports(mantel, contrast, call):
    result = verdict.decide(evidence(mantel, contrast), RULE)
    expected_supports = {MANTEL_B: "Model B", MANTEL_A: "Model A"}[mantel], \
        {CONTRAST_B: "Model B", CONTRAST_A: "Model A"}.get(contrast, "neither")
    assert result.call == call and result.degenerate_matrix == ""
    # both rows ruled out with a common share above global_share: one routing for all KDs
    if call == "per-KD":
        common = Decomposition(common_share=0.8, specific_share=0.2, spec_mean=0.1, spec_sd=0.2)
        assert verdict.decide(evidence(mantel, contrast, decomposition=common), RULE).call == "global readout"
    assert tuple(c.supports for c in result.deciding) == expected_supports
    q = 20 / 190  # the contrast row reads on the r scale: the standardized difference × √(q(1 − q))
    assert [c.value for c in result.deciding] == [mantel.statistic, pytest.approx(contrast.statistic * np.sqrt(q * (1 - q)))]


def shares(specific, explained=0.99):
    return ResponseShares(n_kds=20, common_median=1 - specific, specific_median=specific, specific_q90=specific * 1.5,
                          explained_median=explained)


def test_the_response_shares_decide_whether_kd_specific_structure_is_read():
    """What produces the responses decides first: a KD-specific routing that produces 5 % of each response is one
    global readout whatever the rows show (an early-stopped run just above the energy floor); at 34 % the rows decide
    (cluster circuits); ruled-out rows with a material KD-specific share are per-KD whatever the energy share; where
    the first order explains less than half of ΔY_k the shares are not read and the energy rule stands."""
    from dataclasses import replace as with_

    common = Decomposition(common_share=0.9999, specific_share=1.08e-4, spec_mean=0.1, spec_sd=0.2)
    base = evidence(MANTEL_B, CONTRAST_B, decomposition=common)
    result = verdict.decide(with_(base, response=shares(0.011)), RULE)
    assert (result.call, result.degenerate_matrix) == ("global readout", "response")
    row = next(c for c in result.criteria if c.id == "response_share")
    assert row.family == "decides_share" and not row.held and row.params["read"]
    assert verdict.decide(with_(base, response=shares(0.34)), RULE).call == "cluster circuits"
    assert verdict.decide(with_(base, response=shares(0.011, explained=0.3)), RULE).call == "cluster circuits"
    ruled_out = evidence(MANTEL_A, CONTRAST_A, decomposition=Decomposition(0.8, 0.2, 0.1, 0.2))
    assert verdict.decide(ruled_out, RULE).call == "global readout"  # no response shares: the energy rule
    assert verdict.decide(with_(ruled_out, response=shares(0.4)), RULE).call == "per-KD"
    assert verdict.decide(with_(ruled_out, response=shares(0.1)), RULE).call == "global readout"


def test_cluster_circuits_need_outputs_that_cluster_at_all():
    """Both rows showing cluster sharing is cluster circuits only where the outputs cluster beyond a Gaussian with
    their covariance; else graded routing (routing tracks output similarity, with no clusters to share it within)."""
    from dataclasses import replace as with_

    from analysis.results import ClusterExistence

    base = with_(evidence(MANTEL_B, CONTRAST_B), response=shares(0.36))
    clustered = ClusterExistence(0.6, 0.3, 0.35, 0.025, 39, 20, 0.95)
    unclustered = ClusterExistence(0.25, 0.24, 0.3, 0.4, 39, 20, 0.70)
    assert verdict.decide(with_(base, output_clusters=clustered), RULE).call == "cluster circuits"
    result = verdict.decide(with_(base, output_clusters=unclustered), RULE)
    assert result.call == "graded routing"
    row = next(c for c in result.criteria if c.id == "output_clusters")
    assert row.family == "decides_clusters" and not row.held and row.p_value == 0.4
    ruled_out = with_(evidence(MANTEL_A, CONTRAST_A), response=shares(0.4), output_clusters=unclustered)
    assert verdict.decide(ruled_out, RULE).call == "per-KD"  # only a cluster-circuits call needs clusters


def test_responses_all_alike_are_degenerate_on_c_out_whatever_the_rows_support():
    """The KD-specific share of unit-norm ΔY, (K − 1)/K · (1 − mean C_out) = 0.95 · 1e-5 < 1e-4: every KD responds the
    same way; the rows (here cluster circuits) are not read. Well above the floor (mean C_out 0.98) the rows decide
    again. A KD-specific Jacobian share below the floor is one global readout, whatever the rows say."""
    alike = Spread(jac_sd=0.2, jac_mean=0.1, out_sd=0.001, out_mean=0.99999)
    result = verdict.decide(evidence(MANTEL_B, CONTRAST_B, alike), RULE)
    assert (result.call, result.degenerate_matrix) == ("degenerate", "C_out")
    assert len(result.deciding) == 2  # the rows are still shown
    near = Spread(jac_sd=0.2, jac_mean=0.1, out_sd=0.01, out_mean=0.98)
    assert verdict.decide(evidence(MANTEL_B, CONTRAST_B, near), RULE).call == "cluster circuits"
    one_map = Decomposition(common_share=1 - 2.5e-6, specific_share=2.5e-6, spec_mean=0.1, spec_sd=0.2)
    result = verdict.decide(evidence(MANTEL_B, CONTRAST_B, decomposition=one_map), RULE)
    assert (result.call, result.degenerate_matrix) == ("global readout", "C_jac")


# ---------------------------------------------------------------- the pathway an axis shows on both sides
def hits(*rows):
    return pd.DataFrame(rows, columns=["library", "term", "fdr", "nes"])


def test_matched_pathway_same_term_overlapping_terms_or_none():
    libraries = {"GO": {"translation": list("ABCDEFGH"), "spliceosome": list("STUVWXYZ")},
                 "H": {"RIBOSOME": list("ABCDEFIJ"),  # Jaccard with translation: 6 / 10 = 0.6
                       "MYC": list("ABKLMNOP")}}  # with translation: 2 / 14 = 0.14
    genes = hits(("GO", "translation", 0.001, 2.0), ("GO", "spliceosome", 0.5, 1.5))
    # The same term on both sides.
    label, g, k = enrichment.matched_pathway(genes, hits(("GO", "translation", 0.01, 1.8)), libraries, 0.05)
    assert label == "translation" and g["term"] == k["term"] == "translation"
    # Different terms whose gene sets overlap (Jaccard 0.6 ≥ 0.25): named as a pair.
    label, g, k = enrichment.matched_pathway(genes, hits(("H", "RIBOSOME", 0.02, 1.1)), libraries, 0.05)
    assert label == "translation ~ RIBOSOME" and (g["library"], k["library"]) == ("GO", "H")
    # None: overlap too small (0.14), KD side at the low end (NES < 0), or a side not significant.
    for kds in (hits(("H", "MYC", 0.001, 2.0)), hits(("GO", "translation", 0.001, -2.0)),
                hits(("GO", "spliceosome", 0.001, 2.0)), hits(("GO", "translation", 0.2, 2.0))):
        assert enrichment.matched_pathway(genes, kds, libraries, 0.05) == ("", None, None)
    # Two candidates: the one whose worse FDR is smaller wins.
    kds = hits(("H", "RIBOSOME", 0.002, 1.1), ("GO", "translation", 0.03, 1.8))
    assert enrichment.matched_pathway(genes, kds, libraries, 0.05)[0] == "translation ~ RIBOSOME"


# ---------------------------------------------------------------- the SVD of ΔY
def test_output_svd_against_numpy_with_the_documented_signs():
    rng = np.random.default_rng(3)
    delta_y = rng.normal(size=(12, 30)) * rng.uniform(0.1, 10, size=(12, 1))  # rows of very different norms
    delta_y[4] = 0.0  # a KD without effect stays a zero row, not NaN
    scores, loadings = axes.output_svd(delta_y, 3)
    norms = np.linalg.norm(delta_y, axis=1)
    unit = np.divide(delta_y, norms[:, None], out=np.zeros_like(delta_y), where=norms[:, None] > 0)
    u, s, vt = np.linalg.svd(unit)
    assert scores.shape == (12, 3) and loadings.shape == (3, 30) and np.all(np.isfinite(scores))
    for a in range(3):
        # numpy's axis up to one sign, that sign making the KD with the largest |score| positive
        sign = np.sign(u[np.argmax(np.abs(u[:, a])), a])
        assert np.allclose(scores[:, a], sign * s[a] * u[:, a]) and np.allclose(loadings[a], sign * vt[a])
        assert scores[np.argmax(np.abs(scores[:, a])), a] > 0
    assert np.allclose(scores @ loadings, (u[:, :3] * s[:3]) @ vt[:3])  # the rank-3 approximation of unit ΔY
    assert axes.output_svd(delta_y, 50)[0].shape == (12, 12)  # no more axes than KDs


# ---------------------------------------------------------------- common and KD-specific routing (issue 18)
def test_common_share_against_explicit_vectors_and_gain_free():
    """The common share from the Gram equals Σ_k (u_k·ĝ)² / K computed on explicit unit vectors (ĝ: direction of
    their mean); rescaling a KD's Jacobian (its gain) changes nothing."""
    rng = np.random.default_rng(1)
    g = rng.normal(size=300)
    jac = np.sqrt(0.97) * g / np.linalg.norm(g) + np.sqrt(0.03) * rng.normal(size=(30, 300)) / np.sqrt(300)
    u = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    direction = u.mean(axis=0) / np.linalg.norm(u.mean(axis=0))
    expected = np.mean((u @ direction) ** 2)
    gains = rng.lognormal(0, 1, size=30)
    for gram in (jac @ jac.T, (gains[:, None] * jac) @ (gains[:, None] * jac).T):
        d, spec = decompose(gram)
        assert d.common_share == pytest.approx(expected, abs=1e-12)
        assert d.common_share + d.specific_share == pytest.approx(1.0)
        assert 0.95 < d.common_share < 0.99 and np.allclose(np.diag(spec), 1.0)


def test_one_routing_for_every_kd_has_no_specific_share():
    """Identical Jacobians up to float32 rounding: KD-specific share at the rounding level, far below the floor."""
    rng = np.random.default_rng(2)
    jac = np.tile(rng.normal(size=(1, 500)), (20, 1)).astype(np.float32).astype(np.float64)
    jac *= rng.uniform(0.5, 2.0, size=(20, 1))
    d, _ = decompose(jac @ jac.T)
    assert d.specific_share < 1e-6 < default_decision_rule().min_specific_share * 1e-2 + 1e-6


def test_specific_matrix_finds_modules_under_a_common_component():
    """A 98 % common component plus module-shared routing (KD-specific energy 0.02: module 0.01, own 0.01): raw
    C_jac ≈ 0.98 everywhere. Removing the common direction also removes the modules' mean, so each of 4 balanced
    modules keeps 3/4 of its energy (0.0075) and is −1/3 correlated with the others: same − cross in C_jac^spec =
    (0.0075 + 0.0025) / (0.0075 + 0.01) = 0.571, derived by hand."""
    rng = np.random.default_rng(3)
    dim, n = 4000, 40
    module = np.arange(n) % 4
    g = rng.normal(size=dim)
    modules = rng.normal(size=(4, dim))
    own = rng.normal(size=(n, dim))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    u = np.sqrt(0.98) * unit(g) + np.sqrt(0.01) * (unit(modules)[module] + unit(own))
    d, spec = decompose(u @ u.T)
    same = (module[:, None] == module[None]) & ~np.eye(n, dtype=bool)
    cross = module[:, None] != module[None]
    assert d.common_share == pytest.approx(0.98, abs=0.005)
    assert spec[same].mean() - spec[cross].mean() == pytest.approx(0.01 / 0.0175, abs=0.04)
    raw = u @ u.T
    assert raw[same].mean() - raw[cross].mean() < 0.011  # the raw matrix shows ~0.01


def test_specific_matrix_does_not_follow_a_noise_level_shared_within_modules():
    """Identical routing up to noise whose size is set per module (σ ratio 1 : 7 across modules): centring alone
    (cos(u_k − ū, u_l − ū)) leaves a module structure of order 1/K (same − cross ≈ 0.09 here); the KD-specific
    matrix removes the additive part of it and keeps under a tenth (≈ 0.004 measured over 30 replicates: a
    multiplicative remainder ∝ 1/(K σ_k σ_l)), far below min_cluster_share (0.1)."""
    rng = np.random.default_rng(4)
    dim, n = 2000, 40
    module = np.arange(n) % 4
    centred_gaps, gaps = [], []
    for _ in range(30):
        sigma = (0.14 * np.array([0.3, 0.6, 1.2, 2.0]))[module]
        u = rng.normal(size=dim) / np.sqrt(dim) + sigma[:, None] * rng.normal(size=(n, dim)) / np.sqrt(dim)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        _, spec = decompose(u @ u.T)
        centred = u - u.mean(axis=0)
        c = clustering.cosine_similarity(centred)
        same = (module[:, None] == module[None]) & ~np.eye(n, dtype=bool)
        cross = module[:, None] != module[None]
        gaps.append(spec[same].mean() - spec[cross].mean())
        centred_gaps.append(c[same].mean() - c[cross].mean())
    gaps, centred_gaps = np.array(gaps), np.array(centred_gaps)
    se = gaps.std(ddof=1) / np.sqrt(len(gaps))
    print(f"same − cross: centred {centred_gaps.mean():.4f}, KD-specific {gaps.mean():.4f} ± {se:.4f}")
    assert abs(gaps.mean()) < 0.1 * centred_gaps.mean() and gaps.mean() + 3 * se < default_decision_rule().min_cluster_share / 10


def test_within_cluster_mantel_separates_graded_from_block_sharing():
    """Block-only sharing (routing = the cluster's, outputs graded within clusters): the within-cluster Mantel
    rejects at about α (40 replicates, ≤ 5 of 40); graded tracking within clusters: it rejects."""
    rng = np.random.default_rng(5)
    n = 40
    labels = np.arange(n) % 4 + 1
    rejections = 0
    for _ in range(40):
        out = rng.normal(size=(4, 60))[labels - 1] + 0.8 * rng.normal(size=(n, 60))
        jac = rng.normal(size=(4, 60))[labels - 1] + 0.8 * rng.normal(size=(n, 60))  # block + independent noise
        test = within_cluster_mantel(clustering.cosine_similarity(out), clustering.cosine_similarity(jac),
                                     labels, 99, 0)
        rejections += test.p_value < 0.05
    assert rejections <= 5, rejections
    out = rng.normal(size=(4, 60))[labels - 1] + 0.8 * rng.normal(size=(n, 60))
    jac = out + 0.3 * rng.normal(size=out.shape)  # routing follows each KD's own output, within clusters too
    graded = within_cluster_mantel(clustering.cosine_similarity(out), clustering.cosine_similarity(jac),
                                   labels, 99, 0)
    assert graded.statistic > 0.5 and graded.p_value <= 0.01


def test_routing_by_depth_finds_the_block_where_cluster_sharing_forms(tmp_path):
    """Planted depth: 60 KDs in 4 output modules, 3 blocks of block Jacobians [D = 8, H = 6] written as the pipeline
    writes shards. Block 1: one map for every KD (I + 1e-9 noise); block 2: a common map plus KD-specific parts
    unrelated to the modules; block 3: a common map plus module-shared parts. The readings, by the default rule,
    must be common only / not cluster-shared / cluster-shared, and block 3's r the one that tracks C_out."""
    rng = np.random.default_rng(5)
    n, dim, hidden, modules = 60, 8, 6, np.arange(60) % 4
    labels = modules + 1
    common = rng.normal(size=(dim, hidden))
    shared = rng.normal(size=(4, dim, hidden))
    identity = np.eye(dim, hidden)[None] + 1e-9 * rng.normal(size=(n, dim, hidden))
    own = common + 0.8 * rng.normal(size=(n, dim, hidden))
    clustered = common + 0.8 * shared[modules] + 0.3 * rng.normal(size=(n, dim, hidden))
    stacked = np.stack([identity, own, clustered], axis=1)  # [K, L, D, H]
    for s, start in enumerate(range(0, n, 16)):
        part = stacked[start:start + 16]
        cache.write_npz(tmp_path / f"shard_{s:05d}.npz", jacobian=np.zeros((len(part), 3, 2), np.float32),
                        block_jacobian=part.astype(np.float32), kd_index=np.arange(start, start + len(part)),
                        linear_prediction=np.zeros((len(part), 3)))
    shards = open_shards(tmp_path)
    assert shards.n_blocks == 3 and shards.block(2).shape == (dim, hidden)
    with pytest.raises(IndexError, match="block 3"):
        shards.block(3)
    out = rng.normal(size=(4, 30))[modules] + 0.5 * rng.normal(size=(n, 30))
    c_out = clustering.cosine_similarity(out)
    rule = default_decision_rule()
    depth = verdict.read_depth(routing_by_depth([shards.block(b) for b in range(3)], c_out, labels, 199, 0),
                               rule)
    assert [d.block for d in depth] == [1, 2, 3]
    assert depth[0].reading == "common only" and depth[0].decomposition.common_share > 1 - 1e-6
    assert depth[1].reading != "cluster-shared" and depth[1].mantel.p_value > 0.01
    assert depth[2].reading == "cluster-shared" and depth[2].mantel.statistic > 0.5
    # the Gram each block is read from is the block's own: cos of the flattened block Jacobians
    flat = stacked[:, 2].reshape(n, -1)
    assert np.allclose(cosine_from_gram(stream_gram(shards.block(2))),
                       clustering.cosine_similarity(flat), atol=1e-6)
