"""Stage 2 — predicted effects ΔY_k = E[Y | KD k] − E[Y | control] on the same control cells.

E is the mean over a set of S control cells (cells attend to each other inside a set);
ΔY is averaged over R seeded draws of the set, and the draw-to-draw agreement is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .load import LoadedRun
from .model_call import encode_perturbations, mean_output


@dataclass(frozen=True)
class Effects:
    """ΔY and the perturbation representations, for the K KDs in `kd_names` order.

    delta_y [K, G] (output units, e.g. log-normalised expression); delta_y_draws [R, K, G];
    pert_repr [K, H] and control_repr [H] (pert_encoder outputs); draw_cells [R, S] control-cell rows.
    """

    kd_names: tuple
    gene_names: tuple
    delta_y: np.ndarray
    delta_y_draws: np.ndarray
    pert_repr: np.ndarray
    control_repr: np.ndarray
    draw_cells: np.ndarray

    def reproducibility(self) -> pd.DataFrame:
        """Per KD: mean cosine between ΔY of different draws, and the split-half Pearson r (first vs second half of draws)."""
        draws = self.delta_y_draws
        n_draws = draws.shape[0]
        unit = draws / np.maximum(np.linalg.norm(draws, axis=2, keepdims=True), 1e-12)
        cos = np.einsum("rkg,skg->krs", unit, unit)
        off = ~np.eye(n_draws, dtype=bool)
        draw_cosine = cos[:, off].mean(axis=1) if n_draws > 1 else np.full(len(self.kd_names), np.nan)
        half = n_draws // 2
        if half:
            a, b = draws[:half].mean(0), draws[half:].mean(0)
            a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
            split = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        else:
            split = np.full(len(self.kd_names), np.nan)
        return pd.DataFrame({"kd": self.kd_names, "draw_cosine": draw_cosine, "split_half_r": split,
                             "effect_norm": np.linalg.norm(self.delta_y, axis=1)})


def draw_control_sets(n_controls: int, set_size: int, n_draws: int, seed: int) -> np.ndarray:
    """[R, S] row indices of control cells, without replacement within a set; seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_controls, size=set_size, replace=False) for _ in range(n_draws)])


@torch.no_grad()
def compute_effects(run: LoadedRun, n_draws: int, seed: int, kds_per_call: int, progress: bool = True) -> Effects:
    """ΔY for every KD of `run.kd_names`, batched `kds_per_call` sets per forward call on the run's device."""
    draw_cells = draw_control_sets(len(run.controls), run.set_size, n_draws, seed)
    kd_names = list(run.kd_names)
    kd_onehots = run.onehots(kd_names)
    control_onehot = run.onehots([run.control_label])
    draws = np.zeros((n_draws, len(kd_names), len(run.gene_names)), dtype=np.float64)
    chunks = [slice(i, i + kds_per_call) for i in range(0, len(kd_names), kds_per_call)]
    bar = tqdm(total=n_draws * len(chunks), desc="ΔY (KD sets × draws)", disable=not progress, unit="call")
    for r, rows in enumerate(draw_cells):
        basal = torch.as_tensor(run.controls[rows], device=run.device, dtype=run.dtype)[None]
        control_mean = mean_output(run.model, control_onehot, basal)[0]
        for chunk in chunks:
            onehots = kd_onehots[chunk]
            kd_means = mean_output(run.model, onehots, basal.expand(len(onehots), -1, -1))
            draws[r, chunk] = (kd_means - control_mean).double().cpu().numpy()
            bar.update()
    bar.close()
    pert_repr = encode_perturbations(run.model, kd_onehots).double().cpu().numpy()
    control_repr = encode_perturbations(run.model, control_onehot)[0].double().cpu().numpy()
    return Effects(tuple(kd_names), run.gene_names, draws.mean(axis=0), draws, pert_repr, control_repr, draw_cells)
