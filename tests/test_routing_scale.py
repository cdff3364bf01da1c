"""The routing statistics at genome scale: the normal reference against independent oracles and its size under a
structured null world, the blocked computations against unblocked ones, the bootstrap CI against the resampling
loop, float32 storage, and the switch between the references."""

import dataclasses

import numpy as np
import pytest
from scipy.spatial.distance import squareform
from scipy.stats import norm, pearsonr

from analysis.config import InputError, default_decision_rule, load_config
from analysis.datasets import calibration
from analysis.stats import clustering, pairs, verdict
from analysis.stats.contrast import _rank_sum_greater, cluster_contrast
from analysis.stats.decomposition import decompose
from analysis.stats.evidence import core_evidence, routing_evidence
from analysis.stats.mantel import kd_bootstrap_ci, mantel, partial_mantel, within_cluster_mantel
from analysis.stats.nulls import BORDERLINE, borderline_rule, refer
from analysis.stats.pairs import rank_matrix, upper
from analysis.present.wording import words


# ---------------------------------------------------------------- oracles, written from the definitions
def additive_fit(matrix):
    """Off-diagonal pairs of a symmetric matrix as mean + α_k + α_l + rest, α by least squares with Σ α = 0 (lstsq on
    the pair design matrix with the constraint as one more row, not the closed form the code uses)."""
    n = len(matrix)
    i, j = np.triu_indices(n, 1)
    values = matrix[i, j].astype(np.float64)
    design = np.zeros((len(i) + 1, n))
    design[np.arange(len(i)), i] = design[np.arange(len(i)), j] = 1.0
    design[-1] = 1.0  # Σ α = 0 pins the direction the pair design cannot see
    centred = values - values.mean()
    alpha = np.linalg.lstsq(design, np.append(centred, 0.0), rcond=None)[0]
    return centred, alpha, centred - alpha[i] - alpha[j]


def oracle_z(x, y):
    """T / √V̂ by its definition, pair by pair: T = Σ_{k<l} (x − x̄)(y − ȳ); V̂ = (n − 2)² Σ α²β² + Σ_{k<l} [x'² +
    λ (2 α_k α_l + 2 (α_k + α_l) x')] y'², λ = min(1, (n − 2)² Σ β² / (2 Σ_{k<l} y'²)); x fixed, y permuted."""
    n = len(x)
    i, j = np.triu_indices(n, 1)
    cx, alpha, rest_x = additive_fit(x)
    cy, beta, rest_y = additive_fit(y)
    total = float(cx @ cy)
    # the decomposition is exact: T = (n − 2)·⟨α, β⟩ + Σ x' y'
    assert total == pytest.approx((n - 2) * alpha @ beta + rest_x @ rest_y, rel=1e-9, abs=1e-9)
    share = min(1.0, (n - 2) ** 2 * np.sum(beta**2) / (2 * np.sum(rest_y**2)))
    weights = rest_x**2 + share * (2 * alpha[i] * alpha[j] + 2 * (alpha[i] + alpha[j]) * rest_x)
    return total / np.sqrt((n - 2) ** 2 * np.sum(alpha**2 * beta**2) + np.sum(weights * rest_y**2))


def matrices(rng, n, shared=0.3):
    base = rng.normal(size=(n, 12))
    return (clustering.cosine_similarity(base + rng.normal(size=(n, 12))),
            clustering.cosine_similarity(shared * base + rng.normal(size=(n, 12))))


def test_normal_reference_mantel_p_is_the_normal_tail_of_the_oracle_z():
    rng = np.random.default_rng(0)
    a, b = matrices(rng, 31)
    test = mantel(a, b, 0, 0, "pearson", "normal")
    assert test.reference == "normal" and test.n_permutations == 0
    assert test.p_value == pytest.approx(norm.sf(oracle_z(a, b)), rel=1e-10)
    # statistic and SE are the same as under the permutation reference
    permuted = mantel(a, b, 99, 0)
    assert (test.statistic, test.standard_error) == pytest.approx((permuted.statistic, permuted.standard_error), rel=1e-12)
    assert test.statistic == pytest.approx(pearsonr(upper(a), upper(b))[0])
    ranks = mantel(a, b, 0, 0, "spearman", "normal")
    assert ranks.p_value == pytest.approx(norm.sf(oracle_z(rank_matrix(a), rank_matrix(b))), rel=1e-10)


