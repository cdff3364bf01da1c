"""The routing stage: C_jac and its KD-specific part C_jac^spec from the streamed Gram, the SVD and its reading, the
statistics, the verdict (with the interventions' answer to whether the geometry is used), routing block by block
through the backbone, the prior-work numbers."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ...config import AnalysisConfig
from ...model.protocol import PerturbationModel
from ...results import EffectsResult, InterventionsResult, JacobiansResult, RoutingResult
from ...stats import clustering, reliability, verdict
from ...stats.axes import output_svd, read_axes
from ...stats.decomposition import common_loadings, decompose, response_shares
from ...stats.evidence import routing_by_depth, routing_evidence
from ...stats.gram import cosine_from_gram, jacobian_svd, stream_gram
from ...stats.nulls import reference_for
from ...stats.prior_work import prior_work
from ...store.gmt import read_libraries
from ..context import StageContext

NEEDS = ("inputs", "effects", "interventions", "jacobians")
FIELDS = ("n_permutations", "n_bootstrap", "normal_reference_kds", "seed", "alpha", "seed_r_threshold",
          "equivalence_r", "min_contrast", "min_specific_share", "min_response_share", "global_share",
          "min_cluster_share", "substitution_margin", "min_reliability", "fdr", "n_axes", "prerank_permutations",
          "gene_sets")
FACTS = ("gene_set_digests",)


def compute(ctx: StageContext, config: AnalysisConfig, inputs: PerturbationModel, effects: EffectsResult,
            interventions: InterventionsResult, jacobians: JacobiansResult) -> RoutingResult:
    started, responses, shards = time.perf_counter(), effects.responses, jacobians.shards
    gram = stream_gram(shards)
    c_jac = cosine_from_gram(gram)
    _, c_jac_specific = decompose(gram)
    c_rep = clustering.cosine_similarity(responses.pert_repr)
    svd = jacobian_svd(gram, shards, responses.delta_y, config.n_axes)
    output_scores, output_loadings = output_svd(responses.delta_y, config.n_axes)
    # the response split: along the path p_ctrl → p_k where the shards hold it (ΔY_k itself), else to first order
    local = shards.linear_prediction()
    along = shards.path_loadings(svd.common_direction) if shards.has_path else common_loadings(gram)
    produced = shards.linear_prediction(along_path=True) if shards.has_path else local
    response, first_order = response_shares(along, svd.common_direction, responses.pert_repr - responses.control_repr,
                                            produced, responses.delta_y, effects.labels, jacobians.path_points,
                                            config.n_bootstrap, config.seed, local)
    evidence = routing_evidence(effects.c_out, c_jac, c_rep, effects.labels, config.n_permutations,
                                config.n_bootstrap, config.seed, gram, config.normal_reference_kds)
    evidence = replace(evidence, response=response, output_clusters=effects.existence)
    evidence = reliability.with_noise_floor(evidence, *reliability.halves(shards, responses.delta_y_draws))
    depth = verdict.read_depth(routing_by_depth(
        [shards.block(b) for b in range(shards.n_blocks)], effects.c_out, effects.labels, config.n_permutations,
        config.seed, reference_for(evidence.n_strong, config.normal_reference_kds)), config.decision_rule)
    svd_table, svd_evidence = read_axes(svd, output_scores, output_loadings, responses.kd_names,
                                        responses.gene_names, read_libraries(config.gene_sets), config.fdr,
                                        config.prerank_permutations, config.seed, inputs.space.has_genes)
    call = verdict.decide(evidence, config.decision_rule, svd_evidence, interventions.substitution,
                          interventions.interchange)
    first_order.insert(0, "kd", responses.kd_names)
    first_order["jacobian_norm"] = np.sqrt(np.diag(gram))
    seconds = {"effects": effects.seconds, "jacobians": jacobians.seconds, "routing": time.perf_counter() - started}
    return RoutingResult(
        ctx.key, jacobians.key, c_jac, c_rep, gram, svd.variance_explained, svd.kd_scores, svd.gene_loadings,
        output_scores, output_loadings, evidence, svd_evidence, svd_table, first_order, call,
        prior_work(responses.kd_names, effects.c_out, c_jac, c_rep, effects.labels), seconds,
        jacobians.autograd_check, jacobians.device, c_jac_specific, svd.input_directions, svd.common_gene_loading, depth)
