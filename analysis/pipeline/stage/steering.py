"""The steering stage: ΔY as p moves along each leading routing axis from its highest-scoring KD (forward passes
only), against the first-order prediction from that KD's stored Jacobian: dose-response and trust radius per axis."""

from __future__ import annotations

import time

from ...config import AnalysisConfig
from ...model.interventions import substituted_responses
from ...model.protocol import PerturbationModel
from ...results import EffectsResult, JacobiansResult, RoutingResult, SteeringResult
from ...stats import interventions
from ..context import StageContext

NEEDS = ("inputs", "effects", "jacobians", "routing")
FIELDS = ()
FACTS = ()


def compute(ctx: StageContext, config: AnalysisConfig, inputs: PerturbationModel, effects: EffectsResult,
            jacobians: JacobiansResult, routing: RoutingResult) -> SteeringResult:
    started, responses = time.perf_counter(), effects.responses
    plan = interventions.steering_plan(responses.pert_repr, responses.control_repr, routing.kd_scores,
                                       routing.input_directions, effects.labels)
    answers = substituted_responses(inputs, plan.points, responses.control_repr, responses.draw_cells, ctx.executor,
                                    ctx.state, "Steering along routing axes", ctx.progress)
    table, radii = interventions.steering_table(answers, interventions.first_order_columns(jacobians.shards, plan),
                                                plan, routing.gene_loadings, responses.kd_names)
    return SteeringResult(ctx.key, table, tuple(radii), plan.scale, interventions.TRUST_TOLERANCE,
                          time.perf_counter() - started)