def test_normal_reference_contrast_reads_the_difference_as_a_pair_sum():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2, 3], [4, 9, 7, 6])
    sim = clustering.cosine_similarity(np.eye(4)[labels] + 0.9 * rng.normal(size=(26, 4)))
    result = cluster_contrast(sim, labels, 0, 0, "normal")
    keep = labels > 0
    lab, sub = labels[keep], sim[np.ix_(keep, keep)]
    same = lab[:, None] == lab[None, :]
    i, j = np.triu_indices(len(lab), 1)
    weights = np.where(same, 1 / same[i, j].sum(), -1 / (~same[i, j]).sum())
    assert result.difference == pytest.approx(sub[i, j] @ weights[i, j], rel=1e-10)
    assert result.test.p_value == pytest.approx(norm.sf(oracle_z(weights, sub)), rel=1e-10)
    assert result.test.reference == "normal" and result.test.n_permutations == 0
    permuted = cluster_contrast(sim, labels, 99, 0)
    assert (result.test.statistic, result.test.standard_error, result.auc) == pytest.approx(
        (permuted.test.statistic, permuted.test.standard_error, permuted.auc), rel=1e-12)


def test_normal_reference_within_cluster_mantel_sums_the_clusters_blocks():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2, 3], [3, 8, 6, 2])  # a two-KD cluster: one pair, constant under its permutations
    a, b = matrices(rng, len(labels))
    test = within_cluster_mantel(a, b, labels, 0, 0, "normal")
    totals, variances = [], []
    for c in (1, 2):
        block = np.flatnonzero(labels == c)
        x, y = a[np.ix_(block, block)], b[np.ix_(block, block)]
        z = oracle_z(x, y)
        cx, cy = additive_fit(x)[0], additive_fit(y)[0]
        totals.append(cx @ cy)
        variances.append((cx @ cy / z) ** 2)
    assert test.p_value == pytest.approx(norm.sf(sum(totals) / np.sqrt(sum(variances))), rel=1e-10)
    permuted = within_cluster_mantel(a, b, labels, 99, 0)
    assert (test.statistic, test.standard_error) == pytest.approx((permuted.statistic, permuted.standard_error),
                                                                  rel=1e-12)


def test_within_cluster_permutations_match_a_loop_over_masked_matrices():
    """The cluster-block permutations against the whole masked matrices, the same seeded permutations (each cluster's
    positions shuffled in turn by one generator)."""
    rng = np.random.default_rng(4)
    labels = np.repeat([2, 0, 1, 3], [6, 3, 7, 5])
    a, b = matrices(rng, len(labels), shared=0.2)
    keep = labels > 0
    lab, sub_a, sub_b = labels[keep], a[np.ix_(keep, keep)], b[np.ix_(keep, keep)]
    mask = (lab[:, None] == lab[None, :]) & ~np.eye(len(lab), dtype=bool)

    def studentized(moved):
        def r(drop=None):
            keep_pair = mask.copy()
            if drop is not None:
                keep_pair[drop, :] = keep_pair[:, drop] = False
            upper = np.triu(keep_pair, 1)
            return pearsonr(sub_a[upper], moved[upper])[0]
        loo = np.array([r(k) for k in range(len(lab))])
        return r() / np.sqrt((len(lab) - 1) / len(lab) * ((loo - loo.mean()) ** 2).sum())

    generator = np.random.default_rng(8)
    groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    null = []
    for _ in range(30):
        perm = np.arange(len(lab))
        for g in groups:
            perm[g] = generator.permutation(g)
        null.append(studentized(sub_b[np.ix_(perm, perm)]))
    test = within_cluster_mantel(a, b, labels, 30, 8)
    assert test.statistic / test.standard_error == pytest.approx(studentized(sub_b), rel=1e-10)
    assert test.p_value == pytest.approx((1 + np.sum(np.array(null) >= studentized(sub_b) - 1e-9)) / 31)


