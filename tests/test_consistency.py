"""Routing across cell lines (`analysis.consistency`): cosines against direct computation, the cluster sign-flip
test against enumeration, its level under structured null worlds built to fool a KD-level test, its power on
planted differences, and the whole path through the real loader on a two-line run."""

import itertools

import numpy as np
import pytest
from tiny import KDS, tiny_config, write_tiny_run

import analysis
from analysis.datasets import demo
from analysis.errors import InputError
from analysis.model.load import load_run
from analysis.present import prose
from analysis.stats import consistency
from analysis.stats.gram import stream_gram
from analysis.store.shards import open_shards


def direct_cosine(x, y):
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return float(x @ y / (nx * ny)) if nx and ny else 0.0


def test_baseline_is_the_mean_cosine_with_the_other_kds_both_ways():
    cos = np.random.default_rng(5).uniform(-1, 1, size=(4, 4))
    matched, baseline = consistency.matched_and_baseline(cos)
    assert np.allclose(matched, np.diag(cos))
    for k in range(4):
        others = [cos[k, j] for j in range(4) if j != k] + [cos[j, k] for j in range(4) if j != k]
        assert baseline[k] == pytest.approx(np.mean(others))


def write_shards(folder, names, jac, shard_kds):
    """Shards as the pipeline stores them (kd_index into `names`), for the KDs of `names` in that order."""
    folder.mkdir()
    for i, start in enumerate(range(0, len(names), shard_kds)):
        index = np.arange(start, min(start + shard_kds, len(names)))
        np.savez(folder / f"shard_{i:05d}.npz", jacobian=jac[index].astype(np.float32), kd_index=index,
                 linear_prediction=np.zeros((len(index), jac.shape[1])))
    return open_shards(folder)


def test_cross_gram_and_norms_from_shards_of_different_orders_and_shardings(tmp_path):
    rng = np.random.default_rng(1)
    names_a = tuple(f"K{i}" for i in range(9))
    names_b = tuple(reversed(names_a[2:]))  # another order, two KDs missing
    jac_a = rng.normal(size=(9, 5, 4))
    jac_b = np.stack([jac_a[names_a.index(k)] + rng.normal(scale=0.5, size=(5, 4)) for k in names_b])
    shards_a = write_shards(tmp_path / "a", names_a, jac_a, 4)
    shards_b = write_shards(tmp_path / "b", names_b, jac_b, 3)
    flat_a = jac_a.astype(np.float32).reshape(9, -1).astype(np.float64)
    flat_b = jac_b.astype(np.float32).reshape(7, -1).astype(np.float64)
    assert np.allclose(stream_gram(shards_a, memory_bytes=200, other=shards_b), flat_a @ flat_b.T, atol=1e-9)
    # The norms the stage takes from Part 3 (the Gram's diagonal) are the shards' own.
    assert np.allclose(np.sqrt(np.diag(stream_gram(shards_b))), np.linalg.norm(flat_b, axis=1), atol=1e-9)


def test_a_component_common_to_all_jacobians_does_not_pass_for_consistent_routing(tmp_path):
    """A world built to fool raw cosines: every J_k = C + a KD part that is independent between the lines, so J_k
    resembles every KD's J in the other line alike, while each KD's ΔY is its own and kept across lines. Raw cos J
    is high; the KD-specific comparison must not call routing more consistent than output."""
    rng = np.random.default_rng(6)
    names = tuple(f"K{i}" for i in range(40))
    labels = np.repeat(np.arange(1, 9), 5)
    common = rng.normal(size=(6, 5))
    jac = {line: np.stack([3 * common + rng.normal(size=(6, 5)) for _ in names]) for line in "ab"}
    own = rng.normal(size=(40, 30))
    delta = {line: own + 0.3 * rng.normal(size=(40, 30)) for line in "ab"}
    data = {line: consistency.LineData(line, names, delta[line], write_shards(tmp_path / line, names, jac[line], 16),
                                       np.linalg.norm(jac[line].astype(np.float32).reshape(40, -1), axis=1), labels)
            for line in "ab"}
    table, (specific, raw) = consistency.compare_lines(data["a"], data["b"], 999, 500, 0, 0.05)
    assert table["cos_jacobian"].median() > 0.8 and table["baseline_jacobian"].median() > 0.8
    assert abs(table["specific_jacobian"].median()) < 0.1 and table["specific_output"].median() > 0.8
    assert specific.measure == "specific" and specific.direction == "less"
    assert raw.measure == "raw" and raw.estimate > -0.15  # raw alone would hide the loss of KD-specific routing


