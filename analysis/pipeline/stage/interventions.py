"""The interventions stage: the model's responses to substituted pert_repr (forward passes only, on the effects
stage's control draws, batched by `model.interventions.sets_per_call`, every point in one request): each KD's
cluster leave-one-out centroid and random groups' centroids, the distance control's probe point and same-size
random moves, and the interchange of cluster-shared components; scored by `stats.interventions`."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ...config import AnalysisConfig
from ...model.interventions import substituted_responses
from ...model.protocol import PerturbationModel
from ...results import EffectsResult, InterventionsResult
from ...stats import interventions
from ..context import StageContext

NEEDS = ("inputs", "effects")
FIELDS = ("random_groups", "seed", "n_permutations", "n_bootstrap", "matched_moves", "probe_ratio")
FACTS = ()


def compute(ctx: StageContext, config: AnalysisConfig, inputs: PerturbationModel,
            effects: EffectsResult) -> InterventionsResult:
    started, responses = time.perf_counter(), effects.responses
    plan = interventions.substitution_plan(effects.labels, config.random_groups, config.seed)
    distance = interventions.distance_plan(responses.pert_repr, responses.control_repr, plan, config.probe_ratio,
                                           config.matched_moves, config.seed)
    swap = interventions.interchange_plan(responses.pert_repr, responses.control_repr, plan, config.seed)
    points = [interventions.centroids(responses.pert_repr, plan), distance.points] if plan.n_points else []
    points += [swap.points] if swap is not None else []
    answers = (substituted_responses(inputs, np.concatenate(points), responses.control_repr,
                                     responses.draw_cells, ctx.executor, ctx.state,
                                     "Interventions (substituted pert_repr)", ctx.progress)
               if points else np.zeros((0, len(responses.gene_names))))
    probed = plan.n_points + len(distance.points)
    substitution, table = interventions.substitution_test(responses.delta_y, answers[:plan.n_points],
                                                           answers[plan.n_points:probed], plan, distance,
                                                           responses.kd_names, config.n_bootstrap, config.seed)
    interchange = None
    if swap is not None:
        interchange, swapped = interventions.interchange_test(responses.delta_y, answers[probed:], swap,
                                                              config.n_permutations, config.n_bootstrap, config.seed)
        table = pd.concat([table, swapped], axis=1)
    return InterventionsResult(ctx.key, table, substitution, interchange, len(answers) * len(responses.draw_cells),
                               time.perf_counter() - started)