def test_normal_reference_partial_mantel_reads_the_residual_matrix():
    rng = np.random.default_rng(3)
    a, b = matrices(rng, 25)
    c = clustering.cosine_similarity(rng.normal(size=(25, 6)))
    test = partial_mantel(a, b, c, 0, 0, "normal")

    def z_scores(m):
        u = upper(m)
        return squareform((u - u.mean()) / u.std())

    r_bc = pearsonr(upper(b), upper(c))[0]
    assert test.p_value == pytest.approx(norm.sf(oracle_z(z_scores(b) - r_bc * z_scores(c), a)), rel=1e-9)
    assert test.statistic == pytest.approx(partial_mantel(a, b, c, 99, 0).statistic, rel=1e-12)


# ---------------------------------------------------------------- why not r / jackknife SE, and the size
N_NULL = 400  # size of a valid test at α = 0.05 over 400 replicates: 5 % ± 1.09 % (binomial SE)


@pytest.fixture(scope="module")
def null_tests():
    """The Mantel on C_jac^spec in N_NULL replicates of the calibration's "independent" null world at K = 200 (KD hub
    effects: pairs sharing a KD dependent; clusters from cluster_kds), normal reference."""
    rng = np.random.default_rng(11)
    tests = []
    for _ in range(N_NULL):
        w = calibration.draw_world(rng, "independent", 200)
        tests.append(mantel(w.c_out, decompose(w.c_jac)[1], 0, 0, "pearson", "normal"))
    return tests


def test_normal_reference_keeps_its_level_in_a_structured_null_world(null_tests):
    """400 replicates: a test of size exactly 5 % lands in [2 %, 8 %] (5 % ± 2.75 SE) with probability > 99 %.
    Measured 5.25 % (21 of 400); benchmarks/normal_reference.py reports every null world and test against full
    permutation."""
    size = np.mean([t.p_value < 0.05 for t in null_tests])
    assert 0.02 <= size <= 0.08, size


def test_r_over_its_jackknife_se_would_not_be_standard_normal(null_tests):
    """The reason for the Hoeffding SE: C_jac^spec has no KD main effects, and there the delete-one jackknife counts
    each pair's variance twice, so r / SE has SD ≈ 1/√2 and N(0, 1) would reject ≈ 1 %, not 5 % (measured on these
    400 replicates: SD 0.75, 1.0 %)."""
    z = np.array([t.statistic / t.standard_error for t in null_tests])
    assert np.std(z) < 0.8 and np.mean(norm.sf(z) < 0.05) < 0.025


def test_normal_reference_finds_planted_sharing():
    """sharing-r0.1 at K = 200: each KD's routing 2.5 % its output module's (true Mantel r ≈ 0.11, just above the
    smallest effect of interest); 20 replicates, every one must reject (the Mantel's z ≈ 7 here)."""
    rng = np.random.default_rng(12)
    for _ in range(20):
        w = calibration.draw_world(rng, "sharing-r0.1", 200)
        spec = decompose(w.c_jac)[1]
        assert mantel(w.c_out, spec, 0, 0, "pearson", "normal").p_value < 0.05
        assert cluster_contrast(spec, w.labels, 0, 0, "normal").test.p_value < 0.05


# ---------------------------------------------------------------- blocks, bootstrap, float32
@pytest.fixture
def world():
    return calibration.draw_world(np.random.default_rng(5), "lookup-hetero", 90)


def evidence_values(evidence):
    """Every float of a RoutingEvidence, flattened (records and tuples recursively)."""
    values = []

    def walk(value):
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif isinstance(value, (float, int, np.floating)) and not isinstance(value, bool):
            values.append(float(value))

    walk(evidence)
    return np.array(values)


