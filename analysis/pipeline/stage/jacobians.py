"""The Jacobians stage: J_k = ∂E[Y]/∂pert_repr for every KD, in shards streamed into the stage's folder.

The shard tasks run on the context's executor, which gets the loaded run as its worker state (shipped as checkpoint
bytes and control cells to remote workers); each result is stored here, as it arrives, with one progress bar over
KDs, whichever executor computed it. Shards already stored and intact (a killed run's) are kept. Batching and
compilation change the float rounding of J (≈ 1e-7), so they are among the fields that decide the result."""

from __future__ import annotations

import time
from functools import partial

from ...config import AnalysisConfig
from ...console import StageProgress
from ...model import jacobians
from ...model.protocol import PerturbationModel
from ...results import EffectsResult, JacobiansResult
from ...store.shards import ShardStore, open_shards
from ..context import StageContext

NEEDS = ("inputs", "effects")
FIELDS = ("shard_kds", "kds_per_call", "tangents_per_call", "compile_jacobian", "path_points")
FACTS = ()


def compute(ctx: StageContext, config: AnalysisConfig, inputs: PerturbationModel, effects: EffectsResult) -> JacobiansResult:
    responses = effects.responses
    store = ShardStore(ctx.folder)
    tasks = jacobians.shard_tasks(len(inputs.kd_names), config.shard_kds)
    todo = [task for task in tasks if not store.valid(task.index, task.kds)]
    shard_inputs = jacobians.JacobianInputs(responses.pert_repr, responses.control_repr, responses.draw_cells,
                                            config.kds_per_call, config.tangents_per_call, config.compile_jacobian,
                                            config.path_points, responses.delta_y)
    bar = StageProgress(len(inputs.kd_names), "Jacobians ∂E[Y]/∂pert_repr", "KD", ctx.progress,
                        initial=len(inputs.kd_names) - sum(len(t.kds) for t in todo))
    last = time.perf_counter()
    for task, arrays in ctx.executor.map(partial(jacobians.jacobian_shard, inputs=shard_inputs), todo, ctx.state):
        now = time.perf_counter()
        store.put(task.index, task.kds, arrays, seconds=now - last)  # wall time since the previous shard
        last = now
        bar.update(len(task.kds))
    bar.close()
    shards = open_shards(ctx.folder.path)
    check = jacobians.autograd_check(inputs, shards, responses.pert_repr, responses.draw_cells)
    return JacobiansResult(ctx.key, shards, len(inputs.kd_names), len(tasks), store.total_seconds(),
                           str(inputs.device), ctx.executor.describe(), check, config.path_points)
