"""The effects stage: ΔY for every KD (batches on the context's executor), its reproducibility, clusters and
enrichment."""

from __future__ import annotations

import time

from ...config import AnalysisConfig
from ...errors import InputError
from ...model.effects import compute_effects
from ...model.protocol import PerturbationModel
from ...results import EffectsResult
from ...stats import clustering, enrichment
from ...stats.draws import reproducibility
from ...store.gmt import read_libraries
from ..context import StageContext

NEEDS = ("inputs",)
FIELDS = ("n_draws", "seed", "kds_per_call", "max_clusters", "cluster_bootstrap", "cluster_null_draws",
          "weak_fraction", "prerank_permutations", "gene_sets")
FACTS = ("kd_names", "set_size", "gene_set_digests")


def compute(ctx: StageContext, config: AnalysisConfig, inputs: PerturbationModel) -> EffectsResult:
    started = time.perf_counter()
    responses = compute_effects(inputs, config.n_draws, config.seed, config.kds_per_call, ctx.executor, ctx.state,
                                ctx.progress)
    try:
        clusters = clustering.cluster_kds(responses.delta_y, config.max_clusters, config.cluster_bootstrap,
                                          config.seed, config.weak_fraction)
    except clustering.TooFewStrongEffects as exc:
        raise InputError(f"{config.source} [data].kds", f"{exc}; analyse more KDs") from None
    existence = clustering.cluster_existence(responses.delta_y, clusters, config.max_clusters,
                                             config.cluster_null_draws, config.seed)
    libraries = read_libraries(config.gene_sets)
    ora, gsea = enrichment.cluster_enrichment(responses.kd_names, clusters.labels, responses.delta_y,
                                              responses.gene_names, libraries, config.prerank_permutations,
                                              config.seed, inputs.space.has_genes)
    kd_table = clustering.cluster_table(responses.kd_names, clusters,
                                        reproducibility(responses.kd_names, responses.delta_y_draws))
    return EffectsResult(ctx.key, responses, kd_table, clustering.cosine_similarity(responses.delta_y),
                         clusters.silhouette, clusters.bootstrap_ari, clusters.order, ora, gsea,
                         time.perf_counter() - started, existence)
