"""Prediction quality (Part 0): the model's predicted cells against the observed cells, scored by Arc's cell-eval.

Nothing here re-implements a metric: every number comes from `cell_eval.MetricsEvaluator` (its "minimal" profile:
pearson_delta, mse, mae, discrimination_score_l1, overlap_at_N, precision_at_N, de_nsig_counts), including both
references that make a number readable:
- baseline: cell-eval's mean-response baseline (`build_base_mean_adata`: every KD predicted as the mean of the
  observed groups' means), scored like the model;
- ceiling: cell-eval's split-half data ceiling (`compute_ceiling`: each KD's observed cells split into disjoint
  halves, one scored against the other, Spearman–Brown corrected to full depth; per KD and for the mean over KDs).
Each is scored twice: against the control cells (cell-eval's reference), and Systema-style against the perturbed
mean (the control group replaced by every perturbed cell, observed or predicted: the effect shared by all KDs is
removed, so agreement on it no longer counts). The baseline's centred effects are zero by construction (not scored).

The sensitivity of the call: the routing statistics and the call re-run on the KDs the model predicts better than the
baseline (`well_predicted`'s rule).
"""

from __future__ import annotations

import tempfile
from importlib import metadata

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl

from ..config import DecisionRule
from ..console import silenced
from ..results import RoutingEvidence, Verdict
from . import routing, verdict

PROFILE = "minimal"  # cell-eval's metric profile
COLUMN = "perturbation"  # the obs column the AnnData handed to cell-eval label cells by
REFERENCES = ("control", "perturbed mean")
MIN_SENSITIVITY_KDS = 8  # fewer well-predicted KDs than this: no sensitivity call


def cell_eval_version() -> str:
    return metadata.version("cell-eval")


def _adata(cells: np.ndarray, labels: np.ndarray, gene_names) -> ad.AnnData:
    obs = pd.DataFrame({COLUMN: pd.Categorical(np.asarray(labels, dtype=str))},
                       index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=np.asarray(cells, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(gene_names)))


def centred(adata: ad.AnnData, control: str) -> ad.AnnData:
    """The same cells with the control group replaced by every perturbed cell (Systema's perturbed-mean reference;
    the observed cells, whose split-half ceiling needs cells)."""
    perturbed = adata[(adata.obs[COLUMN] != control).to_numpy()]
    reference = perturbed.X.copy()
    labels = np.concatenate([[control] * len(reference), perturbed.obs[COLUMN].astype(str).to_numpy()])
    return _adata(np.concatenate([reference, perturbed.X]), labels, adata.var_names)


def _frame(results: pl.DataFrame) -> pd.DataFrame:
    return results.to_pandas().rename(columns={"perturbation": "kd"})


def _score(pred: ad.AnnData | None, real: ad.AnnData, control: str, seed: int, skip_de: bool, workdir: str,
           de_real: str | None = None) -> tuple:
    """cell-eval on one pair: per-KD scores, or with pred None the ceiling (per KD and of the mean over KDs), each
    Spearman–Brown corrected by cell-eval. The observed cells' DE table is written to `workdir` (real_de.csv) and,
    given as `de_real`, read back instead of recomputed."""
    from cell_eval import MetricsEvaluator
    from cell_eval._evaluator import _spearman_brown_correct  # the ceiling's own correction, applied per KD too

    with silenced():
        evaluator = MetricsEvaluator(pred, real, de_real=de_real, control_pert=control, pert_col=COLUMN,
                                     outdir=workdir, skip_de=skip_de)
        if pred is not None:
            return _frame(evaluator.compute(profile=PROFILE, write_csv=False, break_on_error=True)[0]), None
        per_kd, overall = evaluator.compute_ceiling(profile=PROFILE, write_csv=False, break_on_error=True, seed=seed)
    return _frame(_spearman_brown_correct(per_kd)), overall.to_pandas()


