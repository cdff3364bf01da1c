"""The model's responses to substituted perturbation representations: ΔY(p) = E[Y | pert_repr = p] − E[Y | control]
on the analysis's own control draws, through the real forward (no gradients; the model's `expected_output` substitutes
p for the perturbation encoder's output of every cell of a set).

Which p to ask about, and how to score the answers, is the statistics' (`stats.interventions`); this module only
runs the model. The control response is E[Y] at the control's own pert_repr on the same draw sets, so ΔY(p_k) at a
KD's own representation reproduces the effects stage's ΔY_k (to float rounding: the sets are batched differently).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..console import StageProgress
from .protocol import PerturbationModel


@dataclass(frozen=True)
class SubstitutionTask:
    """One batch of substituted representations: rows `rows` of the request, pert_repr [b, H]."""

    index: int
    rows: range
    pert_repr: np.ndarray


@torch.no_grad()
def substituted_means(run: PerturbationModel, task: SubstitutionTask, draw_cells: np.ndarray) -> np.ndarray:
    """E[Y] [b, G] (float64) for the task's b representations, averaged over the S cells and the R draw sets
    `draw_cells` [R, S]. Pure; the worker function of an executor (run first, task second)."""
    draw_sets = torch.as_tensor(run.controls[draw_cells], device=run.device, dtype=run.dtype)
    p = torch.as_tensor(task.pert_repr, device=run.device, dtype=run.dtype)
    return run.expected_output(p, draw_sets).double().cpu().numpy()


# Cells one no-grad forward call carries, at most: the per-call overhead dominates small batches (measured on the
# known-answer model, 8-cell sets on 2 CPU cores: 17.7, 12.7, 4.1 and 2.3 ms per set at 8, 32, 128 and 256 sets per
# call); a GPU takes far more before its memory fills.
CELLS_PER_CALL = {"cpu": 4_096, "cuda": 262_144}


def sets_per_call(draw_cells: np.ndarray, device: torch.device) -> int:
    """Representations per forward call: as many as CELLS_PER_CALL allows over their R × S draw cells."""
    return max(1, CELLS_PER_CALL.get(device.type, CELLS_PER_CALL["cpu"]) // draw_cells.size)


def substituted_responses(run: PerturbationModel, pert_repr: np.ndarray, control_repr: np.ndarray,
                          draw_cells: np.ndarray, executor, state, label: str, progress: bool = True) -> np.ndarray:
    """ΔY(p) [B, G] for each row of pert_repr [B, H], on executor (its `map(fn, tasks, state)`) in batches of
    `sets_per_call`, one progress bar over representations named `label`."""
    batch = sets_per_call(draw_cells, run.device)
    tasks = [SubstitutionTask(i, range(start, min(start + batch, len(pert_repr))), pert_repr[start:start + batch])
             for i, start in enumerate(range(0, len(pert_repr), batch))]
    control = substituted_means(run, SubstitutionTask(-1, range(1), control_repr[None]), draw_cells)[0]
    out = np.zeros((len(pert_repr), control.shape[0]))
    bar = StageProgress(len(pert_repr), label, "representation", progress)
    for task, means in executor.map(partial(substituted_means, draw_cells=draw_cells), tasks, state):
        out[task.rows.start:task.rows.stop] = means - control
        bar.update(len(task.rows))
    bar.close()
    return out