def test_sign_flip_p_equals_an_explicit_enumeration():
    rng = np.random.default_rng(2)
    sums = rng.normal(size=6)
    observed = abs(sums.sum())
    count = sum(abs(sum(s * x for s, x in zip(signs, sums))) >= observed - 1e-12
                for signs in itertools.product((1, -1), repeat=6))
    p, n, exact = consistency.sign_flip_p(sums, 999, 0)
    assert exact and n == 64 and p == pytest.approx(count / 64)
    # All units the same sign: only the observed pattern and its mirror are as extreme.
    assert consistency.sign_flip_p(np.ones(8), 999, 0)[0] == pytest.approx(2 / 256)


def test_sign_flip_p_is_sampled_beyond_the_enumeration_limit():
    p, n, exact = consistency.sign_flip_p(np.ones(20), 999, 0)
    assert not exact and n == 999 and p == pytest.approx(1 / 1000)


SIZES = np.array([3, 5, 8, 12, 20, 30, 6, 40])  # unequal clusters, as output clusters are
REPLICATES = 1000


def structured_null(rng, shift=0.0, cluster_sd=0.3, kd_sd=0.05):
    """d_k = shift + u_c + e_k: a shared cluster offset u_c (symmetric, large) and small KD noise. With shift 0 the
    mean difference is 0, but KDs of a cluster move together: a KD-level test sees many 'independent' agreements."""
    units = np.repeat(np.arange(len(SIZES)), SIZES)
    u = rng.standard_t(3, size=len(SIZES)) * cluster_sd  # heavy-tailed, symmetric
    return shift + u[units] + rng.normal(scale=kd_sd, size=len(units)), units


def rejection_rates(shift):
    rng = np.random.default_rng(3)
    cluster, kd_level = 0, 0
    for r in range(REPLICATES):
        d, units = structured_null(rng, shift)
        test = consistency.paired_difference(d, units, "A", "B", "specific", 999, 200, r, 0.05)
        cluster += test.p_value < 0.05
        kd_level += consistency.sign_flip_p(d, 999, r)[0] < 0.05  # every KD its own unit: ignores the clusters
    return cluster / REPLICATES, kd_level / REPLICATES


def test_cluster_sign_flip_keeps_its_level_where_a_kd_level_test_does_not():
    cluster, kd_level = rejection_rates(0.0)
    se = np.sqrt(0.05 * 0.95 / REPLICATES)  # 0.0069 at 1,000 replicates
    assert cluster <= 0.05 + 3 * se, f"cluster sign-flip rejects {cluster:.3f} under the structured null"
    assert kd_level > 0.3, f"the KD-level test was expected to be fooled (rejects {kd_level:.3f})"


def test_cluster_sign_flip_detects_a_planted_difference():
    rng = np.random.default_rng(4)
    hits = 0
    for r in range(200):
        d, units = structured_null(rng, shift=0.3, cluster_sd=0.1)
        test = consistency.paired_difference(d, units, "A", "B", "specific", 999, 200, r, 0.05)
        hits += test.direction == "more"
    assert hits / 200 > 0.8


# ---------------------------------------------------------------- through the loader and the pipeline
LINES = ("LineA", "LineB")


def write_two_line_run(folder, missing_in_b=("KD_F",)):
    """A tiny real run and one .h5ad holding two lines whose controls differ (line B's cells at twice the rate)."""
    write_tiny_run(folder, lines={LINES[0]: (3.0, KDS), LINES[1]: (6.0, [k for k in KDS if k not in missing_in_b])})


