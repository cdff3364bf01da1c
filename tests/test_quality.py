"""Part 0, prediction quality: cell-eval's scores checked against numpy on a tiny case (with and without its DE
metrics, which must agree on every other metric), the per-KD Spearman–Brown step-up against cell-eval's own, the
predicted cells and means against the effects stage's ΔY, the split, bad inputs, runs without observed cells, with a
negative value and with DE metrics off, and on the demo's planted world the ordering baseline < model < ceiling on
the modules and weak-effect KDs scored worse."""

from __future__ import annotations

import dataclasses
import importlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny import KDS, tiny_config, write_tiny_run

import analysis
from analysis.errors import InputError
from analysis.model.effects import EffectTask, draw_control_sets, kd_means
from analysis.model.load import load_run
from analysis.model.observed import load_observed, training_split
from analysis.model.predict import predict_cells, predict_means
from analysis.present import quality as part0
from analysis.present.summary import summary_lines
from analysis.stats import quality, verdict
from analysis.stats.evidence import routing_evidence
from analysis.stats.gram import cosine_from_gram

CONTROL = "non-targeting"


# ---------------------------------------------------------------- cell-eval against a numpy oracle
@pytest.fixture(scope="module")
def tiny_case():
    """3 KDs × 7 genes: predicted cells (6 per KD, then 6 control) and observed cells (8 per KD, 10 control)."""
    rng = np.random.default_rng(3)
    genes, kds = [f"G{i}" for i in range(7)], ["K1", "K2", "K3"]
    predicted = rng.uniform(0.1, 3.0, size=(4, 6, 7)).astype(np.float32)
    labels = np.array([CONTROL] * 10 + [k for k in kds for _ in range(8)])
    observed = rng.uniform(0.1, 3.0, size=(len(labels), 7)).astype(np.float32)
    return predicted, observed, labels, kds, genes


@pytest.fixture(scope="module")
def tiny_scores(tiny_case):
    """The tiny case scored with cell-eval's DE metrics, on every predicted cell."""
    predicted, observed, labels, kds, genes = tiny_case
    kd_table, ceiling = quality.score_predictions(predicted, observed, labels, kds, genes, CONTROL, 0, de=True)
    return predicted[:-1], predicted[-1], observed, labels, kds, kd_table, ceiling


def _score(kd_table, predictor, reference, metric, kd):
    row = kd_table[(kd_table.predictor == predictor) & (kd_table.reference == reference) & (kd_table.kd == kd)]
    return float(row[metric].iloc[0])


def test_pearson_delta_against_control_matches_numpy(tiny_scores):
    predicted, predicted_control, observed, labels, kds, kd_table, _ = tiny_scores
    control = observed[labels == CONTROL].mean(0).astype(np.float64)
    for k, kd in enumerate(kds):
        expected = np.corrcoef(predicted[k].mean(0) - predicted_control.mean(0), observed[labels == kd].mean(0) - control)[0, 1]
        assert _score(kd_table, "model", "control", "pearson_delta", kd) == pytest.approx(expected, abs=1e-5)
        mae = np.abs(predicted[k].mean(0) - observed[labels == kd].mean(0)).mean()
        assert _score(kd_table, "model", "control", "mae", kd) == pytest.approx(mae, abs=1e-5)


def test_pearson_delta_against_the_perturbed_mean_matches_numpy(tiny_scores):
    """Systema's reference: every perturbed cell's mean replaces the control's, on both sides."""
    predicted, _, observed, labels, kds, kd_table, _ = tiny_scores
    reference_pred = predicted.reshape(-1, predicted.shape[-1]).mean(0)
    reference_obs = observed[labels != CONTROL].mean(0)
    for k, kd in enumerate(kds):
        expected = np.corrcoef(predicted[k].mean(0) - reference_pred, observed[labels == kd].mean(0) - reference_obs)[0, 1]
        assert _score(kd_table, "model", "perturbed mean", "pearson_delta", kd) == pytest.approx(expected, abs=1e-5)


def test_baseline_is_the_mean_response(tiny_scores):
    """cell-eval's baseline predicts every KD as the mean of the observed groups' means (its own definition: the
    control's group mean among them), referenced to the observed controls."""
    _, _, observed, labels, kds, kd_table, _ = tiny_scores
    control = observed[labels == CONTROL].mean(0).astype(np.float64)
    groups = [CONTROL] + kds
    mean_response = np.mean([observed[labels == g].mean(0) for g in groups], axis=0)
    for kd in kds:
        expected = np.corrcoef(mean_response - control, observed[labels == kd].mean(0) - control)[0, 1]
        assert _score(kd_table, "baseline", "control", "pearson_delta", kd) == pytest.approx(expected, abs=1e-5)
    assert set(kd_table.predictor) == {"model", "baseline", "ceiling"}
    assert not ((kd_table.predictor == "baseline") & (kd_table.reference == "perturbed mean")).any()


