"""Jacobian shards on disk: the writer (`ShardStore`, one record per shard so a resumed stage recomputes exactly the
missing or damaged ones) and the reader (`JacobianShards`, the one path from shard files to arrays).

A shard `shard_00000.npz` holds `jacobian` [b, G, H] float32, `block_jacobian` [b, L, D, H] float32 (each backbone
block's set-mean hidden state), `kd_index` [b] and `linear_prediction` [b, G] = J_k·(p_k − p_ctrl) for b consecutive
KDs (with R ≥ 2 control draws also `half_draws` [2] and `jacobian_split`
[b, G, H], the difference of the two halves' Jacobians, `model.jacobians.jacobian_shard`); its record
`shard_00000.json` (size, sha256, KD range, seconds) is written atomically after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .cache import StageDir, npz_shapes, verify, write_json, write_npz


@dataclass(frozen=True)
class JacobianShards:
    """The shard files of one Jacobian run, in KD order.

    Each holds `jacobian` [b, G, H] float32, `block_jacobian` [b, L, D, H], `kd_index` [b] and `linear_prediction`
    [b, G] = J_k·(p_k − p_ctrl). A reader reads J; `halves()` and `block(ℓ)` give readers of the same interface for
    each half's J and for block ℓ's Jacobians.
    """

    folder: Path
    paths: tuple
    n_kds: int
    shape: tuple  # (G, H); (D, H) for a block's reader
    half: int | None = None  # None: J over all draws; 0 / 1: the Jacobians of that half of the draws (`halves`)
    n_blocks: int = 0  # L, the backbone blocks with stored Jacobians
    block_index: int | None = None  # None: J of the output; ℓ: block ℓ's Jacobians (`block`)

    def linear_prediction(self, along_path: bool = False) -> np.ndarray:
        """[K, G] J_k·(p_k − p_ctrl) gathered from the shards; along_path: the path-averaged Ĵ_k·(p_k − p_ctrl)."""
        out = np.zeros((self.n_kds, self.shape[0]))
        for path in self.paths:
            with np.load(path) as shard:
                out[shard["kd_index"]] = shard["path_prediction" if along_path else "linear_prediction"]
        return out

    @property
    def has_path(self) -> bool:
        """Whether the shards hold the path's responses (`model.jacobians.jacobian_shard` with path_points ≥ 1)."""
        return "path_prediction" in npz_shapes(self.paths[0])

    def path_loadings(self, direction: np.ndarray) -> np.ndarray:
        """[K] Ĵ_k·`direction` (Frobenius, `direction` [G, H]): the path-averaged Jacobian where the shard holds one
        (`path_index`), the local J_k that stands in for it elsewhere; one shard at a time."""
        out = np.zeros(self.n_kds)
        for path in self.paths:
            with np.load(path) as shard:
                loadings = np.einsum("kgh,gh->k", shard["jacobian"].astype(np.float64), direction)
                loadings[shard["path_index"]] = np.einsum("kgh,gh->k", shard["path_jacobian"].astype(np.float64),
                                                          direction)
                out[shard["kd_index"]] = loadings
        return out

    @property
    def sizes(self) -> list[int]:
        """KDs per shard, from the array headers (nothing read)."""
        return [npz_shapes(path)["kd_index"][0] for path in self.paths]

    @property
    def half_draws(self) -> tuple[int, int] | None:
        """Draws in each half of the control draws (None: one draw, no halves stored)."""
        with np.load(self.paths[0]) as shard:
            return tuple(int(n) for n in shard["half_draws"]) if "half_draws" in shard.files else None

    def halves(self) -> tuple["JacobianShards", "JacobianShards"] | None:
        """Readers of the two halves' Jacobians J^(1), J^(2) (same interface), or None without halves."""
        return None if self.half_draws is None else (replace(self, half=0), replace(self, half=1))

    def block(self, index: int) -> "JacobianShards":
        """A reader of block `index`'s Jacobians [b, D, H] (0-based, depth order; same interface, all draws)."""
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"{self.folder}: no Jacobians of backbone block {index} (blocks stored: {self.n_blocks})")
        with np.load(self.paths[0]) as shard:
            shape = shard["block_jacobian"].shape[2:]
        return replace(self, shape=tuple(shape), half=None, block_index=index)

    def _jacobian(self, shard) -> np.ndarray:
        """J [b, G, H] of an open shard: over all draws, or with `half` set J^(1) = J + (n₂/R)·D, J^(2) = J − (n₁/R)·D
        from the stored difference D = J^(1) − J^(2) (float64 then: the difference of two float32 arrays); with
        `block_index` set, that block's Jacobians [b, D, H]."""
        if self.block_index is not None:
            return shard["block_jacobian"][:, self.block_index]
        if self.half is None:
            return shard["jacobian"]
        n = shard["half_draws"]
        weight = n[1] / n.sum() if self.half == 0 else -n[0] / n.sum()
        return shard["jacobian"].astype(np.float64) + weight * shard["jacobian_split"]

    def rows(self, shard_numbers: range) -> tuple[np.ndarray, np.ndarray]:
        """KD indices [b] and flattened Jacobians [b, G·H] (float64) of a run of consecutive shards."""
        indices, rows = [], []
        for path in self.paths[shard_numbers.start:shard_numbers.stop]:
            with np.load(path) as shard:
                indices.append(shard["kd_index"])
                rows.append(self._jacobian(shard).reshape(len(shard["kd_index"]), -1))
        return np.concatenate(indices), np.concatenate(rows).astype(np.float64)

    def __iter__(self):
        """(kd_index [b], jacobian [b, G, H]) shard by shard (float32; float64 for a half)."""
        for path in self.paths:
            with np.load(path) as shard:
                yield shard["kd_index"], self._jacobian(shard)


