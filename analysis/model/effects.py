"""Predicted effects ΔY_k = E[Y | KD k] − E[Y | control] on the same control cells.

E is the mean over a set of S control cells (cells attend to each other inside a set);
ΔY is averaged over R seeded draws of the set, and the draw-to-draw agreement is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..console import StageProgress
from ..results import Responses
from .protocol import PerturbationModel


def draw_control_sets(n_controls: int, set_size: int, n_draws: int, seed: int) -> np.ndarray:
    """[R, S] row indices of control cells, without replacement within a set; seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_controls, size=set_size, replace=False) for _ in range(n_draws)])


@dataclass(frozen=True)
class EffectTask:
    """One batch of the effects stage's forward calls: the KDs `kds` (indices into run.kd_names) with their perturbation
    features `features` [b, P] (carried by the task, so a worker needs no perturbation map), over every draw set."""

    index: int
    kds: range
    features: np.ndarray


def effect_tasks(run: PerturbationModel, kds_per_call: int) -> list[EffectTask]:
    features = run.features(run.kd_names).cpu().numpy()
    return [EffectTask(i, range(start, min(start + kds_per_call, len(run.kd_names))),
                       features[start:start + kds_per_call])
            for i, start in enumerate(range(0, len(run.kd_names), kds_per_call))]


@torch.no_grad()
def kd_means(run: PerturbationModel, task: EffectTask, draw_cells: np.ndarray) -> np.ndarray:
    """E[Y | KD] [R, b, G] in the model's dtype (as float32 or float64 numpy) for the b KDs of `task`: one
    forward call of b sets per draw [R, S]. Pure; the same calls whichever executor runs it (the KD batches fix
    the arithmetic, so results are bit-identical)."""
    features = torch.as_tensor(task.features, device=run.device, dtype=run.dtype)
    out = []
    for rows in draw_cells:
        basal = torch.as_tensor(run.controls[rows], device=run.device, dtype=run.dtype)[None]
        out.append(run.set_means(features, basal.expand(len(features), -1, -1)).cpu())
    return torch.stack(out).numpy() if run.dtype != torch.bfloat16 else torch.stack(out).float().numpy()


@torch.no_grad()
def compute_effects(run: PerturbationModel, n_draws: int, seed: int, kds_per_call: int, executor, state,
                    progress: bool = True) -> Responses:
    """ΔY for every KD of `run.kd_names`: KD batches of `kds_per_call` sets per forward call (`kd_means`) run on
    `executor` (`pipeline.executors`: its `map(fn, tasks, state)`) with worker state `state`, with one progress bar
    over KDs; the control means and the differences are taken here."""
    draw_cells = draw_control_sets(len(run.controls), run.set_size, n_draws, seed)
    control_features = run.features([run.control_label])
    control_means = torch.stack([
        run.set_means(control_features,
                      torch.as_tensor(run.controls[rows], device=run.device, dtype=run.dtype)[None])[0]
        for rows in draw_cells]).cpu()  # [R, G]
    draws = np.zeros((n_draws, len(run.kd_names), len(run.gene_names)), dtype=np.float64)
    tasks = effect_tasks(run, kds_per_call)
    bar = StageProgress(len(run.kd_names), "ΔY (KDs × draws)", "KD", progress)
    for task, means in executor.map(partial(kd_means, draw_cells=draw_cells), tasks, state):
        means = torch.as_tensor(means).to(run.dtype)
        draws[:, task.kds.start:task.kds.stop] = (means - control_means[:, None]).double().numpy()
        bar.update(len(task.kds))
    bar.close()
    pert_repr = run.encode(run.kd_names).double().cpu().numpy()
    control_repr = run.encode([run.control_label])[0].double().cpu().numpy()
    return Responses(tuple(run.kd_names), run.gene_names, draws.mean(axis=0), draws, pert_repr, control_repr, draw_cells)