def test_without_de_the_group_means_score_as_the_cells_do(tiny_case, tiny_scores):
    """DE metrics off: each predicted group enters as one mean cell, and every other metric (model, baseline,
    ceiling; both references) equals the per-cell run's; the DE columns are absent, not empty."""
    predicted, observed, labels, kds, genes = tiny_case
    means = predicted.mean(1, dtype=np.float64).astype(np.float32)[:, None]
    kd_table, ceiling = quality.score_predictions(means, observed, labels, kds, genes, CONTROL, 0, de=False)
    with_de, with_de_ceiling = tiny_scores[-2:]
    metrics = ["pearson_delta", "mse", "mae", "discrimination_score_l1"]
    assert list(kd_table.columns) == ["kd", "predictor", "reference"] + metrics
    keys = ["kd", "predictor", "reference"]
    merged = with_de[keys + metrics].merge(kd_table, on=keys, suffixes=("_de", ""), validate="one_to_one")
    assert len(merged) == len(with_de) == len(kd_table)
    for metric in metrics:
        np.testing.assert_allclose(merged[metric], merged[f"{metric}_de"], atol=1e-6)
    np.testing.assert_allclose(ceiling[metrics], with_de_ceiling[metrics], atol=1e-6)
    assert any(m in with_de.columns for m in quality.DE_METRICS)
    assert quality.computed_metrics(False) == ("pearson_delta", "mse", "mae", "discrimination_score_l1")


def test_de_metrics_setting():
    assert quality.use_de("on", 10_000)[0] and not quality.use_de("off", 3)[0]
    assert quality.use_de("auto", quality.DE_AUTO_MAX_KDS) == (True, f'de_metrics = "auto": '
                                                                f'{quality.DE_AUTO_MAX_KDS} scored KDs ≤ '
                                                                f'{quality.DE_AUTO_MAX_KDS}')
    on, reason = quality.use_de("auto", 1035)
    assert not on and "1,035 scored KDs >" in reason


def test_spearman_brown_matches_cell_evals_ceiling_correction(tiny_scores, tmp_path):
    """The per-KD step-up against cell-eval's own (private, the oracle only): on its raw per-KD split-half scores of
    the tiny case (every metric of the profile) and on values at the edges (r <= 0, NaN)."""
    oracle = getattr(importlib.import_module("cell_eval._evaluator"), "_spearman_brown_correct", None)
    if oracle is None:
        pytest.skip("cell-eval no longer has the private _spearman_brown_correct this test uses as its oracle")
    import polars as pl
    from cell_eval import MetricsEvaluator

    _, _, observed, labels, kds, *_ = tiny_scores
    real = quality._adata(observed, labels, [f"G{i}" for i in range(observed.shape[1])])
    evaluator = MetricsEvaluator(None, real, control_pert=CONTROL, pert_col=quality.COLUMN, outdir=str(tmp_path))
    per_kd, _ = evaluator.compute_ceiling(profile=quality.PROFILE, write_csv=False, break_on_error=True, seed=0)
    edges = pl.DataFrame({"perturbation": list("abcdef"), "pearson_delta": [-0.5, 0.0, 0.3, 0.9, 1.0, None],
                          "precision_at_N": [0.2, 0.5, 0.0, 1.0, 0.7, 0.1], "mae": [0.1] * 6})
    for raw in (per_kd, edges):
        ours = quality.ceiling_at_full_depth(raw.to_pandas().rename(columns={"perturbation": "kd"}))
        expected = oracle(raw).to_pandas().rename(columns={"perturbation": "kd"})
        assert list(ours.columns) == list(expected.columns)
        assert ours["kd"].tolist() == expected["kd"].tolist()
        metrics = [c for c in expected.columns if c != "kd"]
        np.testing.assert_allclose(ours[metrics].to_numpy(float), expected[metrics].to_numpy(float), rtol=1e-12)
    assert set(per_kd.columns) > set(quality.STEPPED_UP) and ours["pearson_delta"].iloc[3] == pytest.approx(1.8 / 1.9)


