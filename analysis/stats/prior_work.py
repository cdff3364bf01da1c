"""The numbers behind the original plan's "Connection to prior work" rows (NB01, NB02, NB08): how named KDs and
KD families sit in the output, routing and embedding similarity matrices. The rows' words are the presentation's."""

from __future__ import annotations

import re

import numpy as np

from ..config import KD_FAMILIES


def kd_family(kd_names, pattern: str) -> np.ndarray:
    """[K] bool: which KDs' names match a family's pattern (`config.KD_FAMILIES`)."""
    return np.array([bool(re.match(pattern, k)) for k in kd_names])


def pair_percentile(similarity: np.ndarray, value: float) -> float:
    """Percentile of `value` among all off-diagonal pairs of `similarity` (0–100)."""
    i, j = np.triu_indices(similarity.shape[0], k=1)
    return float(100 * np.mean(similarity[i, j] <= value))


def _group_mean(similarity: np.ndarray, members: np.ndarray) -> float:
    block = similarity[np.ix_(members, members)]
    n = block.shape[0]
    return float(block[~np.eye(n, dtype=bool)].mean()) if n > 1 else float("nan")


def prior_work(kd_names, c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray, labels: np.ndarray,
               pair: tuple[str, str] = ("TRAPPC3", "TRAPPC5"), hub: str = "MYC",
               families: tuple[str, ...] = ("mitoribosomal", "ER/secretory")) -> dict:
    """JSON-able numbers: `pair` (NB02: the named pair's similarities and percentiles, and the first KD's nearest
    neighbour in pert_repr), `families` (NB01: share of each family in its modal output cluster, mean within-family
    C_jac and its percentile), `hub` (NB08: the hub KD's mean C_jac and C_out with the ribosomal KDs). An entry is
    None when its KDs are not in the run."""
    kd_names = list(kd_names)
    index = {k: i for i, k in enumerate(kd_names)}
    out: dict = {"pair": None, "families": {}, "hub": None, "pair_names": list(pair), "hub_name": hub}
    a, b = pair
    if a in index and b in index:
        i, j = index[a], index[b]
        out["pair"] = {"rep_nearest": kd_names[int(np.argsort(-c_rep[i], kind="stable")[1])],
                       **{f"{name}": float(m[i, j]) for name, m in (("c_rep", c_rep), ("c_out", c_out), ("c_jac", c_jac))},
                       **{f"{name}_percentile": pair_percentile(m, m[i, j])
                          for name, m in (("c_rep", c_rep), ("c_out", c_out), ("c_jac", c_jac))}}
    for name in families:
        members = kd_family(kd_names, KD_FAMILIES[name])
        if members.sum() < 2:
            out["families"][name] = {"n_kds": int(members.sum())}
            continue
        mean_jac = _group_mean(c_jac, members)
        out["families"][name] = {"n_kds": int(members.sum()),
                                 "modal_cluster_share": float(np.bincount(labels[members]).max() / members.sum()),
                                 "mean_c_jac": mean_jac, "mean_c_jac_percentile": pair_percentile(c_jac, mean_jac)}
    ribosomal = kd_family(kd_names, KD_FAMILIES["ribosomal"])
    if hub in index and ribosomal.any():
        i = index[hub]
        mean_jac = float(c_jac[i, ribosomal].mean())
        out["hub"] = {"mean_c_jac": mean_jac, "mean_c_jac_percentile": pair_percentile(c_jac, mean_jac),
                      "mean_c_out": float(c_out[i, ribosomal].mean())}
    return out