def test_two_lines_are_analysed_each_and_compared(tmp_path):
    write_two_line_run(tmp_path)
    results = analysis.run(tiny_config(tmp_path, cell_lines=list(LINES)), progress=False)
    assert [line.cell_line for line in results.lines] == list(LINES)
    assert results.effects is results.lines[0].effects
    assert "KD_F" in results.lines[0].effects.responses.kd_names and "KD_F" not in results.lines[1].effects.responses.kd_names
    table, (specific, raw) = results.across.table, results.across.tests
    assert list(table["kd"]) == [k for k in KDS if k != "KD_F"]
    assert np.all(np.abs(table[["cos_output", "cos_jacobian"]].to_numpy()) <= 1 + 1e-9)
    # Each cosine recomputed from the lines' own stored ΔY.
    a, b = (line.effects.responses for line in results.lines)
    k = "KD_C"
    x, y = a.delta_y[a.kd_names.index(k)], b.delta_y[b.kd_names.index(k)]
    assert table.set_index("kd").loc[k, "cos_output"] == pytest.approx(direct_cosine(x, y))
    # …and each Jacobian cosine from the lines' own stored shards.
    shards = [open_shards(tmp_path / "cache" / "jacobians" / line.routing.jacobian_key) for line in results.lines]
    j = [next(jac[list(index).index(row)] for index, jac in line_shards if row in index).ravel()
         for line_shards, row in zip(shards, (a.kd_names.index(k), b.kd_names.index(k)))]
    assert table.set_index("kd").loc[k, "cos_jacobian"] == pytest.approx(direct_cosine(*(v.astype(np.float64) for v in j)))
    assert (specific.measure, raw.measure) == ("specific", "raw") and specific.n_kds == raw.n_kds == 5
    assert specific.estimate == pytest.approx(table["difference"].mean())
    # p against an enumeration written out here: every sign pattern of the primary line's cluster sums
    sums = table.groupby("cluster")["difference"].sum().to_numpy()
    flips = [abs(sum(s * v for s, v in zip(signs, sums))) >= abs(sums.sum()) - 1e-12
             for signs in itertools.product((1, -1), repeat=len(sums))]
    assert specific.exact and specific.p_value == pytest.approx(np.mean(flips))
    nb04 = prose.prior_work_table(results).set_index("prior").loc["NB04", "this_run"]
    assert "LineA vs LineB (5 KDs)" in nb04 and "median cos J" in nb04
    # Cached: a second run computes nothing and reads the same numbers.
    again = analysis.run(tiny_config(tmp_path, cell_lines=list(LINES)), progress=False)
    assert again.across.key == results.across.key and again.across.table.equals(table)


def test_several_cell_types_and_none_chosen_is_an_error(tmp_path):
    write_two_line_run(tmp_path)
    with pytest.raises(InputError, match=r"2 cell types present \(LineA, LineB\); set \[data\] cell_line"):
        load_run(tiny_config(tmp_path, cell_lines=[]))


def test_a_listed_line_absent_from_the_data_is_an_error(tmp_path):
    write_two_line_run(tmp_path)
    with pytest.raises(InputError, match="no cells of cell line 'LineC'"):
        analysis.run(tiny_config(tmp_path, cell_lines=["LineA", "LineC"]), progress=False)


@pytest.mark.parametrize("value, message", [(["LineA", "LineA"], "distinct"), ([""], "non-empty"), (3, "a string")])
def test_bad_cell_line_lists_are_config_errors(tmp_path, value, message):
    with pytest.raises(InputError, match=message):
        tiny_config(tmp_path, cell_lines=value)


def test_demo_recovers_the_planted_sharing_between_lines(demo_config, demo_results):
    """The demo plants module-level sharing (1, 0.5 or 0) between HepG2 and K562; the model's cross-line cosine of
    ΔY must follow it."""
    from scipy.stats import spearmanr

    truth = demo.load_line_truth(demo_config).dropna(subset=["sharing"]).set_index("kd")
    table = demo_results.across.table.set_index("kd").loc[truth.index]
    rho = spearmanr(truth["true_cosine"], table["cos_output"]).statistic
    assert rho > 0.5, f"cross-line cos ΔY does not follow the planted sharing (Spearman {rho:.2f})"
    by_sharing = table.groupby(truth["sharing"])["cos_output"].mean()
    assert by_sharing.loc[1.0] > by_sharing.loc[0.5] > by_sharing.loc[0.0]