def test_overall_table_and_the_rule(tiny_scores):
    *_, kds, kd_table, ceiling = tiny_scores
    overall = quality.overall_table(kd_table, ceiling, {"all": kds, "seen": kds[:2], "held out": kds[2:]})
    model = overall[(overall.group == "seen") & (overall.predictor == "model") & (overall.reference == "control")]
    expected = np.mean([_score(kd_table, "model", "control", "pearson_delta", kd) for kd in kds[:2]])
    assert float(model.pearson_delta.iloc[0]) == pytest.approx(expected) and int(model.n_kds.iloc[0]) == 2
    well = quality.well_predicted(kd_table, kds + ["unscored"])
    better = [_score(kd_table, "model", "control", "pearson_delta", kd) >
              _score(kd_table, "baseline", "control", "pearson_delta", kd) for kd in kds]
    assert well.tolist() == better + [False]


def test_sensitivity_on_every_kd_is_the_main_call():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 2, 3], 4)
    jac = rng.normal(size=(12, 30)) + 2.0 * rng.normal(size=(3, 30))[labels - 1]
    out = rng.normal(size=(12, 20)) + 2.0 * rng.normal(size=(3, 20))[labels - 1]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    rep = rng.normal(size=(12, 8))  # its own C_rep: with C_rep = C_jac the partial Mantel is 0 / 0, and NaN != NaN
    gram, c_out, c_rep = jac @ jac.T, unit(out) @ unit(out).T, unit(rep) @ unit(rep).T
    c_jac = cosine_from_gram(gram)
    rule = analysis.config.default_decision_rule()
    evidence, call = quality.sensitivity(np.ones(12, bool), c_out, c_jac, c_rep, gram, labels, 99, 20, 0, rule)
    main = routing_evidence(c_out, c_jac, c_rep, labels, 99, 20, 0, gram)
    assert np.isfinite(main.partial_mantel.p_value)
    assert evidence == main and call == verdict.decide(main, rule)
    assert quality.sensitivity(np.arange(12) < quality.MIN_SENSITIVITY_KDS - 1, c_out, c_jac, c_rep, gram, labels, 99,
                               20, 0, rule) is None


# ---------------------------------------------------------------- predicted cells, observed cells, the split
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    write_tiny_run(folder, cells_per_kd=6)
    return folder


def test_predicted_cells_average_to_the_effects_means(tiny_folder):
    run = load_run(tiny_config(tiny_folder))
    draws = draw_control_sets(len(run.controls), run.set_size, 2, 0)
    predicted = predict_cells(run, run.kd_names, draws, kds_per_call=4)
    assert predicted.shape == (len(KDS) + 1, draws.size, 24) and predicted.dtype == np.float32
    cells, control = predicted[:-1], predicted[-1]
    task = EffectTask(0, range(len(KDS)), run.features(run.kd_names).numpy())
    means = kd_means(run, task, draws)  # [R, K, G]
    per_draw = cells.reshape(len(KDS), 2, run.set_size, 24).mean(2).transpose(1, 0, 2)
    np.testing.assert_allclose(per_draw, means, rtol=1e-5, atol=1e-6)
    basal = torch.as_tensor(run.controls[draws[0]])[None]
    control_means = np.stack([run.set_means(run.features([CONTROL]), torch.as_tensor(run.controls[rows])[None])
                              [0].numpy() for rows in draws])  # [R, G]
    np.testing.assert_allclose(control[:run.set_size].mean(0),
                               run.set_means(run.features([CONTROL]), basal)[0].numpy(), rtol=1e-5, atol=1e-6)
    # without DE: the same group means from ΔY (as the effects stage computes it) and the control's predicted cells;
    # a gene the model holds at 0 in every cell of a KD (there is one here) stays 0, not a rounding below it
    delta_y = (means - control_means[:, None]).mean(0)
    from_delta = predict_means(run, delta_y, draws)[:, 0]
    np.testing.assert_allclose(from_delta, predicted.mean(1), rtol=1e-5, atol=1e-6)
    assert predicted.min() == 0 and from_delta.min() == 0


def test_the_predicted_cells_are_the_array_cell_eval_reads(tiny_case, monkeypatch):
    """One buffer: with DE metrics, the AnnData cell-eval scores the model on holds the predicted cells themselves,
    not a copy (each pair handed to cell-eval recorded on its way in)."""
    predicted, observed, labels, kds, genes = tiny_case
    handed, score = [], quality._score
    monkeypatch.setattr(quality, "_score", lambda pred, *args, **kwargs: handed.append(pred) or score(pred, *args,
                                                                                                         **kwargs))
    quality.score_predictions(predicted, observed, labels, kds, genes, CONTROL, 0, de=True)
    model = [pred for pred in handed if pred is not None and pred.n_obs == predicted.shape[0] * predicted.shape[1]]
    assert len(model) == 1 and np.shares_memory(model[0].X, predicted)