def open_shards(folder: Path) -> JacobianShards:
    """The `shard_*.npz` files of a folder (as the pipeline writes them), from their array headers only."""
    paths = tuple(sorted(Path(folder).glob("shard_*.npz")))
    if not paths:
        raise FileNotFoundError(f"{folder}: no Jacobian shards")
    n_kds = 0
    for path in paths:
        shapes = npz_shapes(path)
        n_kds += shapes["kd_index"][0]
        shape = shapes["jacobian"][1:]
    return JacobianShards(Path(folder), paths, n_kds, tuple(shape), n_blocks=shapes.get("block_jacobian", (0, 0))[1])



class ShardStore:
    """The shards of one stage, `shard_00000.npz` …, each followed by its own record `shard_00000.json`
    (size, sha256, KD range, seconds) written atomically after it: a resumed stage recomputes exactly the
    shards that are missing or damaged. Valid shards are entered into the stage's `files`."""

    def __init__(self, stage: StageDir):
        self.stage = stage
        self.seconds: dict[int, float] = {}  # shard index -> seconds it took to compute

    @staticmethod
    def name(index: int) -> str:
        return f"shard_{index:05d}.npz"

    def _record_path(self, index: int) -> Path:
        return self.stage / f"shard_{index:05d}.json"

    def valid(self, index: int, kds: range) -> bool:
        """Whether shard `index` holds KDs `kds` and matches its record (a notice when it exists but does not)."""
        name, record_path = self.name(index), self._record_path(index)
        if not record_path.is_file() and not (self.stage / name).is_file():
            return False
        try:
            entry = json.loads(record_path.read_bytes())
            problem = None if entry["kds"] == [kds.start, kds.stop] else "records another KD range"
        except (OSError, ValueError, KeyError, TypeError):
            problem = "no readable shard record"
        problem = problem or verify(self.stage / name, entry)
        if problem:
            self.stage.notice(name, problem)
            return False
        self.stage.files[name] = {"size": entry["size"], "sha256": entry["sha256"]}
        self.seconds[index] = float(entry.get("seconds", 0.0))
        return True

    def put(self, index: int, kds: range, arrays: dict, seconds: float) -> None:
        """Write shard `index` atomically, then its record."""
        entry = write_npz(self.stage / self.name(index), **arrays)
        write_json(self._record_path(index), {**entry, "kds": [kds.start, kds.stop], "seconds": seconds})
        self.stage.files[self.name(index)] = entry
        self.seconds[index] = seconds

    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

