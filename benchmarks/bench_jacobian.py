"""Benchmark: the Jacobian engine against the seed's method, on identical model and inputs in one run.

    python benchmarks/bench_jacobian.py [--device cpu|cuda] [--sizes demo,seed] [--draws 1] [--bf16] [--tf32]
                                        [--methods vmap,traced,compiled] [--kds-per-call 4] [--engine-kds N]

For each size it prints, side by side: the seed's method (`torch.autograd.functional.jacobian`,
reverse mode, one KD at a time), the previous engine (vmap(jvp), primal re-run per chunk) and the
engine (`forward_mode_jacobian`: the JVP traced once, its primal part run once per call, its tangent
part replayed per chunk of directions, eagerly and compiled by Inductor): time per KD, the speed-up,
the max relative error against the seed's method, achieved FLOP/s (counted with
torch.utils.flop_counter) against this machine's measured fp32 matmul rate, peak memory (each method
in a fresh process on CPU; torch.cuda.max_memory_allocated on CUDA), the one-off set-up (trace and
compile) and the time for all K KDs with it amortised. Then the streamed Gram + SVD on synthetic KD
shards, with its stated memory bound and the measured peak.
Sizes: "demo" (the embedded demo's model shape, random weights) and "seed" (the seed's model: hidden 328,
GPT2 8 layers × 8 heads, G = 2,000, 1,035 one-hot KDs, S = 128; a timed subset of KDs).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import jvp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.datasets import demo  # noqa: E402
from analysis.model import jacobians  # noqa: E402
from analysis.model.state import build  # noqa: E402
from analysis.model.state.run import StateModel  # noqa: E402
from analysis.stats.gram import jacobian_svd, stream_gram  # noqa: E402
from analysis.store import cache  # noqa: E402

SIZES = {
    # name: (genes G, hidden H, layers, heads, encoder/decoder layers, KDs, set size S, KDs timed: reverse, engine)
    # reverse_rows: None = the full Jacobian; (a, b, …) = time the seed's method on the first a, b, … output genes,
    # reverse_repeats times each, and extrapolate the line through the median times to G (its cost is one forward plus
    # one backward per output gene). Two single timings were not enough: under load their difference once made the
    # per-gene cost 62× the quiet run's (3,873 s/KD against 62 s).
    "demo": dict(genes=700, hidden=96, layers=2, heads=4, mlp_layers=2, n_kds=153, set_size=32, reverse_kds=2,
                 engine_kds=8, reverse_rows=None, reverse_repeats=1),
    "seed": dict(genes=2000, hidden=328, layers=8, heads=8, mlp_layers=4, n_kds=1035, set_size=128, reverse_kds=1,
                 engine_kds=1, reverse_rows=(8, 16, 32, 48), reverse_repeats=3),
}


def build_model(size: dict, device: str, dtype=torch.float32):
    torch.manual_seed(0)
    kwargs = demo.demo_model_kwargs(size["genes"], size["set_size"])
    kwargs.update(hidden_dim=size["hidden"], n_encoder_layers=size["mlp_layers"], n_decoder_layers=size["mlp_layers"])
    kwargs["transformer_backbone_kwargs"].update(n_embd=size["hidden"], n_layer=size["layers"], n_head=size["heads"])
    model = build.construct_model(size["genes"], size["n_kds"] + 1, kwargs, control=demo.CONTROL)
    model = model.eval().to(device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return StateModel.in_memory(model)


def inputs(model, size: dict, n_draws: int, n_kds: int, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    draw_sets = torch.log1p(torch.poisson(torch.full((n_draws, size["set_size"], size["genes"]), 2.0), generator=g))
    onehots = torch.eye(size["n_kds"] + 1)[1:n_kds + 1]
    with torch.no_grad():
        pert_repr = model.model.pert_encoder(onehots.to(device, dtype))
    return pert_repr, draw_sets.to(device, dtype)


# Methods compared, in the order printed. "vmap" is the engine before the traced graph (kept here as the baseline of
# the trace-once direction); "traced" and "compiled" are `jacobians.forward_mode_jacobian` with compile off and on.
METHODS = {
    "reverse": "seed's method (reverse, autograd.functional.jacobian)",
    "vmap": "vmap(jvp), primal per chunk (previous engine)",
    "traced": "engine: traced JVP graph, eager",
    "compiled": "engine: traced JVP graph, Inductor",
}


def run_method(method: str, size_name: str, device: str, n_draws: int, precision: str = "float32",
               threads: int = 0, kds_per_call: int = 4, engine_kds: int = 0) -> dict:
    """One method on one size, in this process: per-KD seconds, FLOPs per KD, set-up seconds, peak memory, the Jacobians.

    precision: "float32", "bfloat16", or "tf32" (float32 storage, TF32 matrix products on CUDA).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if threads:
        torch.set_num_threads(threads)
    # Compile from scratch: Inductor's on-disk cache would turn a repeated benchmark's set-up into a cache hit.
    torch._inductor.config.force_disable_caches = True
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    size, dtype = SIZES[size_name], getattr(torch, "float32" if tf32 else precision)
    model = build_model(size, device, dtype)
    n_kds = size["reverse_kds"] if method == "reverse" else engine_kds or size["engine_kds"]
    pert_repr, draw_sets = inputs(model, size, n_draws, n_kds, device, dtype)
    batches = pert_repr.split(kds_per_call)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def call(rows=None):
        if method == "reverse":
            return torch.stack([reverse_rows(model, p, draw_sets, rows) for p in pert_repr])
        if method == "vmap":
            return torch.cat([vmap_jacobian(model, p, draw_sets) for p in batches])
        return torch.cat([jacobians.forward_mode_jacobian(model, p, draw_sets, compile=method == "compiled")
                          for p in batches])

    def timed(rows=None):
        sync()
        started = time.perf_counter()
        result = call(rows)
        sync()
        return time.perf_counter() - started, result

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    # Warm-up: allocator, kernels, trace, compile. Untraced methods' FLOPs are counted here; the traced engines are
    # counted on their graphs below (a dispatch mode active while tracing or compiling would be traced into them).
    traced = method in ("traced", "compiled")
    warm_up = contextlib.nullcontext() if traced else FlopCounterMode(display=False)
    with warm_up:
        setup = timed(size["reverse_rows"] and size["reverse_rows"][0])[0]
    extra = {}
    if method == "reverse" and size["reverse_rows"]:
        timings, flops_at = {rows: [] for rows in size["reverse_rows"]}, {}
        for rows in size["reverse_rows"]:
            counter = FlopCounterMode(display=False)
            with counter:
                call(rows)
            flops_at[rows] = counter.get_total_flops()
        # Repeats interleave the row counts, so a burst of load on a shared machine lands on all of them alike.
        for _ in range(size["reverse_repeats"]):
            for rows in size["reverse_rows"]:
                seconds, result = timed(rows)
                timings[rows].append(seconds)
        fit = per_gene_fit(timings, size["genes"])
        seconds = fit["seconds"]
        flops = np.polyval(np.polyfit(list(flops_at), list(flops_at.values()), 1), size["genes"])
        extra = {"fit": fit}
    else:
        seconds, result = timed()
        if not traced:
            flops, extra = warm_up.get_total_flops(), {"setup_seconds": max(setup - seconds, 0.0)}
        else:
            graphs = traced_graphs(model)
            flops = graph_flops(graphs, batches, draw_sets)
            extra = {"setup_seconds": sum(g.trace_seconds + g.compile_seconds for g in graphs),
                     "kept_bytes": kept_bytes(graphs[0], batches[0], draw_sets), "chunk": graphs[0].chunk,
                     "cells_per_call": len(batches[0]) * draw_sets.shape[0] * draw_sets.shape[1]}
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"seconds_per_kd": seconds / n_kds, "flops_per_kd": flops / n_kds, "peak_bytes": peak,
            "jacobian": result.float().cpu().numpy(), "extrapolated": method == "reverse" and bool(size["reverse_rows"]),
            **extra}


