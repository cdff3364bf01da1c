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


def test_specific_cosines_are_those_of_the_parts_off_each_lines_common_direction():
    """Against the projection written out: unit rows, each line's own mean direction ĝ, u − (u·ĝ)ĝ, cosines; lines of
    different sizes and common directions, a zero row (no KD-specific part: cosine 0)."""
    rng = np.random.default_rng(7)
    x_a = rng.normal(size=(12, 30)) + 3 * rng.normal(size=30)
    x_b = rng.normal(size=(9, 30)) + 2 * rng.normal(size=30)
    x_b[4] = 0.0

    def specific(x):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        u = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
        g = u.mean(axis=0) / np.linalg.norm(u.mean(axis=0))
        rest = u - np.outer(u @ g, g)
        rest_norms = np.linalg.norm(rest, axis=1, keepdims=True)
        return np.divide(rest, rest_norms, out=np.zeros_like(rest), where=rest_norms > 0)

    expected = specific(x_a) @ specific(x_b).T
    got = consistency.specific_cosines(x_a @ x_b.T, x_a @ x_a.T, x_b @ x_b.T)
    assert got.shape == (12, 9) and np.allclose(got, expected, atol=1e-12)
    assert np.all(got[:, 4] == 0)


def two_lines(tmp_path, jac, delta, labels):
    """LineData of lines "a" and "b" from arrays {line: J [K, G, H]} and {line: ΔY [K, G]} over the same KDs; line b
    holds them in reverse order with another sharding (what the comparison must match by name)."""
    names = tuple(f"K{i}" for i in range(len(labels)))
    order = {"a": np.arange(len(names)), "b": np.arange(len(names))[::-1]}
    data = {}
    for line, shard_kds in (("a", 16), ("b", 7)):
        j, index = jac[line][order[line]], order[line]
        flat = j.astype(np.float32).reshape(len(j), -1).astype(np.float64)
        data[line] = consistency.LineData(line, tuple(np.asarray(names)[index]), delta[line][index],
                                          write_shards(tmp_path / line, tuple(np.asarray(names)[index]), j, shard_kds),
                                          flat @ flat.T, np.asarray(labels)[index])
    return data["a"], data["b"]