@pytest.mark.parametrize("normal_reference_kds", [0, 50])
def test_blocked_statistics_equal_one_block(world, monkeypatch, normal_reference_kds):
    """Row blocks of 3 rows against one block holding the whole matrix: every statistic equal to 1e-12."""
    c_rep = clustering.cosine_similarity(np.random.default_rng(6).normal(size=(90, 5)))
    args = (world.c_out, world.c_jac, c_rep, world.labels, 99, 50, 0)
    monkeypatch.setattr(pairs, "BLOCK_BYTES", 1 << 40)
    whole = routing_evidence(*args, normal_reference_kds=normal_reference_kds)
    monkeypatch.setattr(pairs, "BLOCK_BYTES", 8 * 90 * 3)
    blocked = routing_evidence(*args, normal_reference_kds=normal_reference_kds)
    assert np.allclose(evidence_values(blocked), evidence_values(whole), rtol=1e-12, atol=1e-12, equal_nan=True)


def bootstrap_loop(a, b, n_bootstrap, seed, level=0.95):
    """The percentile KD-bootstrap as a loop over resamples: pairs of resampled positions, pairs of a KD with a copy
    of itself dropped, np.corrcoef of the drawn entries."""
    rng = np.random.default_rng(seed)
    n = len(a)
    i, j = np.triu_indices(n, k=1)
    values = np.empty(n_bootstrap)
    for t in range(n_bootstrap):
        idx = rng.integers(n, size=n)
        keep = idx[i] != idx[j]
        values[t] = np.corrcoef(a[idx[i[keep]], idx[j[keep]]], b[idx[i[keep]], idx[j[keep]]])[0, 1]
    tail = (1 - level) / 2
    return np.nanquantile(values, tail), np.nanquantile(values, 1 - tail)


def test_bootstrap_ci_as_quadratic_forms_equals_the_resampling_loop(world, monkeypatch):
    monkeypatch.setattr(pairs, "BLOCK_BYTES", 8 * 90 * 7)
    assert kd_bootstrap_ci(world.c_out, world.c_jac, 200, 4) == pytest.approx(
        bootstrap_loop(world.c_out, world.c_jac, 200, 4), rel=1e-10)
    # a raw C_jac near 1 everywhere: the z-scores keep the sums from cancelling
    near_one = 0.99 + 0.01 * world.c_jac
    assert kd_bootstrap_ci(world.c_out, near_one, 100, 4) == pytest.approx(
        bootstrap_loop(world.c_out, near_one, 100, 4), rel=1e-9)


def test_float32_storage_loses_nothing_a_test_reads(world):
    """C_out and C_jac stored as float32 (half the memory at K = 10,000): the normal reference's p-values, the
    statistics and the bounds move by less than 1e-5, and the call is the same."""
    rule = default_decision_rule()
    full = core_evidence(world.c_out, world.c_jac, world.labels, 0, 0, 0, normal_reference_kds=3)
    half = core_evidence(world.c_out.astype(np.float32), world.c_jac.astype(np.float32), world.labels, 0, 0,
                         0, normal_reference_kds=3)
    assert np.allclose(evidence_values(half), evidence_values(full), rtol=0, atol=1e-5, equal_nan=True)
    assert verdict.decide(half, rule).call == verdict.decide(full, rule).call


