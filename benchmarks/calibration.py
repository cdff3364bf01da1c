"""Null calibration of the Part 3 routing tests.

    python benchmarks/calibration.py [--replicates 1000] [--permutations 299] [--seed 0] [--known-answer-seeds N]

Prints how often, at α = 0.05, each test rejects when routing does not track outputs
(`analysis.known_answers.null_replicate`):

- "independent" null: C_jac from KD vectors independent of C_out, with KD-level hub effects and unbalanced
  output clusters. The Mantel and cluster-label permutation tests should reject ≈ 5 %; the seed's pair-level
  Wilcoxon does not (pairs share KDs).
- "lookup" null: Model A's per-KD lookup, C_jac = C_out ⊙ cos(u): equal means, unequal spread, the case the
  studentized cluster-label permutation statistic is there for.
- --known-answer-seeds N: the verdict rule on the planted "negative" and "random" known-answer models
  (analytic C_out, C_jac of `known_answers.planted_model`) over N geometry seeds.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from analysis import clustering, known_answers, routing


def known_answer_sweep(kind: str, n_seeds: int, n_permutations: int, alpha: float = 0.05) -> str:
    contrast, mantel, rank_sum, calls = [], [], [], []
    for seed in range(n_seeds):
        planted = known_answers.planted_model(kind, seed)
        delta_y = planted.delta_y()
        c_out = clustering.cosine_similarity(delta_y)
        c_jac = clustering.cosine_similarity(planted.jacobians().reshape(len(delta_y), -1))
        labels = clustering.cluster_kds(delta_y, known_answers.STATISTICS["max_clusters"], 0, 0).labels
        m = routing.mantel(c_out, c_jac, n_permutations, 0)
        c = routing.cluster_contrast(c_jac, labels, n_permutations, 0)
        contrast.append(c.permutation.p_value < alpha)
        mantel.append(m.p_value < alpha)
        rank_sum.append(c.rank_sum_p < alpha)
        core = (m.statistic > 0.3 and m.p_value < alpha, c.difference > 0 and c.permutation.p_value < alpha)
        calls.append("positive" if all(core) else "mixed" if any(core) else "negative")
    calls = np.asarray(calls)
    return (f"known-answer '{kind}', {n_seeds} geometry seeds × {n_permutations} permutations: Mantel {np.mean(mantel):.1%}, "
            f"cluster-label permutation {np.mean(contrast):.1%}, pair-level Wilcoxon {np.mean(rank_sum):.1%}; "
            f"calls positive {np.mean(calls == 'positive'):.1%}, mixed {np.mean(calls == 'mixed'):.1%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=299)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--known-answer-seeds", type=int, default=0)
    args = parser.parse_args(argv)

    for null in known_answers.NULLS:
        started = time.perf_counter()
        rates = known_answers.null_rejection_rates(null, args.replicates, args.permutations, args.seed)
        print(f"{rates.summary()}  [{time.perf_counter() - started:.0f} s]", flush=True)
    for kind in ("negative", "random") if args.known_answer_seeds else ():
        started = time.perf_counter()
        print(known_answer_sweep(kind, args.known_answer_seeds, args.permutations)
              + f"  [{time.perf_counter() - started:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
