"""The Jacobian J_k = ∂E[Y]/∂pert_repr at pert_repr_k, through the model's own forward.

E is the mean over the S cells of a set and over the R control draws; the perturbation
representation p is substituted for the perturbation encoder's output of every cell of the set
(the model's `expected_output`, `protocol.PerturbationModel`). One J_k is [G, H].

H ≪ G, so forward mode is the efficient direction: one Jacobian-vector product per
pert_repr direction gives a whole column for every KD of the call, because the sets of
different KDs are independent (the output of KD b's sets depends only on p_b). The JVP,
vmapped over a chunk of directions, is traced once per input shape (`tangent_graph`): its
primal part runs once per call, its tangent part once per chunk, optionally compiled by
Inductor. `torch.autograd.functional.jacobian` (reverse mode, one backward per output gene)
is the seed's method, kept as the oracle (`reverse_mode_jacobian`).

The stage is a list of shard tasks (KD ranges); `jacobian_shard` computes one and writes
nothing. The pipeline runs the tasks on an executor (`executors`: in process, or on Ray workers) and stores
each shard as it finishes (`store.shards.ShardStore`), so an interrupted run resumes at the shards
that are missing or damaged; the shard folder is keyed by model, data, draws and code, so
a stale shard is never reused.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jvp, vmap

from .protocol import PerturbationModel
from .tangent_graph import LinearizedFunction


# Rows (tangents × cells) one chunk of the tangent graph carries, at most. Compiled, larger chunks run faster on a CPU
# too (measured at the seed's size, 128 cells, min of interleaved runs: 141, 90 and 82 ms per tangent at 1,024, 4,096
# and 12,288 rows; eagerly, 4,096 beat 16,384 by 1.7×: the unfused element-wise passes then fall out of cache). On
# a GPU a chunk should fill the device without exhausting its memory.
ROWS_PER_CHUNK = {"cpu": 4_096, "cuda": 262_144}  # eager
COMPILED_ROWS_PER_CHUNK = {"cpu": 12_288, "cuda": 262_144}


def tangent_chunk(n_cells: int, hidden: int, device: torch.device, compiled: bool = False) -> int:
    """Tangent directions per chunk for `n_cells` cells: the 'auto' value of tangents_per_call.

    The H directions are split into equal chunks of at most ROWS_PER_CHUNK rows, so the zero-padding of the last
    chunk wastes less than one direction per chunk.
    """
    table = COMPILED_ROWS_PER_CHUNK if compiled else ROWS_PER_CHUNK
    rows = table.get(device.type, table["cpu"])
    n_chunks = -(-hidden * max(n_cells, 1) // rows)
    return -(-hidden // n_chunks)


# Traced JVP graphs per torch module (`PerturbationModel.model`: the runs of several cell lines share one), by input
# shapes, chunk, compile and decode flags and the parameters' identity and version (an in-place update or a dtype
# conversion of the module retraces). Weak keys: a graph goes with its module.
_LINEARIZED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def linearized_jacobian(model: PerturbationModel, pert_repr: torch.Tensor, draw_sets: torch.Tensor, chunk: int,
                        compile: bool, blocks: bool = False) -> LinearizedFunction:
    """The traced JVP of the model's `expected_output` (blocks: `expected_states`) for inputs of these shapes and
    `chunk` directions at a time (cached).

    Its tangent part maps the kept primal values and directions [chunk, H] to columns [chunk, B, G] (blocks: and
    the blocks' columns [chunk, L, B, D]).
    """
    module = model.model
    parameters = tuple((p.data_ptr(), p.dtype, p._version) for p in module.parameters())
    key = (tuple(pert_repr.shape), tuple(draw_sets.shape), pert_repr.dtype, pert_repr.device, chunk, compile,
           model.space.decode, blocks, parameters)
    graphs = _LINEARIZED.setdefault(module, {})
    if key not in graphs:
        function = model.expected_states if blocks else model.expected_output

        def columns(p, sets, directions):  # directions [T, H] -> [T, B, G] (and [T, L, B, D])
            def column(direction):
                return jvp(lambda q: function(q, sets), (p,), (direction.expand_as(p),))[1]
            return vmap(column)(directions)

        directions = torch.zeros(chunk, pert_repr.shape[1], device=pert_repr.device, dtype=pert_repr.dtype)
        graphs[key] = LinearizedFunction(columns, (pert_repr, draw_sets), directions, compile)
    return graphs[key]


def forward_mode_jacobian(model: PerturbationModel, pert_repr: torch.Tensor, draw_sets: torch.Tensor,
                          tangents_per_call: int = 0, *, compile: bool = False, blocks: bool = False):
    """J [B, G, H] for B KDs at once: one JVP per basis direction of pert_repr [B, H], `tangents_per_call` at a time,
    on the draw sets [R, S, N]. blocks: return (J, J_blocks [B, L, D, H]), J_blocks[b, ℓ] = ∂E[h_ℓ]/∂pert_repr of
    block ℓ's set-mean hidden state (the model's `expected_states`) — the same JVPs carry those tangents, so they
    cost no extra pass.

    The vmapped JVP is traced once per input shape (`linearized_jacobian`); its primal part runs once per call and
    its tangent part once per chunk of directions (the basis is zero-padded to whole chunks).
    tangents_per_call: directions per chunk (0: `tangent_chunk`'s choice for this device and size).
    compile: compile the tangent part with Inductor (worth it when many KD batches share the shape; falls back to
    the eager graph where compilation is unavailable).
    """
    n_kds, hidden = pert_repr.shape
    n_cells = n_kds * draw_sets.shape[0] * draw_sets.shape[1]
    chunk = min(hidden, tangents_per_call or tangent_chunk(n_cells, hidden, pert_repr.device, compile))
    linearized = linearized_jacobian(model, pert_repr, draw_sets, chunk, compile, blocks)
    kept = linearized.keep(pert_repr, draw_sets)
    n_chunks = -(-hidden // chunk)
    basis = torch.eye(n_chunks * chunk, hidden, device=pert_repr.device, dtype=pert_repr.dtype)
    chunks = [linearized(kept, directions) for directions in basis.split(chunk)]
    if not blocks:
        return torch.cat(chunks)[:hidden].permute(1, 2, 0)  # [H, B, G] -> [B, G, H]
    output, states = (torch.cat(parts)[:hidden] for parts in zip(*chunks))  # [H, B, G], [H, L, B, D]
    return output.permute(1, 2, 0), states.permute(2, 1, 3, 0)


def reverse_mode_jacobian(model: PerturbationModel, pert_repr: torch.Tensor, draw_sets: torch.Tensor) -> torch.Tensor:
    """The seed's method, one KD at a time (pert_repr [H]): torch.autograd.functional.jacobian (one backward per
    output). [G, H]."""
    with torch.enable_grad():
        return torch.autograd.functional.jacobian(lambda p: model.expected_output(p[None], draw_sets)[0], pert_repr)


def central_difference_jacobian(model: PerturbationModel, pert_repr: torch.Tensor, draw_sets: torch.Tensor,
                                step: float = 1e-3) -> torch.Tensor:
    """Second oracle: (E[Y](p + h e_j) − E[Y](p − h e_j)) / 2h for every direction j of pert_repr [H]. [G, H]. Use
    float64."""
    hidden = pert_repr.shape[0]
    basis = torch.eye(hidden, device=pert_repr.device, dtype=pert_repr.dtype) * step
    with torch.no_grad():
        plus = model.expected_output(pert_repr[None] + basis, draw_sets)
        minus = model.expected_output(pert_repr[None] - basis, draw_sets)
    return ((plus - minus) / (2 * step)).T


@dataclass(frozen=True)
class ShardTask:
    """One shard of the Jacobian stage: shard number `index` holds the KDs `kds` (indices into run.kd_names)."""

    index: int
    kds: range


def shard_tasks(n_kds: int, shard_kds: int) -> list[ShardTask]:
    return [ShardTask(i, range(start, min(start + shard_kds, n_kds)))
            for i, start in enumerate(range(0, n_kds, shard_kds))]


@dataclass(frozen=True)
class JacobianInputs:
    """What every shard's Jacobians are taken at: pert_repr [K, H] (the point of each J_k), control_repr [H]
    (for the linear prediction), draw_cells [R, S] (control rows of each draw set), the batching, and whether the
    tangent graph is Inductor-compiled."""

    pert_repr: np.ndarray
    control_repr: np.ndarray
    draw_cells: np.ndarray
    kds_per_call: int
    tangents_per_call: int = 0
    compile: bool = False
    path_points: int = 0  # Q: midpoints of the path p_ctrl → p_k the path-averaged Jacobian is taken at (0: none)
    delta_y: np.ndarray | None = None  # [K, G] ΔY, which decides the KDs whose response needs the path (`path_kds`)


# The share of ΔY_k the first order J_k·Δp_k must explain for the local J_k to stand in for the path average: a
# response that linear along the path has ∫ J dt·Δp_k ≈ J_k·Δp_k, and the path's Q Jacobians would cost Q× for nothing.
LINEAR_ENOUGH = 0.9


def path_kds(delta_y: np.ndarray, first_order: np.ndarray) -> np.ndarray:
    """Positions [n] (into the rows of `delta_y` [b, G]) of the KDs whose first order `first_order` [b, G] explains
    less than LINEAR_ENOUGH of ΔY_k: the ones that get path-averaged Jacobians."""
    explained = 1 - ((delta_y - first_order) ** 2).sum(axis=1) / np.maximum((delta_y**2).sum(axis=1), 1e-300)
    return np.flatnonzero(explained < LINEAR_ENOUGH)


def path_fractions(path_points: int) -> np.ndarray:
    """t_q = (q − ½)/Q, q = 1 … Q [Q]: the midpoint rule on [0, 1]."""
    return (np.arange(path_points) + 0.5) / max(path_points, 1)


def draw_halves(n_draws: int) -> tuple[range, ...]:
    """The two halves of R control draws the noise floor compares: the first ⌊R/2⌋ draws and the rest (as
    `stats.draws.reproducibility` splits ΔY); one range (all draws) for R = 1."""
    half = n_draws // 2
    return (range(0, half), range(half, n_draws)) if half else (range(n_draws),)


def jacobian_shard(run: PerturbationModel, task: ShardTask, inputs: JacobianInputs) -> dict[str, np.ndarray]:
    """The arrays of one shard: `jacobian` [b, G, H] float32 over all R draws, `block_jacobian` [b, L, D, H]
    float32 (each block's set-mean hidden state, the model's `expected_states`), `kd_index` [b] and
    `linear_prediction` [b, G] = J_k·(p_k − p_ctrl), for the b KDs of `task`; with R ≥ 2 also `half_draws` [2]
    (the draws in each half, `draw_halves`) and `jacobian_split` [b, G, H] float32 = J^(1) − J^(2), the difference
    of the two halves' Jacobians; with `path_points` Q ≥ 1 also `path_index` [n] (positions of the KDs whose first
    order explains less than LINEAR_ENOUGH of ΔY_k, `path_kds`), their `path_jacobian` [n, G, H] float32
    (`path_jacobian`: Q more Jacobians per such KD) and `path_prediction` [b, G] = Ĵ_k·(p_k − p_ctrl) (the local
    J_k·Δp_k for the others, which stands in for the path). Pure: writes nothing. Peak memory is one shard (two
    with halves or a path).

    E[Y] is a mean over draws, so J = (n₁·J^(1) + n₂·J^(2)) / R exactly: each half's JVP runs over its own draw sets,
    the same forward work as one JVP over all of them. Stored as J and the difference (J^(1) = J + (n₂/R)·D,
    J^(2) = J − (n₁/R)·D, `store.shards`) rather than two halves: one extra array per shard, not two, and J stays
    as every other reader reads it.
    (The run comes first and the task second, as an executor calls it: `partial(jacobian_shard, inputs=...)`.)"""
    draw_sets = torch.as_tensor(run.controls[inputs.draw_cells], device=run.device, dtype=run.dtype)
    halves = draw_halves(len(draw_sets))
    per_half: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in halves]
    for start in range(task.kds.start, task.kds.stop, inputs.kds_per_call):
        kd_slice = slice(start, min(start + inputs.kds_per_call, task.kds.stop))
        p = torch.as_tensor(inputs.pert_repr[kd_slice], device=run.device, dtype=run.dtype)
        for half, draws in zip(per_half, halves):
            found = forward_mode_jacobian(run, p, draw_sets[draws.start:draws.stop], inputs.tangents_per_call,
                                          compile=inputs.compile, blocks=True)
            half.append(tuple(array.double().cpu().numpy() for array in found))
    sizes = np.array([len(draws) for draws in halves])
    # per half: (J [b, G, H], J_blocks [b, L, D, H]) over its KD batches; then regrouped by array
    half_jacobians, half_blocks = zip(*([np.concatenate(part) for part in zip(*half)] for half in per_half))

    def over_draws(per_half_arrays):  # the mean over all R draws, from the halves' means
        return (sum(n * a for n, a in zip(sizes, per_half_arrays)) / sizes.sum()).astype(np.float32)

    jacobian = over_draws(half_jacobians)
    step = inputs.pert_repr[task.kds.start:task.kds.stop] - inputs.control_repr
    arrays = {"jacobian": jacobian, "block_jacobian": over_draws(half_blocks), "kd_index": np.asarray(task.kds),
              "linear_prediction": np.einsum("kgh,kh->kg", jacobian, step)}
    if len(halves) == 2:
        arrays |= {"half_draws": sizes, "jacobian_split": (half_jacobians[0] - half_jacobians[1]).astype(np.float32)}
    if inputs.path_points:
        bent = path_kds(inputs.delta_y[task.kds.start:task.kds.stop], arrays["linear_prediction"])
        path = path_jacobian(run, inputs, [task.kds.start + int(i) for i in bent], draw_sets[:1])
        prediction = arrays["linear_prediction"].copy()
        prediction[bent] = np.einsum("kgh,kh->kg", path, step[bent])
        arrays |= {"path_index": bent, "path_jacobian": path.astype(np.float32), "path_prediction": prediction}
    return arrays


def path_jacobian(run: PerturbationModel, inputs: JacobianInputs, kds: list[int], draw_sets: torch.Tensor) -> np.ndarray:
    """Ĵ_k = (1/Q) Σ_q J(p_ctrl + t_q Δp_k) [n, G, H] float64 on the draw sets `draw_sets` (the shard passes the
    first control draw only: the split is a ratio of one KD's parts, and R draws would cost R× for draw noise the
    completeness check already measures) for the KDs `kds` (indices into the run's KDs; `path_fractions`): the
    path-averaged
    Jacobian, whose Ĵ_k·Δp_k reproduces ΔY_k up to the quadrature's error (the completeness of integrated gradients:
    ΔY_k = ∫₀¹ J(p_ctrl + tΔp_k) dt · Δp_k exactly), so the response it splits is ΔY_k itself, not its first order —
    where a gate opens along the path the local J_k at p_k extrapolates badly. The error is measured, not assumed:
    the routing stage compares Ĵ_k·Δp_k with ΔY_k."""
    total = np.zeros((len(kds),) + tuple(inputs.delta_y.shape[1:]) + (inputs.pert_repr.shape[1],))
    for t in path_fractions(inputs.path_points):
        parts = []
        for start in range(0, len(kds), inputs.kds_per_call):
            batch = kds[start:start + inputs.kds_per_call]
            point = inputs.control_repr + t * (inputs.pert_repr[batch] - inputs.control_repr)
            p = torch.as_tensor(point, device=run.device, dtype=run.dtype)
            parts.append(forward_mode_jacobian(run, p, draw_sets, inputs.tangents_per_call,
                                               compile=inputs.compile).double().cpu().numpy())
        if parts:
            total += np.concatenate(parts)
    return total / inputs.path_points


def autograd_check(run: PerturbationModel, shards, pert_repr: np.ndarray, draw_cells: np.ndarray,
                   kd: int = 0) -> dict:
    """Recompute one stored J_k with the seed's reverse-mode method on this model and data: max |ΔJ| / max |J|.
    shards: the stored Jacobians, iterable as (kd_index [b], jacobian [b, G, H]) (`store.shards.JacobianShards`)."""
    draw_sets = torch.as_tensor(run.controls[draw_cells], device=run.device, dtype=run.dtype)
    p = torch.as_tensor(pert_repr[kd], device=run.device, dtype=run.dtype)
    reverse = reverse_mode_jacobian(run, p, draw_sets).double().cpu().numpy()
    stored = next(jac[list(index).index(kd)] for index, jac in shards if kd in index)
    error = float(np.abs(stored - reverse).max() / max(np.abs(reverse).max(), 1e-300))
    return {"kd": run.kd_names[kd], "relative_error": error}


