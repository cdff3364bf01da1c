"""Benchmark: the Jacobian stage on the local executor and on Ray with 1 and 2 workers, then a 10,000-KD projection.

    python benchmarks/bench_executors.py [--config configs/demo.toml] [--shard-kds 8] [--workers 1,2]
                                         [--per-kd-seconds 10.35] [--n-kds 10000] [--gpus 1,2,4,8,16]

On the demo (its ΔY and pert_repr computed first, in this process), every executor computes the same shard tasks
(`shard_kds` KDs each, so the 153 KDs make enough tasks to share between workers), and the shards are checked
byte-identical to the local executor's. Printed per executor: wall time, Ray's start-up (workers created and
the model built in each from checkpoint bytes), the compute phase after it, seconds per KD, speed-up and
scaling efficiency over one Ray worker, and the per-task overhead: a no-op task's round trip, and the
compute-phase difference between one Ray worker and the local executor on the same thread count, per task.

Then the projection for `--n-kds` KDs at the seed's model size (hidden 328, GPT2 8×8, G = 2,000) on N GPU
workers, from a per-KD time (default: the seed-size CPU engine time of benchmarks/bench_jacobian.py, R = 1,
in docs/benchmarks-and-scale.md; pass a GPU's measured `--per-kd-seconds` from `bench_jacobian.py --device cuda`),
the measured start-up and per-task overhead, beside the streamed Gram + SVD's compute and memory at that size (its
memory bound is `gram.stream_gram`'s: block budget + one shard + K² doubles twice + the axes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.config import load_config  # noqa: E402
from analysis.datasets import demo  # noqa: E402
from analysis.model import jacobians  # noqa: E402
from analysis.model.effects import compute_effects  # noqa: E402
from analysis.model.load import load_run  # noqa: E402
from analysis.pipeline import executors  # noqa: E402
from analysis.store import cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = dict(genes=2000, hidden=328, shard_kds=16)  # the seed's model output G and pert_repr H; the pipeline's shards


def run_stage(executor, fn, tasks, state) -> tuple[float, dict]:
    """Wall seconds of one executor over the shard tasks, and the shard bytes by index."""
    started = time.perf_counter()
    shards = {task.index: cache.npz_bytes(arrays) for task, arrays in executor.map(fn, tasks, state)}
    return time.perf_counter() - started, shards


class Nothing:
    """Shipped state for the no-op round trip."""

    def build(self) -> None:
        return None


def no_op(state, task):
    return task


def round_trip_seconds(n_tasks: int = 200) -> float:
    """Per-task overhead of a no-op task on one Ray worker (submit, run, `ray.wait`, fetch), start-up excluded."""
    executor = executors.RayExecutor(workers=1)
    started = time.perf_counter()
    list(executor.map(no_op, range(n_tasks), executors.WorkerState(None, Nothing)))
    seconds = time.perf_counter() - started - executor.startup_seconds
    executor.close()
    return seconds / n_tasks


def matmul_rate(dtype=torch.float64, n: int = 2048) -> float:
    """FLOP/s of one n × n matrix product on this machine (the Gram is a float64 product)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * n**3 / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.toml"))
    parser.add_argument("--shard-kds", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    parser.add_argument("--per-kd-seconds", type=float, default=10.35,
                        help="seed-size seconds per KD for the projection (default: the documented CPU engine time, R = 1)")
    parser.add_argument("--n-kds", type=int, default=10_000)
    parser.add_argument("--gpus", default="1,2,4,8,16")
    parser.add_argument("--gram-memory-gib", type=float, default=2.0, help="stream_gram's block budget")
    args = parser.parse_args(argv)

    config = load_config(args.config).replace(shard_kds=args.shard_kds, device="cpu").per_line()[0]
    demo.ensure_demo(config, progress=False)
    run = load_run(config)
    effects = compute_effects(run, config.n_draws, config.seed, config.kds_per_call, progress=False)
    tasks = jacobians.shard_tasks(len(run.kd_names), config.shard_kds)
    inputs = jacobians.JacobianInputs(effects.pert_repr, effects.control_repr, effects.draw_cells,
                                      config.kds_per_call, config.tangents_per_call)
    fn = partial(jacobians.jacobian_shard, inputs=inputs)
    state = executors.WorkerState(run, run.ship)
    n_kds = len(run.kd_names)
    print(f"demo: {n_kds} KDs, G = {len(run.gene_names)}, H = {run.hidden_size}, S = {run.set_size}, "
          f"R = {config.n_draws} draws, {len(tasks)} shard tasks of {config.shard_kds} KDs; CPU only "
          f"(no GPU was lent to this session); {os.cpu_count()} cores shared with other agents' work, so times are noisy")

    rows = []
    threads = torch.get_num_threads()
    for n_threads in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n_threads)
        wall, reference = run_stage(executors.LocalExecutor(), fn, tasks, state)
        rows.append((f"local, {n_threads} thread(s)", wall, 0.0, wall))
        print(f"  measured {rows[-1][0]}: {wall:.1f} s", flush=True)
        local_one_thread = wall
        if n_threads == threads:
            local_shards = reference
    torch.set_num_threads(threads)

    executors.init_ray(num_cpus=os.cpu_count())
    one_worker = None
    for n_workers in [int(w) for w in args.workers.split(",")]:
        executor = executors.RayExecutor(workers=n_workers)
        wall, shards = run_stage(executor, fn, tasks, state)
        executor.close()  # free its CPUs for the next measurement
        assert shards == local_shards, f"Ray with {n_workers} worker(s): shard bytes differ from the local executor's"
        compute = wall - executor.startup_seconds
        one_worker = one_worker or (n_workers, compute)
        rows.append((f"ray, {n_workers} worker(s) × 1 CPU", wall, executor.startup_seconds, compute))
        print(f"  measured {rows[-1][0]}: {wall:.1f} s", flush=True)
    overhead = round_trip_seconds()

    print(f"\n{'executor':<28}{'wall s':>9}{'start-up s':>12}{'compute s':>11}{'s/KD':>8}{'speed-up':>10}{'efficiency':>12}")
    for name, wall, startup, compute in rows:
        if name.startswith("ray"):
            workers = int(name.split(", ")[1].split()[0])
            speedup = one_worker[1] * one_worker[0] / compute
            scaling = f"{speedup:>9.2f}×{speedup / workers:>11.0%}"
        else:
            scaling = f"{'':>10}{'':>12}"
        print(f"{name:<28}{wall:>9.1f}{startup:>12.1f}{compute:>11.1f}{compute / n_kds:>8.3f}{scaling}")
    print("(speed-up and efficiency: compute phase against one Ray worker; all shards byte-identical to the local run's)")
    shard_overhead = (one_worker[1] - local_one_thread) / len(tasks)
    print(f"per-task overhead: no-op round trip {overhead * 1e3:.1f} ms; one Ray worker vs local at 1 thread "
          f"{shard_overhead * 1e3:+.0f} ms per shard task ({config.shard_kds} KDs, "
          f"{len(local_shards[0]) / 2**20:.1f} MiB returned)")

    startup = max(r[2] for r in rows)
    genes, hidden, shard_kds = SEED["genes"], SEED["hidden"], SEED["shard_kds"]
    k = args.n_kds
    n_tasks = -(-k // shard_kds)
    print(f"\nprojection: {k:,} KDs at the seed's size (G {genes:,}, H {hidden}), shards of {shard_kds} KDs "
          f"({n_tasks} tasks), {args.per_kd_seconds} s/KD per worker"
          + (" (the documented CPU engine time, R = 1: no GPU time has been measured; pass a GPU's with --per-kd-seconds)"
             if args.per_kd_seconds == parser.get_default("per_kd_seconds") else ""))
    print(f"{'workers':>8}{'Jacobian stage h':>18}   (= KDs × s/KD / workers + tasks / workers × "
          f"{max(shard_overhead, overhead) * 1e3:.1f} ms overhead + {startup:.0f} s start-up)")
    for n in [int(g) for g in args.gpus.split(",")]:
        hours = (k * args.per_kd_seconds / n + n_tasks / n * max(shard_overhead, overhead) + startup) / 3600
        print(f"{n:>8}{hours:>18.2f}")
    rate = matmul_rate()
    flops = k * k * genes * hidden * 2 / 2  # the symmetric K × K product of K rows of G·H, each pair once
    budget = args.gram_memory_gib * 2**30
    row_bytes = genes * hidden * 8
    blocks = -(-k // max(1, int(budget // 2 // (genes * hidden * 4))))
    read = blocks * k * genes * hidden * 4 / 2
    memory = budget + shard_kds * row_bytes + 2 * k * k * 8 + 10 * (k + genes * hidden) * 8
    print(f"streamed Gram + SVD beside it (one process, this machine's float64 matmul {rate / 1e9:.0f} GFLOP/s): "
          f"{flops / rate / 3600:.2f} h of products over {blocks} row blocks re-reading {read / 2**40:.1f} TiB of shards "
          f"({k * genes * hidden * 4 / 2**30:.0f} GiB on disk); memory bound {memory / 2**30:.1f} GiB "
          f"(block budget {args.gram_memory_gib:g} GiB + one shard + 2·K²·8 B + axes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