def planted_world(rng, shared=None, n_kds=40):
    """Jacobians [K, 6, 5] = 3 × a component every KD shares + the KD's own part, and ΔY [K, 30] = the KD's own
    response + a small response every KD shares: the Jacobians' mean cosine with the other KDs is high (about 0.9),
    ΔY's low, as in real runs — what made "cosine minus that baseline" unequal between the sides. `shared`: the
    shared components (J [6, 5], ΔY [30]) of another world, to draw a second line with the same ones. Returns
    (J, ΔY, output clusters [K], shared)."""
    shared_j, shared_y = shared if shared is not None else (rng.normal(size=(6, 5)), rng.normal(size=30))
    own_j, own_y = rng.normal(size=(n_kds, 6, 5)), rng.normal(size=(n_kds, 30))
    return 3 * shared_j + own_j, 0.3 * shared_y + own_y, np.repeat(np.arange(1, 9), n_kds // 8), (shared_j, shared_y)


def test_identical_routing_and_output_in_both_lines_reads_no_difference(tmp_path):
    """The fair-scale requirement: a model whose routing and outputs are the same in both lines scores 0 on the
    KD-specific difference (both cosines 1) however unequal the sides' shared components are; cosine minus the
    mean cosine with the other KDs scored such a model far below 0."""
    jac, delta, labels, _ = planted_world(np.random.default_rng(8))
    table, (specific, raw) = consistency.compare_lines(*two_lines(tmp_path, {"a": jac, "b": jac},
                                                                  {"a": delta, "b": delta}, labels), 999, 500, 0, 0.05)
    assert np.allclose(table[["specific_output", "specific_jacobian"]], 1.0, atol=1e-6)
    assert (table["baseline_jacobian"] - table["baseline_output"]).median() > 0.5  # the old measure's built-in gap
    assert abs(specific.estimate) < 1e-9 and specific.ci_low <= 1e-9 and specific.ci_high >= -1e-9  # 0 up to rounding
    assert specific.direction == "no difference"


def test_equally_noisy_copies_in_both_lines_read_no_difference(tmp_path):
    """Both lines the same model up to estimation noise of the same relative size on each side's KD-specific part:
    the KD-specific cosines agree (about 1 / (1 + 0.3²)) and the interval covers 0."""
    rng = np.random.default_rng(9)
    jac, delta, labels, _ = planted_world(rng)
    own_j = jac - jac.mean(axis=0)  # the part each KD has of its own, what the noise is sized against
    noisy = {line: (jac + 0.3 * rng.normal(size=jac.shape) * np.linalg.norm(own_j, axis=(1, 2))[:, None, None]
                    / np.sqrt(30), delta + 0.3 * rng.normal(size=delta.shape)) for line in "ab"}
    table, (specific, raw) = consistency.compare_lines(
        *two_lines(tmp_path, {k: v[0] for k, v in noisy.items()}, {k: v[1] for k, v in noisy.items()}, labels),
        999, 500, 0, 0.05)
    assert table["specific_jacobian"].median() == pytest.approx(table["specific_output"].median(), abs=0.05)
    assert abs(specific.estimate) < 0.05 and specific.ci_low <= 0 <= specific.ci_high
    assert specific.direction == "no difference"
    assert raw.estimate > 0.05  # the raw cosines, lifted by the Jacobians' shared component, would say "more"


def test_routing_kept_and_outputs_not_reads_more_consistent_routing(tmp_path):
    rng = np.random.default_rng(10)
    jac, delta, labels, shared = planted_world(rng)
    other_delta = planted_world(rng, shared)[1]  # the same shared response, every KD's own response redrawn
    table, (specific, raw) = consistency.compare_lines(*two_lines(tmp_path, {"a": jac, "b": jac},
                                                                  {"a": delta, "b": other_delta}, labels), 999, 500, 0, 0.05)
    assert table["specific_jacobian"].min() > 0.99 and abs(table["specific_output"].median()) < 0.2
    assert specific.estimate > 0.8 and specific.direction == "more"


def test_a_component_common_to_all_jacobians_does_not_pass_for_consistent_routing(tmp_path):
    """A world built to fool raw cosines: every J_k = C + a KD part that is independent between the lines, so J_k
    resembles every KD's J in the other line alike, while each KD's ΔY is its own and kept across lines. Raw cos J
    is high; the KD-specific comparison must not call routing more consistent than output."""
    rng = np.random.default_rng(6)
    jac_a, delta, labels, shared = planted_world(rng)
    jac_b = planted_world(rng, shared)[0]  # the same shared component, every KD's own part redrawn
    table, (specific, raw) = consistency.compare_lines(*two_lines(tmp_path, {"a": jac_a, "b": jac_b},
                                                                  {"a": delta, "b": delta + 0.3 * rng.normal(size=delta.shape)},
                                                                  labels), 999, 500, 0, 0.05)
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


def test_a_p_on_the_sign_flip_floor_is_said_to_be_there():
    """Five clusters all one way: the exact two-sided p is 2/2^5, the smallest it can be, and the words say so; a p
    above the floor is just a p."""
    units = np.repeat(np.arange(5), 3)
    at_floor = consistency.paired_difference(np.linspace(0.1, 0.5, 15), units, "A", "B", "specific", 999, 200, 0, 0.05)
    assert at_floor.exact and at_floor.floor == pytest.approx(2 / 32) and at_floor.p_value == pytest.approx(2 / 32)
    assert at_floor.at_floor and at_floor.direction == "no difference"  # 0.0625 > α: five clusters cannot reject
    assert prose.paired_p(at_floor) == "p = 0.062, the floor of an exact sign flip over 5 clusters"
    mixed = consistency.paired_difference(np.r_[np.full(12, 0.3), np.full(3, -0.2)], units, "A", "B", "specific",
                                          999, 200, 0, 0.05)
    assert not mixed.at_floor and "floor" not in prose.paired_p(mixed)
    sampled = consistency.paired_difference(np.ones(20), np.arange(20), "A", "B", "specific", 999, 200, 0, 0.05)
    assert not sampled.exact and sampled.at_floor and prose.paired_p(sampled) == "p ≤ 0.001"


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
    ΔY must follow it, and the modules planted 100 % shared must read consistent on both sides of the comparison:
    near the diagonal, not far below it as cosine minus the other KDs' mean put them (−0.55)."""
    from scipy.stats import spearmanr

    truth = demo.load_line_truth(demo_config).dropna(subset=["sharing"]).set_index("kd")
    table = demo_results.across.table.set_index("kd").loc[truth.index]
    rho = spearmanr(truth["true_cosine"], table["cos_output"]).statistic
    assert rho > 0.5, f"cross-line cos ΔY does not follow the planted sharing (Spearman {rho:.2f})"
    by_sharing = table.groupby(truth["sharing"])["cos_output"].mean()
    assert by_sharing.loc[1.0] > by_sharing.loc[0.5] > by_sharing.loc[0.0]
    shared = table[truth["sharing"] == 1.0]
    assert shared[["specific_output", "specific_jacobian"]].median().min() > 0.7
    assert shared["difference"].mean() > -0.25, f"planted-shared modules read {shared['difference'].mean():+.2f}"
