"""The across-lines stage: the primary line against each other line, per-KD cosines of ΔY and of J and the paired
comparison. Run once per analysis with several lines; its key's facts name each line and its effects and routing
keys (the routing key contains the Jacobians')."""

from __future__ import annotations

import time

import pandas as pd

from ...config import AnalysisConfig
from ...results import AcrossResult, LineResults
from ...stats import consistency
from ..context import StageContext

NEEDS = ()
FIELDS = ("n_permutations", "n_bootstrap", "seed", "alpha")
FACTS = ("lines",)
SCOPE = "run"  # computed once from every line's records, not per line


def line_data(line: LineResults) -> consistency.LineData:
    responses = line.effects.responses
    return consistency.LineData(line.cell_line, responses.kd_names, responses.delta_y, line.jacobians.shards,
                                line.routing.gram, line.effects.labels)


def compute(ctx: StageContext, config: AnalysisConfig, lines: tuple[LineResults, ...]) -> AcrossResult:
    started = time.perf_counter()
    primary, tables, tests = line_data(lines[0]), [], []
    for line in lines[1:]:
        table, pair_tests = consistency.compare_lines(primary, line_data(line), config.n_permutations,
                                                      config.n_bootstrap, config.seed, config.alpha)
        tables.append(table)
        tests += pair_tests
    return AcrossResult(ctx.key, pd.concat(tables, ignore_index=True), tuple(tests), time.perf_counter() - started)
