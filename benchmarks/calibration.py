"""Calibration of the verdict: error rates of every test that feeds the call, and of the call itself.

    python benchmarks/calibration.py [--replicates 1000] [--permutations 299] [--known-answer-seeds 50] [--seed 0]

For each world of `analysis.calibration` (null worlds, where routing does not follow outputs, and planted partial
sharing), prints each test's rejection rate at α = 0.05 with its binomial SE and the share of each call made by
`analysis.verdict.decide` under the default `DecisionRule` — the same function the pipeline calls. Then the planted
known-answer models over geometry seeds. Target: studentized tests feeding the call within 3–7 % under every null
world; "positive" below 5 % under every null world; "negative" below 5 % under planted sharing with r above the
smallest effect of interest. The shared-cause world is a null for the partial Mantel only (there C_jac does track
C_out, through the embedding), and the partial Mantel never decides.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=299)
    parser.add_argument("--known-answer-seeds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=calibration.STORED_RATES,
                        help="where the table the report shows is written (JSON)")
    args = parser.parse_args(argv)
    rule = default_decision_rule()
    print(f"decision rule: {rule}")
    table = []
    runs = [(w, lambda w=w: calibration.rates(w, args.replicates, args.permutations, rule, args.seed))
            for w in calibration.NULL_WORLDS + tuple(calibration.ALTERNATIVES)]
    runs += [(k, lambda k=k: calibration.known_answer_calls(k, args.known_answer_seeds, args.permutations, rule))
             for k in (known_answers.KINDS if args.known_answer_seeds else ())]
    for _, run in runs:
        started = time.perf_counter()
        rates = run()
        print(f"{rates.summary()}  [{time.perf_counter() - started:.0f} s]", flush=True)
        table.append(asdict(rates))
    cache.write_json(args.out, {"rule": asdict(rule), "rates": table})
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