# ---------------------------------------------------------------- the switch
def test_the_switch_chooses_the_reference_by_k_and_the_records_say_which(world):
    studentized = ("mantel_pearson", "mantel_spearman", "raw_mantel", "partial_mantel", "mantel_out_rep")
    c_rep = clustering.cosine_similarity(np.random.default_rng(7).normal(size=(90, 5)))
    def tests_of(evidence):
        return [getattr(evidence, name) for name in studentized] + [evidence.contrast.test, evidence.raw_contrast.test]

    for switch in (90, 91, 0):
        evidence = routing_evidence(world.c_out, world.c_jac, c_rep, world.labels, 99, 0, 0,
                                    normal_reference_kds=switch)
        if switch == 90:  # N(0, 1), but a p near α is the permutation p (`BORDERLINE`)
            alone = routing_evidence(world.c_out, world.c_jac, c_rep, world.labels, 0, 0, 0,
                                     normal_reference_kds=switch)
            for test, normal in zip(tests_of(evidence), tests_of(alone)):
                near = BORDERLINE[0] <= normal.p_value <= BORDERLINE[1]
                assert (test.reference, test.n_permutations) == (("normal+permutation", 99) if near else ("normal", 0))
            assert (evidence.borderline, evidence.borderline_permutations) == (BORDERLINE, 99)
        else:
            assert {(t.reference, t.n_permutations) for t in tests_of(evidence)} == {("permutation", 99)}
            assert (evidence.borderline, evidence.borderline_permutations) == (None, 0)
        # C × C means, and the within-cluster blocks: permuted at any K
        assert evidence.cluster_level.n_permutations == 99
        assert (evidence.within_mantel.reference, evidence.within_mantel.n_permutations) == ("permutation", 99)
    rows = [words(row) for row in verdict.deciding_criteria(evidence, default_decision_rule())]
    assert "99 KD-label permutations" in rows[0].test and "99 cluster-label permutations" in rows[1].test
    normal = core_evidence(world.c_out, world.c_jac, world.labels, 99, 0, 0, normal_reference_kds=90)
    for row, test in zip(map(words, verdict.deciding_criteria(normal, default_decision_rule())),
                         (normal.mantel_pearson, normal.contrast.test)):
        assert "normal reference" in row.test
        assert ("near α 99" in row.test) if test.reference == "normal+permutation" else ("permutations" not in row.test)


def test_a_normal_p_near_alpha_is_decided_by_permutations():
    """Near α the normal tail is not trusted (`BORDERLINE`): there p is the permutation p of the same
    studentized statistic from the same seeded permutations as under the permutation reference; away from α N(0, 1)
    decides and nothing is permuted. Each test is seen both ways."""
    rng = np.random.default_rng(13)
    labels = np.repeat([0, 1, 2, 3], [4, 9, 7, 6])
    seen = set()
    for _ in range(100):
        a, b = matrices(rng, 26, shared=rng.uniform(0.0, 0.8))
        c = clustering.cosine_similarity(rng.normal(size=(26, 6)))
        runs = {"Mantel": lambda n, reference: mantel(a, b, n, 5, "pearson", reference),
                "Spearman": lambda n, reference: mantel(a, b, n, 5, "spearman", reference),
                "contrast": lambda n, reference: cluster_contrast(b, labels, n, 5, reference).test,
                "partial": lambda n, reference: partial_mantel(a, b, c, n, 5, reference)}
        for name, run in runs.items():
            alone, referred = run(0, "normal"), run(49, "normal")
            near = BORDERLINE[0] <= alone.p_value <= BORDERLINE[1]
            if near:
                assert (referred.reference, referred.n_permutations) == ("normal+permutation", 49)
                assert referred.p_value == run(49, "permutation").p_value
            else:
                assert (referred.reference, referred.n_permutations, referred.p_value) == ("normal", 0, alone.p_value)
            seen.add((name, near))
        if len(seen) == 2 * len(runs):
            break
    assert len(seen) == 8, seen