def score_predictions(predicted: np.ndarray, predicted_control: np.ndarray, observed: np.ndarray,
                      observed_labels: np.ndarray, kd_names, gene_names, control: str,
                      seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores of the model, the baseline and the ceiling, per KD and of the mean over KDs.

    predicted [K, n, G]: the model's cells of each KD of `kd_names` (all K with observed cells); predicted_control
    [m, G]: its cells with the control perturbation on the same control draws; observed [N, G] with observed_labels
    [N]: the observed control and KD cells. Returns (per KD: kd, predictor, reference and one column per cell-eval
    metric; ceiling aggregate: reference and the metric columns, cell-eval's Spearman–Brown ceiling of the mean over
    KDs, NaN for metrics it gives none).
    """
    from cell_eval import build_base_mean_adata

    names = list(kd_names)
    pred = _adata(np.concatenate([predicted.reshape(-1, predicted.shape[-1]), predicted_control]),
                  np.concatenate([np.repeat(names, predicted.shape[1]), [control] * len(predicted_control)]), gene_names)
    real = _adata(observed, observed_labels, gene_names)
    # Centred, only cell-eval's bulk metrics run (no DE), which read group means: the predictions enter as their KD
    # means [K, G] and, as the control group, their mean over all KDs (equal cells per KD: the perturbed mean).
    means = predicted.mean(axis=1)
    pred_centred = _adata(np.concatenate([means.mean(0, keepdims=True), means]), [control] + names, gene_names)
    with silenced():
        baseline = build_base_mean_adata(real.copy(), pert_col=COLUMN, control_pert=control)
    baseline = _adata(baseline.X, baseline.obs[COLUMN].astype(str).to_numpy(), gene_names)
    rows, ceilings = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for reference in REFERENCES:
            at_control = reference == "control"
            pair_real = real if at_control else centred(real, control)
            model, _ = _score(pred if at_control else pred_centred, pair_real, control, seed, not at_control, workdir)
            rows.append(model.assign(predictor="model", reference=reference))
            if at_control:
                base, _ = _score(baseline, pair_real, control, seed, False, workdir, f"{workdir}/real_de.csv")
                rows.append(base.assign(predictor="baseline", reference=reference))
            ceiling, overall = _score(None, pair_real, control, seed, not at_control, workdir)
            rows.append(ceiling.assign(predictor="ceiling", reference=reference))
            ceilings.append(overall.assign(reference=reference))
    table = pd.concat(rows, ignore_index=True)
    leading = ["kd", "predictor", "reference"]
    return table[leading + [c for c in table.columns if c not in leading]], pd.concat(ceilings, ignore_index=True)


def overall_table(kd_table: pd.DataFrame, ceiling: pd.DataFrame, groups: dict) -> pd.DataFrame:
    """Mean over KDs of each metric, per predictor, reference and group of KDs (`groups` {name: KD names}, e.g.
    all / seen / held out); the ceiling's row of the group "all" is cell-eval's ceiling of the mean over KDs (the
    other groups' the mean of the per-KD ceilings). Columns: group, predictor, reference, n_kds, the metrics."""
    metrics = [c for c in kd_table.columns if c not in ("kd", "predictor", "reference")]
    rows = []
    for group, members in groups.items():
        subset = kd_table[kd_table["kd"].isin(members)]
        for (predictor, reference), frame in subset.groupby(["predictor", "reference"], sort=False):
            row = {"group": group, "predictor": predictor, "reference": reference, "n_kds": len(frame),
                   **frame[metrics].mean().to_dict()}
            if predictor == "ceiling" and group == "all":
                row |= ceiling[ceiling["reference"] == reference][metrics].iloc[0].to_dict()
            rows.append(row)
    return pd.DataFrame(rows)


def well_predicted(kd_table: pd.DataFrame, kd_names) -> np.ndarray:
    """[K] bool, the stated rule: the model's pearson_delta (against control) exceeds the mean-response baseline's
    for that KD. KDs not scored are False."""
    at = kd_table[kd_table["reference"] == "control"].pivot(index="kd", columns="predictor", values="pearson_delta")
    better = at["model"] > at["baseline"]
    return np.asarray([bool(better.get(kd, False)) for kd in kd_names])


def sensitivity(keep: np.ndarray, c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray, gram: np.ndarray,
                labels: np.ndarray, n_permutations: int, n_bootstrap: int, seed: int, rule: DecisionRule,
                normal_reference_kds: int = routing.NORMAL_REFERENCE_KDS) -> tuple[RoutingEvidence, Verdict] | None:
    """The routing statistics and the call on the KDs `keep` [K] bool selects (the [K, K] matrices and the Gram
    restricted to them, the common routing direction re-estimated on them); None when fewer than
    MIN_SENSITIVITY_KDS are kept."""
    rows = np.flatnonzero(keep)
    if len(rows) < MIN_SENSITIVITY_KDS:
        return None
    sub = np.ix_(rows, rows)
    evidence = routing.routing_evidence(c_out[sub], c_jac[sub], c_rep[sub], labels[rows], n_permutations, n_bootstrap,
                                        seed, gram[sub], normal_reference_kds)
    return evidence, verdict.decide(evidence, rule)