def test_observed_cells_are_the_lines_controls_and_kds(tiny_folder):
    config = tiny_config(tiny_folder)
    observed = load_observed(config, load_run(config))
    counts = pd.Series(observed.labels).value_counts()
    assert counts[CONTROL] == 40 and all(counts[kd] == 6 for kd in KDS) and observed.cells.shape == (40 + 36, 24)


def test_split_from_the_field_from_the_runs_toml_or_unknown(tiny_folder, tmp_path):
    config = tiny_config(tiny_folder)
    run = load_run(config)
    assert training_split(config, run, KDS) == (None, "")
    assert training_split(config.replace(held_out_kds=("KD_B", "other")), run, KDS) == \
        (("KD_B",), "config field held_out_kds")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "split.toml").write_text('[fewshot]\n"screen.HepG2" = {val = ["KD_A"], test = ["KD_C"]}\n')
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"kwargs": {"toml_config_path": str(tmp_path / "split.toml")}}}))
    held, source = training_split(config, dataclasses.replace(run, run_dir=run_dir), KDS)
    assert held == ("KD_A", "KD_C") and "fewshot" in source


def _rewrite(folder, change):
    adata = ad.read_h5ad(folder / "data.h5ad")
    adata = change(adata)
    adata.write_h5ad(folder / "data.h5ad")


def test_labels_that_match_no_kd_name_the_column(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)

    def rename(adata):
        adata.obs["gene"] = adata.obs["gene"].astype(str).map(lambda g: g if g == CONTROL else f"sg{g}")
        return adata

    _rewrite(folder, rename)
    config = tiny_config(folder, kds=KDS)
    with pytest.raises(InputError) as err:
        load_observed(config, load_run(config))
    assert "obs['gene']" in str(err.value) and "perturbation_column" in str(err.value) and "\n" not in str(err.value)


def test_gene_names_that_differ_from_the_models_are_named(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)

    def rename(adata):
        adata.var_names = [f"X{g}" for g in adata.var_names]
        return adata

    _rewrite(folder, rename)
    config = tiny_config(folder)
    with pytest.raises(InputError) as err:
        load_observed(config, load_run(config))
    assert "var_names" in str(err.value) and "gene names differ" in str(err.value) and "\n" not in str(err.value)


def test_a_control_only_h5ad_is_reported_not_scored(tmp_path):
    config = write_tiny_run(tmp_path, cells_per_kd=0)
    results = analysis.run(config, progress=False)
    assert results.quality.status.startswith("not scored") and results.quality.unscored == tuple(KDS)
    assert results.quality.sensitivity is None
    assert any(line.startswith("Part 0 (prediction quality): not scored") for line in summary_lines(results))


