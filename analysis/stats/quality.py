"""Prediction quality (Part 0): the model's predicted cells against the observed cells, scored by Arc's cell-eval.

Nothing here re-implements a metric: every number comes from `cell_eval.MetricsEvaluator` (its "minimal" profile,
`METRICS`), including both references that make a number readable:
- baseline: cell-eval's mean-response baseline (`build_base_mean_adata`: every KD predicted as the mean of the
  observed groups' means), scored like the model;
- ceiling: cell-eval's split-half data ceiling (`compute_ceiling`: each KD's observed cells split into disjoint
  halves, one scored against the other; cell-eval steps the mean over KDs up to full depth, `spearman_brown` here
  does the same per KD).
Each is scored twice: against the control cells (cell-eval's reference), and Systema-style against the perturbed
mean (the control group replaced by every perturbed cell, observed or predicted: the effect shared by all KDs is
removed, so agreement on it no longer counts). The baseline's centred effects are zero by construction (not scored).

The differential-expression (DE) metrics (`DE_METRICS`: pdex's Wilcoxon test of every KD's cells against the
reference cells, gene by gene) are most of Part 0's time and the only ones that read cells; the others read each
group's mean. They are optional (config field de_metrics, `use_de`): without them the model and the baseline enter
cell-eval as their group means, so no predicted cell is held.

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
from . import verdict
from .evidence import routing_evidence
from .nulls import NORMAL_REFERENCE_KDS

PROFILE = "minimal"  # cell-eval's metric profile
METRICS = ("pearson_delta", "mse", "mae", "discrimination_score_l1", "overlap_at_N", "precision_at_N",
           "de_nsig_counts")  # the profile's metrics (de_nsig_counts fills two columns, _real and _pred)
DE_METRICS = ("overlap_at_N", "precision_at_N", "de_nsig_counts")  # those that read cell-eval's DE tables
# Metrics whose split-half ceiling is stepped up to full depth: the profile's bounded, higher-is-better agreement
# scores (cell-eval's own choice for its ceiling, SB_METRICS); an error or a count has no ceiling (NaN).
STEPPED_UP = ("pearson_delta", "discrimination_score_l1", "overlap_at_N", "precision_at_N")
# de_metrics = "auto" computes the DE metrics for at most this many scored KDs. Both DE and Part 2 are linear in K, so
# DE is the same share of Part 2 at any K (a sixth or more on CPU at the seed's size, more beside a GPU's): the
# cut is on DE's absolute time. Measured on the demo and projected to the seed's G and cells (benchmarks/
# bench_quality.py, 2 shared cores): 6-14 s of DE per KD, so up to 200 KDs it adds 20-47 min; at K = 1,035 it is
# 1.6-4 h against 3 min for every other metric, measured at that size (README, Part 0 performance).
DE_AUTO_MAX_KDS = 200
COLUMN = "perturbation"  # the obs column the AnnData handed to cell-eval label cells by
REFERENCES = ("control", "perturbed mean")
MIN_SENSITIVITY_KDS = 8  # fewer well-predicted KDs than this: no sensitivity call


def cell_eval_version() -> str:
    return metadata.version("cell-eval")


def use_de(setting: str, n_kds: int) -> tuple[bool, str]:
    """Whether cell-eval's DE metrics are computed for `n_kds` scored KDs under the config field de_metrics ("on",
    "off", or "auto": on up to DE_AUTO_MAX_KDS), and the reason in words."""
    if setting == "auto":
        on = n_kds <= DE_AUTO_MAX_KDS
        return on, f'de_metrics = "auto": {n_kds:,} scored KDs {"≤" if on else ">"} {DE_AUTO_MAX_KDS}'
    return setting == "on", f'de_metrics = "{setting}"'


def computed_metrics(de: bool) -> tuple[str, ...]:
    """cell-eval's metrics Part 0 computes, with or without the DE metrics."""
    return METRICS if de else tuple(m for m in METRICS if m not in DE_METRICS)


