"""Predicted cells, as `state tx infer` predicts them: the model's output for every cell of a set, not only the set
mean, on the same control draws and set size the effects stage used (`Responses.draw_cells`).

The per-cell outputs come from the same forward call as the set means (the model's `set_cells`), so the cells scored
are exactly the cells whose mean is ΔY's E[Y]. When only group means are scored (`predict_means`), they
are taken from ΔY itself.
"""

from __future__ import annotations

import numpy as np
import torch

from .protocol import PerturbationModel


@torch.no_grad()
def predict_cells(run: PerturbationModel, kd_names, draw_cells: np.ndarray, kds_per_call: int) -> np.ndarray:
    """Predicted cells of each KD of `kd_names`, then (last) of the control, on the draws `draw_cells` [R, S] (rows
    of run.controls): [K + 1, R·S, G] float32, cells in draw order, written as they are produced into one
    preallocated buffer — the array cell-eval reads (`stats.quality.score_predictions` hands it over as its
    AnnData's X without a copy). Pure; one forward call of up to `kds_per_call` sets per draw."""
    names = list(kd_names)
    cells = np.empty((len(names) + 1, draw_cells.size, len(run.gene_names)), dtype=np.float32)
    control_features = run.features([run.control_label])
    for r, rows in enumerate(draw_cells):
        basal = torch.as_tensor(run.controls[rows], device=run.device, dtype=run.dtype)[None]
        at = slice(r * len(rows), (r + 1) * len(rows))
        cells[-1, at] = run.set_cells(control_features, basal)[0].float().cpu().numpy()
        for start in range(0, len(names), kds_per_call):
            features = run.features(names[start:start + kds_per_call])
            out = run.set_cells(features, basal.expand(len(features), -1, -1))
            cells[start:start + len(features), at] = out.float().cpu().numpy()
    return cells


def predict_means(run: PerturbationModel, delta_y: np.ndarray, draw_cells: np.ndarray) -> np.ndarray:
    """The mean predicted cell of each of K KDs, then (last) of the control, [K + 1, 1, G] float32, without a forward
    pass per KD: each KD's ΔY (delta_y [K, G], output units: the effects stage's mean over the draws `draw_cells`
    [R, S] of E[Y | KD] − E[Y | control]) plus the control's mean predicted cell on the same draws. The group means
    of `predict_cells` to float32 rounding (relative 1e-7): all cell-eval reads when its DE metrics are off."""
    control = predict_cells(run, [], draw_cells, 1)[-1].mean(0, dtype=np.float64)  # [G]
    means = np.concatenate([delta_y + control, control[None]])
    # A KD's mean below zero by less than that rounding is a zero (a gene the model holds at 0 in every cell of the
    # KD, e.g. behind a ReLU): cell-eval, which refuses negative expression, must read it as 0.
    rounding = 4 * np.finfo(np.float32).eps * (np.abs(delta_y) + np.abs(control))
    means[:-1][(means[:-1] < 0) & (means[:-1] >= -rounding)] = 0.0
    return means.astype(np.float32)[:, None, :]