def test_a_negative_observed_value_is_reported_not_scored(tiny_folder, tmp_path):
    """cell-eval refuses negative expression: one negative value in a KD's observed cells leaves Part 0 unscored,
    with the reason in the record, the report's text and the CLI, and the run goes on (the main call stands)."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)

    def negative(adata):
        adata.X[np.flatnonzero(adata.obs["gene"].astype(str) == "KD_C")[0], 3] = -0.5
        return adata

    _rewrite(folder, negative)
    results = analysis.run(tiny_config(folder), progress=False)
    q = results.quality
    assert q.status == "not scored: negative expression values in the observed cells (cell-eval scores " \
                       "log-normalised expression)"
    assert q.unscored == tuple(KDS) and q.kd_table.empty and q.sensitivity is None
    assert results.routing.verdict is not None
    assert f"Part 0 (prediction quality): {q.status}" in summary_lines(results)
    assert "not scored: negative expression values" in part0.quality_text(results)
    assert part0.quality_table(results) == f"*{q.status}*"
    chart = part0.quality_chart(results).to_dict()  # the figure says why, instead of failing on an empty table
    assert chart["mark"]["type"] == "text" and q.status in str(chart["datasets"])


def test_de_metrics_off_end_to_end(tiny_folder):
    """de_metrics = "off": the model enters cell-eval as its group means from ΔY, the scores of every other metric
    equal the run with DE metrics, the DE columns are absent and the record, the report's table and text and the CLI
    say which metrics were computed."""
    on = analysis.run(tiny_config(tiny_folder, de_metrics="on"), progress=False).quality
    results = analysis.run(tiny_config(tiny_folder, de_metrics="off"), progress=False)
    off = results.quality
    assert on.de_metrics and not off.de_metrics and off.de_reason == 'de_metrics = "off"'
    assert off.metrics == quality.computed_metrics(False) and on.metrics == quality.METRICS
    assert not set(quality.DE_METRICS) & set(off.kd_table.columns) and "overlap_at_N" in on.kd_table.columns
    keys, metrics = ["kd", "predictor", "reference"], list(quality.computed_metrics(False))
    merged = on.kd_table[keys + metrics].merge(off.kd_table, on=keys, suffixes=("_on", ""), validate="one_to_one")
    assert len(merged) == len(off.kd_table) == len(on.kd_table)
    for metric in metrics:
        np.testing.assert_allclose(merged[metric], merged[f"{metric}_on"], rtol=1e-4, atol=1e-5)
    assert on.well_predicted == off.well_predicted
    table = part0.overall_frame(off)
    assert "top-N DE gene overlap" not in set(table.Metric) and len(table) == 5
    assert "differential-expression metrics were not computed (de_metrics = \"off\")" in part0.quality_text(results)
    (line,) = [line for line in summary_lines(results) if line.startswith("Part 0 (cell-eval")]
    assert line.endswith('DE metrics off (de_metrics = "off")')
    part0.quality_chart(results).to_dict()


# ---------------------------------------------------------------- the demo's planted world
def _pearson(quality_result, predictor, reference):
    table = quality_result.kd_table
    rows = table[(table.predictor == predictor) & (table.reference == reference)]
    return rows.set_index("kd")["pearson_delta"]


def test_demo_baseline_below_model_below_ceiling_on_modules_and_weak_kds_worse(demo_results, demo_config):
    truth = pd.read_parquet(demo_config.run_dir.parent / "truth" / "kd_modules.parquet").set_index("kd")["module"]
    q = demo_results.quality
    assert not q.status and not q.unscored and q.cell_eval == "0.8.2"
    modules = truth[truth != "no_effect"].index
    weak = truth[truth == "no_effect"].index
    centred = _pearson(q, "model", "perturbed mean")
    base, model, ceiling = (_pearson(q, p, "control") for p in ("baseline", "model", "ceiling"))
    # against control the shared response flatters the baseline; the model still beats it on the modules
    assert base[modules].mean() < model[modules].mean() < ceiling[modules].mean()
    assert model[weak].mean() < model[modules].mean() and centred[weak].mean() < centred[modules].mean()
    assert q.sensitivity is not None and set(q.well_predicted) <= set(demo_results.effects.responses.kd_names)
    assert demo_results.provenance["versions"]["cell-eval"] == q.cell_eval
    # de_metrics = "auto" on the demo's 153 scored KDs: the DE metrics are computed, and the text says so
    assert q.de_metrics and q.metrics == quality.METRICS and "overlap_at_N" in q.kd_table.columns
    assert "differential-expression metrics were computed (de_metrics = \"auto\": 153 scored KDs" in \
        part0.quality_text(demo_results)
    (line,) = [line for line in summary_lines(demo_results) if line.startswith("Part 0 (cell-eval 0.8.2): ")]
    overall = q.overall[(q.overall.group == "all") & (q.overall.reference == "control")].set_index("predictor")
    assert f"model {overall.pearson_delta['model']:.3f} vs baseline {overall.pearson_delta['baseline']:.3f}" in line


def test_a_listed_split_reports_seen_and_held_out(tiny_folder):
    results = analysis.run(tiny_config(tiny_folder, held_out_kds=["KD_A", "KD_B"]), progress=False)
    q = results.quality
    assert q.held_out == ("KD_A", "KD_B") and q.split_source == "config field held_out_kds"
    sizes = q.overall[(q.overall.predictor == "model") & (q.overall.reference == "control")].set_index("group").n_kds
    assert sizes.to_dict() == {"all": len(KDS), "seen": len(KDS) - 2, "held out": 2}
    table = part0.split_table(results)
    assert "| seen | 4 |" in table and "| held out | 2 |" in table
    # routing re-read on each side of the split: six KDs are too few for its statistics, and the rows say so
    assert set(q.split_calls) == {"seen", "held out"}
    rows = part0.sensitivity_frame(results).set_index("KDs")
    assert rows.loc["seen in training", "n"] == "4" and rows.loc["held out of training", "n"] == "2"
    assert rows.loc["held out of training", "Call"] == "too few KDs"
