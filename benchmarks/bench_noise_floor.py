"""Benchmark: what the noise floor's split-half Jacobians cost on the demo (issue 18).

    python benchmarks/bench_noise_floor.py [--config configs/demo.toml] [--kds 32] [--repeats 3]

The Jacobian stage differentiates each half of the R control draws separately (`jacobians.draw_halves`): the same
forward work as one JVP over all draws, in two calls of half the cells. Timed on the first `--kds` KDs of the demo's
primary line (one shard), interleaved with the single-call computation of the same J (min of `--repeats`), so the
load of a shared machine hits both alike; the stored halves' extra bytes per shard are printed too. The routing
stage's share (two more streamed Grams) is recorded in its stage record as `noise_floor_seconds`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.config import load_config  # noqa: E402
from analysis.datasets import demo  # noqa: E402
from analysis.model import jacobians  # noqa: E402
from analysis.model.effects import draw_control_sets  # noqa: E402
from analysis.model.load import load_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.toml")
    parser.add_argument("--kds", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    demo.ensure_demo(config)
    line = config.per_line()[0]
    run = load_run(line)
    n_kds = min(args.kds, len(run.kd_names))
    draw_cells = draw_control_sets(len(run.controls), run.set_size, line.n_draws, line.seed)
    pert_repr = run.encode(run.kd_names[:n_kds]).double().cpu().numpy()
    inputs = jacobians.JacobianInputs(pert_repr, np.zeros(pert_repr.shape[1]), draw_cells, line.kds_per_call,
                                      line.tangents_per_call, line.compile_jacobian)
    task = jacobians.ShardTask(0, range(n_kds))
    single = jacobians.draw_halves  # the stage as it runs: halves when R ≥ 2

    def one_call(n_draws):
        return (range(n_draws),)

    times = {"halves": [], "one call": []}
    for _ in range(args.repeats):
        for name, halves in (("halves", single), ("one call", one_call)):
            jacobians.draw_halves = halves
            started = time.perf_counter()
            arrays = jacobians.jacobian_shard(run, task, inputs)
            times[name].append(time.perf_counter() - started)
            if name == "halves":
                extra = sum(arrays[k].nbytes for k in ("jacobian_split", "half_draws") if k in arrays)
                full = arrays["jacobian"].nbytes
            else:
                plain = arrays["jacobian"]
    jacobians.draw_halves = single
    best = {k: min(v) for k, v in times.items()}
    print(f"demo, {n_kds} KDs, R = {line.n_draws} draws of {run.set_size} cells, G × H = "
          f"{plain.shape[1]} × {plain.shape[2]}, min of {args.repeats} interleaved runs:")
    print(f"  one JVP call over all draws: {best['one call']:.2f} s; two halves: {best['halves']:.2f} s "
          f"({best['halves'] / best['one call'] - 1:+.0%})")
    print(f"  per shard: J {full / 2**20:.1f} MiB, the halves' difference {extra / 2**20:.1f} MiB more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