def per_gene_fit(timings: dict[int, list[float]], genes: int) -> dict:
    """Line t = intercept + slope·rows through the median seconds at each row count {rows: [seconds per repeat]},
    extrapolated to `genes`; slope_range: the slopes of each repeat's own line (the fit's spread); residual: the
    largest |median − line| relative to the median."""
    rows = np.array(sorted(timings), dtype=np.float64)
    medians = np.array([np.median(timings[r]) for r in sorted(timings)])
    slope, intercept = np.polyfit(rows, medians, 1)
    repeats = [np.polyfit(rows, [timings[r][i] for r in sorted(timings)], 1)[0]
               for i in range(min(len(v) for v in timings.values()))]
    residual = float(np.max(np.abs(medians - (intercept + slope * rows)) / medians))
    return {"seconds": float(intercept + slope * genes), "slope": float(slope), "intercept": float(intercept),
            "slope_range": (float(min(repeats)), float(max(repeats))), "residual": residual}


def traced_graphs(model) -> list:
    """The engine's traced graphs for `model` (one per KD-batch shape)."""
    return list(jacobians._LINEARIZED[model.model].values())


def graph_flops(graphs: list, batches, draw_sets) -> int:
    """FLOPs of the engine's calls, counted on the traced graphs run eagerly (Inductor's kernels are opaque to the
    counter): per batch, the primal part once and the tangent part once per chunk."""
    from torch.utils.flop_counter import FlopCounterMode

    total = 0
    for p in batches:
        graph = next(g for g in graphs if g.input_shapes[0] == tuple(p.shape))
        counter = FlopCounterMode(display=False)
        with counter:
            kept = graph.keep(p, draw_sets)
        primal = counter.get_total_flops()
        counter = FlopCounterMode(display=False)
        with counter:
            graph.tangent(*kept, torch.zeros(graph.chunk, p.shape[1], device=p.device, dtype=p.dtype))
        total += primal + counter.get_total_flops() * -(-p.shape[1] // graph.chunk)
    return total


def kept_bytes(graph, p, draw_sets) -> int:
    """Bytes of the primal values one call keeps for its tangent chunks (distinct storages)."""
    storages = {}
    for t in graph.keep(p, draw_sets):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def vmap_jacobian(model, pert_repr, draw_sets):
    """The previous engine: vmap(jvp) over the H basis directions in chunks, the primal forward re-run in every chunk."""
    n_kds, hidden = pert_repr.shape
    chunk = jacobians.tangent_chunk(n_kds * draw_sets.shape[0] * draw_sets.shape[1], hidden, pert_repr.device)

    def column(direction):
        return jvp(lambda p: model.expected_output(p, draw_sets), (pert_repr,),
                   (direction.expand_as(pert_repr),))[1]

    basis = torch.eye(hidden, device=pert_repr.device, dtype=pert_repr.dtype)
    return vmap(column, chunk_size=chunk)(basis).permute(1, 2, 0)


def reverse_rows(model, p, draw_sets, rows=None):
    """The seed's method (torch.autograd.functional.jacobian) on E[Y], or on its first `rows` output genes."""
    if rows is None:
        return jacobians.reverse_mode_jacobian(model, p, draw_sets)
    with torch.enable_grad():
        return torch.autograd.functional.jacobian(
            lambda q: model.expected_output(q[None], draw_sets)[0][:rows], p)


def in_fresh_process(*args) -> dict:
    """CPU peak RSS is per process: run each method in its own."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_method, args)


def matmul_rate(device: str, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def benchmark_size(name: str, device: str, n_draws: int, peak_rate: float, methods: list, threads: int = 0,
                   kds_per_call: int = 4, engine_kds: int = 0) -> list[str]:
    """Run each (method, precision) of `methods` on one size and format the table, errors against the seed's method."""
    run = in_fresh_process if device == "cpu" else run_method
    seed = run("reverse", name, device, n_draws, "float32", threads, kds_per_call, engine_kds)
    rows = {METHODS["reverse"]: seed}
    for method, precision in methods:
        rows[f"{METHODS[method]} ({precision})"] = run(method, name, device, n_draws, precision, threads,
                                                       kds_per_call, engine_kds)
    size = SIZES[name]
    reference = seed["jacobian"]
    lines = [f"\n== {name}: G={size['genes']}, H={size['hidden']}, GPT2 {size['layers']}×{size['heads']}, S={size['set_size']}, "
             f"R={n_draws} draw(s), device {device}; KDs timed: reverse {size['reverse_kds']}, "
             f"engines {engine_kds or size['engine_kds']} ({kds_per_call} per call) ==",
             f"{'method':<62}{'s/KD':>9}{'speed-up':>10}{'max rel err':>13}{'GFLOP/s':>9}{'% matmul':>10}"
             f"{'peak MiB':>10}{'set-up s':>10}{'full K (h)':>11}"]
    notes = []
    for label, r in rows.items():
        n, g = min(len(reference), len(r["jacobian"])), reference.shape[1]  # the reverse rows computed
        error = np.abs(r["jacobian"][:n, :g] - reference[:n]).max() / np.abs(reference[:n]).max()
        rate = r["flops_per_kd"] / r["seconds_per_kd"]
        setup = r.get("setup_seconds", 0.0)
        lines.append(f"{label:<62}{r['seconds_per_kd']:>9.3f}{seed['seconds_per_kd'] / r['seconds_per_kd']:>9.1f}×"
                     f"{error:>13.1e}{rate / 1e9:>9.1f}{100 * rate / peak_rate:>9.0f}%{r['peak_bytes'] / 2**20:>10.0f}"
                     f"{setup:>10.0f}{(setup + r['seconds_per_kd'] * size['n_kds']) / 3600:>11.2f}")
        if "kept_bytes" in r:
            notes.append(f"{label}: {r['chunk']} tangents × {r['cells_per_call']} cells per chunk; primal values kept "
                         f"per call {r['kept_bytes'] / 2**20:.0f} MiB ({r['kept_bytes'] / r['cells_per_call'] / 2**10:.0f} KiB "
                         f"per cell; bounded by kds_per_call × R × S, independent of K and H)")
    if seed["extrapolated"]:
        fit = seed["fit"]
        low, high = (fit["intercept"] + slope * size["genes"] for slope in fit["slope_range"])
        notes.append(f"seed's method timed on the first {', '.join(map(str, size['reverse_rows']))} of G = "
                     f"{size['genes']} output genes, {size['reverse_repeats']} interleaved repeats each; the line "
                     f"through the median times gives {1e3 * fit['slope']:.1f} ms per output gene + "
                     f"{fit['intercept']:.2f} s fixed (each repeat's own line: {1e3 * fit['slope_range'][0]:.1f}–"
                     f"{1e3 * fit['slope_range'][1]:.1f} ms per gene, so {low:.1f}–{high:.1f} s/KD at G; largest "
                     f"residual of the medians {100 * fit['residual']:.1f} % of their time); error columns compare the "
                     f"first {max(size['reverse_rows'])} rows")
    notes.append("peak: whole process (model and compiler included) on CPU, torch.cuda.max_memory_allocated on CUDA; "
                 "set-up: trace + compile (engines) or warm-up overhead, once per process; "
                 "full K: set-up + all KDs of the size at this s/KD")
    return lines + [f"  {note}" for note in notes]


def benchmark_scale(n_kds: int, genes: int, hidden: int, shard_kds: int, memory_bytes: int) -> list[str]:
    """Streamed Gram + SVD of `n_kds` synthetic Jacobians, in a fresh process for a clean peak RSS."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_scale, (n_kds, genes, hidden, shard_kds, memory_bytes))


def _scale(n_kds, genes, hidden, shard_kds, memory_bytes) -> list[str]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for s, start in enumerate(range(0, n_kds, shard_kds)):
            block = rng.normal(size=(min(shard_kds, n_kds - start), genes, hidden)).astype(np.float32)
            cache.write_npz(Path(folder) / f"shard_{s:05d}.npz", jacobian=block,
                            kd_index=np.arange(start, start + len(block)), linear_prediction=np.zeros(block.shape[:2]))
        shards = jacobians.open_shards(Path(folder))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.perf_counter()
        gram = stream_gram(shards, memory_bytes)
        gram_seconds = time.perf_counter() - started
        svd = jacobian_svd(gram, shards, np.zeros((n_kds, genes)), n_axes=10)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    shard_bytes = shard_kds * genes * hidden * 8  # read as float64
    bound = memory_bytes + shard_bytes + 2 * n_kds**2 * 8 + 10 * (n_kds + genes * hidden) * 8
    return [f"\n== streamed Gram + SVD: {n_kds:,} synthetic KDs of {genes} × {hidden} in shards of {shard_kds} "
            f"({n_kds * genes * hidden * 4 / 2**20:.0f} MiB on disk) ==",
            f"memory bound: block budget {memory_bytes / 2**20:.0f} MiB + one shard {shard_bytes / 2**20:.1f} MiB "
            f"+ Gram and its float64 working copy 2·K²·8 B {2 * n_kds**2 * 8 / 2**20:.0f} MiB + axes = {bound / 2**20:.0f} MiB",
            f"measured peak RSS increase: {peak / 2**20:.0f} MiB ({'within' if peak <= bound else 'ABOVE'} the bound); "
            f"Gram {gram_seconds:.1f} s, Gram + SVD {seconds:.1f} s; leading singular value {svd.singular_values[0]:.1f}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="demo,seed")
    parser.add_argument("--draws", type=int, default=1, help="R control draws per KD (the pipeline's default is 4)")
    parser.add_argument("--methods", default="vmap,traced,compiled", help="engines to time besides the seed's method")
    parser.add_argument("--bf16", action="store_true", help="also time the compiled engine in bfloat16 (opt-in precision)")
    parser.add_argument("--tf32", action="store_true", help="also time the compiled engine with TF32 matmuls (CUDA)")
    parser.add_argument("--kds-per-call", type=int, default=4)
    parser.add_argument("--engine-kds", type=int, default=0, help="KDs the engines time (0: the size's default; "
                        "1035 times the seed's full K)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--scale-kds", type=int, default=10_000)
    parser.add_argument("--scale-memory-mib", type=int, default=64)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    peak_rate = matmul_rate(args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"measured fp32 matmul (2048²): {peak_rate / 1e9:.1f} GFLOP/s")
    print("targets at the seed's size: CPU ≥ 6× the seed's method and ≥ 50 % of the matmul rate, max rel err ≤ 1e-5 (fp32)")
    methods = [(m, "float32") for m in args.methods.split(",") if m]
    methods += [("compiled", p) for p, on in (("bfloat16", args.bf16), ("tf32", args.tf32)) if on]
    for size in args.sizes.split(","):
        print("\n".join(benchmark_size(size, args.device, args.draws, peak_rate, methods, args.threads,
                                       args.kds_per_call, args.engine_kds)), flush=True)
    if args.scale_kds:
        print("\n".join(benchmark_scale(args.scale_kds, 64, 16, 50, args.scale_memory_mib * 2**20)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
