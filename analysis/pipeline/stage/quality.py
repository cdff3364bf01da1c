"""Part 0, the quality stage: each KD with observed cells in the line predicted on the effects stage's control draws
(per cell) and scored through cell-eval with its baseline and ceiling, per KD and overall (seen / held out when the
split is known); then the routing statistics and the call on the KDs the model predicts better than the baseline.

cell-eval's DE metrics as the config field de_metrics decides (`quality.use_de`); without them the model enters as
its group means, from ΔY (`predict_means`), and no predicted cell is held.

Not scored (the run goes on, the reason recorded) when the .h5ad holds no perturbed cells of the analysed KDs in the
line, when the space is an undecoded embedding, or when the observed or predicted values cell-eval would read are
negative (it scores log-normalised expression)."""

from __future__ import annotations

import resource
import time

import numpy as np
import pandas as pd

from ...config import AnalysisConfig
from ...model.protocol import PerturbationModel
from ...model.observed import load_observed, training_split
from ...model.predict import predict_cells, predict_means
from ...results import EffectsResult, QualityResult, RoutingResult
from ...stats import quality
from ..context import StageContext

NEEDS = ("inputs", "effects", "routing")
FIELDS = ("seed", "kds_per_call", "held_out_kds", "min_observed_cells", "de_metrics", "n_permutations",
          "n_bootstrap", "normal_reference_kds", "alpha", "seed_r_threshold", "equivalence_r", "min_contrast",
          "min_specific_share", "global_share", "min_cluster_share")
FACTS = ("kd_names", "set_size")


def compute(ctx: StageContext, config: AnalysisConfig, inputs: PerturbationModel, effects: EffectsResult,
            routing: RoutingResult) -> QualityResult:
    loaded, responses = inputs, effects.responses
    started = time.perf_counter()
    kd_names = responses.kd_names
    held_out, split_source = training_split(config, inputs, kd_names)
    observed = load_observed(config, loaded)
    counts = pd.Series(observed.labels).value_counts()
    scored = [kd for kd in kd_names if counts.get(kd, 0) >= config.min_observed_cells and loaded.space.has_genes]
    status = ("not scored: the space is an undecoded embedding; cell-eval scores expression"
              if not loaded.space.has_genes else
              "" if scored else f"not scored: no KD has {config.min_observed_cells} or more observed cells in "
                                f"cell line '{config.cell_line}' of {config.h5ad.name}")
    kd_table, overall, keep = pd.DataFrame({"kd": []}), pd.DataFrame({"group": []}), np.zeros(len(kd_names), bool)
    de, de_reason = quality.use_de(config.de_metrics, len(scored))
    negative = "not scored: negative expression values in the {} (cell-eval scores log-normalised expression)"
    if not status:
        rows = np.isin(observed.labels, scored + [config.control_label])
        cells, labels = ((observed.cells, observed.labels) if rows.all() else  # no copy when every row is kept
                         (observed.cells[rows], observed.labels[rows]))
        status = negative.format("observed cells") if cells.min() < 0 else ""  # cell-eval refuses such data
    if not status:
        index = {kd: k for k, kd in enumerate(kd_names)}
        predicted = (predict_cells(loaded, scored, responses.draw_cells, config.kds_per_call) if de else
                     predict_means(loaded, responses.delta_y[[index[kd] for kd in scored]], responses.draw_cells))
        if predicted.min() < 0:
            status = negative.format("predicted cells" if de else "predicted group means")
    if status:
        scored = []
    else:
        kd_table, ceiling = quality.score_predictions(predicted, cells, labels, scored, loaded.gene_names,
                                                      config.control_label, config.seed, de)
        del predicted
        groups = {"all": scored}
        if held_out is not None:
            groups |= {"seen": [k for k in scored if k not in held_out], "held out": [k for k in scored if k in held_out]}
        overall = quality.overall_table(kd_table, ceiling, groups)
        keep = quality.well_predicted(kd_table, kd_names)
    found = quality.sensitivity(keep, effects.c_out, routing.c_jac, routing.c_rep, routing.gram, effects.labels,
                                config.n_permutations, config.n_bootstrap, config.seed, config.decision_rule,
                                config.normal_reference_kds)
    # Routing re-read on the KDs the model saw in training and on those it did not, when the split is known.
    split = {} if held_out is None else {
        group: quality.sensitivity(np.isin(kd_names, held_out) == held, effects.c_out, routing.c_jac,
                                   routing.c_rep, routing.gram, effects.labels, config.n_permutations,
                                   config.n_bootstrap, config.seed, config.decision_rule, config.normal_reference_kds)
        for group, held in (("seen", False), ("held out", True))}
    calls = {group: (found_calls[1], found_calls[0]) if found_calls else (None, None)
             for group, found_calls in split.items()}
    sensitivity, sensitivity_evidence = (found[1], found[0]) if found else (None, None)
    unscored = tuple(k for k in kd_names if k not in set(scored))
    well_predicted = tuple(k for k, kept in zip(kd_names, keep) if kept)
    # the process's peak resident memory up to the stage's end (Linux reports KiB): an upper bound for the stage
    return QualityResult(ctx.key, kd_table, overall, status, unscored, None if held_out is None else tuple(held_out),
                         split_source, well_predicted, sensitivity, sensitivity_evidence,
                         time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                         quality.cell_eval_version(), calls, tuple(quality.computed_metrics(de)), de, de_reason)