def test_refer_runs_only_what_the_reference_needs():
    """`refer` is the one place the references part ways: "permutation" never computes z; "normal" permutes only a p
    near α, and only when it is given permutations; the label and count it returns say which happened."""
    def never() -> float:
        raise AssertionError("called under the other reference")

    assert refer("permutation", 99, never, lambda: 0.02) == (0.02, 99, "permutation")
    assert refer("normal", 99, lambda: 4.0, never) == (pytest.approx(norm.sf(4.0)), 0, "normal")  # far below α
    assert refer("normal", 99, lambda: 1.0, lambda: 0.3) == (0.3, 99, "normal+permutation")  # Φ̄(1) ≈ 0.16: near α
    assert refer("normal", 0, lambda: 1.0, never) == (pytest.approx(norm.sf(1.0)), 0, "normal")  # N(0, 1) alone
    assert np.isnan(refer("normal", 99, lambda: float("nan"), never)[0])
    assert borderline_rule("normal", 9999) == (BORDERLINE, 199) and borderline_rule("permutation", 9999) == (None, 0)
    # The within-cluster Mantel goes through it too: near α its p is the within-cluster permutation p.
    labels = np.repeat([0, 1, 2, 3], [4, 9, 7, 6])
    for seed, reference in ((0, "normal+permutation"), (2, "normal")):  # normal p 0.039 and 0.32
        rng = np.random.default_rng(seed)
        a, b = (clustering.cosine_similarity(rng.normal(size=(26, 5))) for _ in range(2))
        referred = within_cluster_mantel(a, b, labels, 49, 5, "normal")
        permuted = within_cluster_mantel(a, b, labels, 49, 5)
        assert referred.reference == reference
        assert (referred.p_value == permuted.p_value) == (reference == "normal+permutation")


def test_the_switch_is_a_checked_config_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nrun_dir = "r"\n[data]\nh5ad = "d.h5ad"\n[runtime]\ncache_dir = "c"\n'
                    '[statistics]\nnormal_reference_kds = 2\n')
    with pytest.raises(InputError, match="normal_reference_kds"):
        load_config(path)
    path.write_text(path.read_text().replace("= 2", "= 5000"))
    assert load_config(path).normal_reference_kds == 5000


@pytest.mark.parametrize("ties", [False, True])
def test_rank_sum_equals_scipy(ties):
    """The contrast's pair-level rank-sum (one sort instead of scipy's ranking, for 5·10⁷ pairs at K = 10,000)."""
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(9)
    values = rng.normal(size=5000) + 0.05 * (np.arange(5000) % 3 == 0)
    if ties:
        values = np.round(values, 1)  # groups of equal values, several hundred each
    chosen = np.arange(5000) % 3 == 0
    expected = mannwhitneyu(values[chosen], values[~chosen], alternative="greater")
    u, p = _rank_sum_greater(values.copy(), chosen)
    assert (u, p) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    few = np.arange(5000) < 6  # 6 chosen: scipy's exact or asymptotic choice is kept
    assert _rank_sum_greater(values.copy(), few)[1] == pytest.approx(
        mannwhitneyu(values[few], values[~few], alternative="greater").pvalue, rel=1e-12)


def test_the_report_words_the_reference_each_test_used(world):
    """The tests table and the p phrases say "normal reference" where it was used and the permutation count where
    permutations were (no "(0)" permutations, no permutation wording for a normal p)."""
    from types import SimpleNamespace

    from analysis.present.formatting import studentized_p
    from analysis.present.sections import methods

    config = load_config()
    strong = int((world.labels > 0).sum())
    for switch in (strong, 0):
        evidence = core_evidence(world.c_out, world.c_jac, world.labels, 99, 0, 0, normal_reference_kds=switch)
        results = SimpleNamespace(config=config.replace(normal_reference_kds=switch, n_permutations=99),
                                  routing=SimpleNamespace(evidence=evidence))
        table = methods.tests_table(results)
        phrase = studentized_p(evidence.mantel_pearson)
        if switch:
            assert (f"normal reference: {strong} strong-effect KDs, at least {strong}); a p between 0.001 and 0.25 is "
                    "decided instead by KD labels of one matrix permuted (99)") in table
            rows = [row for row in table.split("KD-target")[0].split("\n") if "normal reference" in row]
            assert len(rows) >= 4  # and a permutation count only for the p near α:
            assert all("(99)" not in row.split("decided instead by")[0] for row in rows)
            near = evidence.mantel_pearson.reference == "normal+permutation"
            assert phrase.endswith(", normal reference, near α 99 permutations" if near else ", normal reference")
        else:
            assert "KD labels of one matrix permuted (99)" in table and "normal reference" not in table
            assert "normal" not in phrase