def spearman_brown(r: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """The Spearman–Brown step-up: the reliability of a measurement `factor` times as long as one of reliability r,
    r' = factor·r / (1 + (factor − 1)·r); factor 2 takes a split half to full depth (2r / (1 + r)).

    r: any shape, unitless agreement scores (a correlation, a fraction of genes or of KDs), float. Returns the same
    shape, float64; NaN where r <= 0 or r is NaN: there the formula is a pole, not a correction, and halves that do
    not agree have no defensible ceiling (cell-eval's rule for its ceiling of the mean over KDs).
    """
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        stepped = factor * r / (1.0 + (factor - 1.0) * r)
    return np.where(r > 0, stepped, np.nan)


def ceiling_at_full_depth(per_kd: pd.DataFrame) -> pd.DataFrame:
    """Per-KD split-half scores (kd and one column per metric, one row per KD) as the per-KD ceiling: the columns of
    STEPPED_UP stepped up to full depth (`spearman_brown`), every other metric NaN."""
    return per_kd.assign(**{column: spearman_brown(per_kd[column].to_numpy()) if column in STEPPED_UP else np.nan
                            for column in per_kd.columns if column != "kd"})


def _adata(cells: np.ndarray, labels, gene_names) -> ad.AnnData:
    """An AnnData of `cells` [N, G] (X is `cells` itself when float32: no copy) labelled by `labels` [N]."""
    obs = pd.DataFrame({COLUMN: pd.Categorical(np.asarray(labels, dtype=str))},
                       index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=np.asarray(cells, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(gene_names)))


def group_means(adata: ad.AnnData) -> ad.AnnData:
    """One cell per group of `adata`: the group's mean (summed in float64, stored float32), groups in sorted order —
    all that cell-eval's metrics other than DE read of a predictor."""
    names, inverse, counts = np.unique(adata.obs[COLUMN].to_numpy(str), return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    return _adata(np.stack([adata.X[rows].mean(0, dtype=np.float64) for rows in members]), names, adata.var_names)


def centred(adata: ad.AnnData, control: str) -> ad.AnnData:
    """The perturbed cells with the control group replaced by every perturbed cell (Systema's perturbed-mean
    reference; the observed cells, whose split-half ceiling needs cells): [2P, G] float32 for P perturbed cells, one
    allocation."""
    labels = adata.obs[COLUMN].to_numpy(str)
    rows = np.flatnonzero(labels != control)
    cells = np.empty((2 * len(rows), adata.n_vars), dtype=np.float32)
    np.take(adata.X, rows, axis=0, out=cells[len(rows):])
    cells[:len(rows)] = cells[len(rows):]
    return _adata(cells, np.concatenate([[control] * len(rows), labels[rows]]), adata.var_names)


def _frame(results: pl.DataFrame) -> pd.DataFrame:
    return results.to_pandas().rename(columns={"perturbation": "kd"})


def _score(pred: ad.AnnData | None, real: ad.AnnData, control: str, seed: int, de: bool, workdir: str,
           de_real: str | None = None) -> tuple:
    """cell-eval on one pair: per-KD scores, or with pred None the ceiling (per KD, `ceiling_at_full_depth`, and
    cell-eval's of the mean over KDs); DE metrics when `de`. The observed cells' DE table is written to `workdir`
    (real_de.csv) and, given as `de_real`, read back instead of recomputed."""
    from cell_eval import MetricsEvaluator

    with silenced():
        evaluator = MetricsEvaluator(pred, real, de_real=de_real, control_pert=control, pert_col=COLUMN,
                                     outdir=workdir, skip_de=not de)
        if pred is not None:
            return _frame(evaluator.compute(profile=PROFILE, write_csv=False, break_on_error=True)[0]), None
        per_kd, overall = evaluator.compute_ceiling(profile=PROFILE, write_csv=False, break_on_error=True, seed=seed)
    return ceiling_at_full_depth(_frame(per_kd)), overall.to_pandas()


def _baseline(real: ad.AnnData, control: str) -> ad.AnnData:
    """cell-eval's mean-response baseline of the observed cells `real` (per cell, or their group means): each KD's
    cells set to the mean of the groups' means, the control's kept."""
    from cell_eval import build_base_mean_adata

    with silenced():  # reads `real` (converts it in place only if it held counts, as MetricsEvaluator would)
        baseline = build_base_mean_adata(real, pert_col=COLUMN, control_pert=control)
    return _adata(baseline.X, baseline.obs[COLUMN].to_numpy(str), real.var_names)


def score_predictions(predicted: np.ndarray, observed: np.ndarray, observed_labels: np.ndarray, kd_names, gene_names,
                      control: str, seed: int, de: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores of the model, the baseline and the ceiling, per KD and of the mean over KDs.

    predicted [K + 1, n, G] float32: the model's n cells of each KD of `kd_names` (all K with observed cells), then
    (last) its cells with the control perturbation on the same control draws; with `de` it is handed to cell-eval as
    its AnnData's X without a copy (C-contiguous), without it only its group means are read, so n may be 1 (each
    group's mean cell, `model.predict.predict_means`). observed [N, G] float32 with observed_labels [N]: the
    observed control and KD cells. de: compute cell-eval's DE metrics (against control). Returns (per KD: kd,
    predictor, reference and one column per cell-eval metric; ceiling aggregate: reference and the metric columns,
    cell-eval's Spearman–Brown ceiling of the mean over KDs, NaN for metrics it gives none).
    """
    names, genes = list(kd_names) + [control], predicted.shape[-1]
    means = predicted.mean(axis=1, dtype=np.float64)  # [K + 1, G]
    pred = (_adata(predicted.reshape(-1, genes), np.repeat(names, predicted.shape[1]), gene_names) if de else
            _adata(means, names, gene_names))
    # Centred, only cell-eval's group-mean metrics run (no DE): the predictions enter as their KD means [K, G] and,
    # as the control group, their mean over all KDs (equal cells per KD: the perturbed mean).
    pred_centred = _adata(np.concatenate([means[:-1].mean(0, keepdims=True), means[:-1]]), [control] + names[:-1],
                          gene_names)
    real = _adata(observed, observed_labels, gene_names)
    baseline = _baseline(real if de else group_means(real), control)
    rows, ceilings = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for reference in REFERENCES:
            at_control = reference == "control"
            pair_real = real if at_control else centred(real, control)
            pair_de = de and at_control
            model, _ = _score(pred if at_control else pred_centred, pair_real, control, seed, pair_de, workdir)
            rows.append(model.assign(predictor="model", reference=reference))
            if at_control:
                base, _ = _score(baseline, pair_real, control, seed, pair_de, workdir,
                                 f"{workdir}/real_de.csv" if pair_de else None)
                rows.append(base.assign(predictor="baseline", reference=reference))
            ceiling, overall = _score(None, pair_real, control, seed, pair_de, workdir)
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
                normal_reference_kds: int = NORMAL_REFERENCE_KDS) -> tuple[RoutingEvidence, Verdict] | None:
    """The routing statistics and the call on the KDs `keep` [K] bool selects (the [K, K] matrices and the Gram
    restricted to them, the common routing direction re-estimated on them); None when fewer than
    MIN_SENSITIVITY_KDS are kept."""
    rows = np.flatnonzero(keep)
    if len(rows) < MIN_SENSITIVITY_KDS:
        return None
    sub = np.ix_(rows, rows)
    evidence = routing_evidence(c_out[sub], c_jac[sub], c_rep[sub], labels[rows], n_permutations, n_bootstrap,
                                seed, gram[sub], normal_reference_kds)
    return evidence, verdict.decide(evidence, rule)
