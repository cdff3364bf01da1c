"""Draw-to-draw reproducibility of ΔY: how much a KD's response depends on which control cells were drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd


def reproducibility(kd_names, delta_y_draws: np.ndarray) -> pd.DataFrame:
    """Per KD: mean cosine between ΔY of different draws, the split-half Pearson r (first vs second half of the
    draws) and ‖ΔY‖ of the draws' mean. delta_y_draws [R, K, G]; NaN where R is too small for a column."""
    draws = delta_y_draws
    n_draws = draws.shape[0]
    unit = draws / np.maximum(np.linalg.norm(draws, axis=2, keepdims=True), 1e-12)
    cos = np.einsum("rkg,skg->krs", unit, unit)
    off = ~np.eye(n_draws, dtype=bool)
    draw_cosine = cos[:, off].mean(axis=1) if n_draws > 1 else np.full(len(kd_names), np.nan)
    half = n_draws // 2
    if half:
        a, b = draws[:half].mean(0), draws[half:].mean(0)
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        split = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    else:
        split = np.full(len(kd_names), np.nan)
    return pd.DataFrame({"kd": list(kd_names), "draw_cosine": draw_cosine, "split_half_r": split,
                         "effect_norm": np.linalg.norm(draws.mean(axis=0), axis=1)})
