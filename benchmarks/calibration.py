"""Calibration of the verdict: error rates of every test that feeds the call, and of the call itself.

    python benchmarks/calibration.py [--replicates 1000] [--permutations 299] [--known-answer-seeds 50]
                                     [--use-replicates 200] [--use-modules all,2,3,4] [--seed 0]

For each world of `analysis.calibration` (null worlds, where routing does not follow outputs, and planted partial
sharing), prints each test's rejection rate at α = 0.05 with its binomial SE and the share of each call made by
`analysis.verdict.decide` under the default `DecisionRule` — the same function the pipeline calls. Then the planted
known-answer models over geometry seeds. Target: studentized tests feeding the call within 3–7 % under every null
world; "cluster circuits" below 5 % under every null world; "per-KD" below 5 % under planted sharing with r above the
smallest effect of interest; in the common-component worlds (issue 18) each world's false calls
(`calibration.FALSE_CALLS`: e.g. "per-KD" or "cluster circuits" where routing is identical up to noise) below 5 %,
printed as "false calls" with their binomial SE. The shared-cause world is a null for the partial Mantel only (there C_jac does track
C_out, through the embedding), and the partial Mantel never decides.

Then the interventions' answer (issue 17: is the geometry used?) in `calibration.USE_WORLDS`, model-level worlds
from the known-answer models' planted functions with draw noise: the substitution test's rejection rate and the
share of wrong answers ("used" or "partly used" for a lookup, "not used" for a model that uses the geometry),
target below 5 %; with every planted module ("all") and with the KDs of the first 2, 3, 4 modules only (the power
with few output clusters, where a sign flip over clusters could never answer "used").
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from analysis.config import default_decision_rule
from analysis.datasets import calibration, known_answers
from analysis.store import cache

# Benchmark results, not package data: the report names these files (report/index.qmd) and shows a table only when
# the decision rule it was computed under, stored in it, is the rule of the analysis (`calibration.stored_table`).
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=299)
    parser.add_argument("--known-answer-seeds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use-replicates", type=int, default=200)
    parser.add_argument("--use-modules", default="all,2,3,4",
                        help="module counts of the interventions' worlds, comma-separated ('all': every module)")
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration_rates.json",
                        help="where the table the report shows is written (JSON)")
    parser.add_argument("--use-out", type=Path, default=RESULTS / "calibration_interventions.json",
                        help="where the interventions' table is written (JSON)")
    args = parser.parse_args(argv)
    rule = default_decision_rule()
    print(f"decision rule: {rule}")
    table = []
    runs = [(w, lambda w=w: calibration.rates(w, args.replicates, args.permutations, rule, args.seed))
            for w in (calibration.WORLDS if args.replicates else ())]
    runs += [(k, lambda k=k: calibration.known_answer_calls(k, args.known_answer_seeds, args.permutations, rule))
             for k in (known_answers.KINDS if args.known_answer_seeds else ())]
    for _, run in runs:
        started = time.perf_counter()
        rates = run()
        print(f"{rates.summary()}  [{time.perf_counter() - started:.0f} s]", flush=True)
        table.append(asdict(rates) | {"false_calls": list(rates.false_calls), "false_rate": rates.false_rate})
    if args.replicates:
        cache.write_json(args.out, {"rule": asdict(rule), "rates": table})
        print(f"written: {args.out}")
    use_table = []
    modules = [None if m == "all" else int(m) for m in args.use_modules.split(",")]
    for n_modules, world in [(m, w) for m in modules for w in calibration.USE_WORLDS] if args.use_replicates else ():
        started = time.perf_counter()
        rates = calibration.use_rates(world, args.use_replicates, rule, seed=args.seed, n_modules=n_modules)
        print(f"{rates.summary()}  [{time.perf_counter() - started:.0f} s]", flush=True)
        use_table.append(asdict(rates))
    if use_table:
        cache.write_json(args.use_out, {"rule": asdict(rule), "rates": use_table})
        print(f"written: {args.use_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
