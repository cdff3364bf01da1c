"""What a stage's `compute` is handed besides its upstream records: where and how to run (`StageContext`), and the
config as a view of the fields its key covers (`ConfigView`). Every stage's key hashes this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import AnalysisConfig
from ..store.cache import StageDir
from .executors import WorkerState

# Read by any stage without entering a key: the config file's path names the file in error messages only.
UNKEYED_FIELDS = ("source",)


class UndeclaredConfigRead(Exception):
    """A stage read a config field that neither it nor a stage upstream declares: its key would not cover it."""


@dataclass(frozen=True)
class StageContext:
    """Where a stage runs. key: the stage's cache key (its record carries it); folder: its cache folder, for a stage
    that streams files as they are computed (the Jacobian shards); executor: runs independent tasks (`executors`);
    state: the loaded run for the executor's workers; progress: show progress bars."""

    key: str
    folder: StageDir
    executor: Any
    state: WorkerState
    progress: bool


class ConfigView:
    """The config as a stage sees it: the fields `allowed` (the stage's own, those of the stages upstream, whose keys
    enter its key, and `UNKEYED_FIELDS`) and the config's properties, evaluated on the view so that the fields they
    read are checked too (`decision_rule`, `cell_line`). Any other read raises UndeclaredConfigRead."""

    def __init__(self, config: AnalysisConfig, allowed: frozenset[str], stage: str):
        self._config, self._allowed, self._stage = config, allowed, stage

    def __getattr__(self, name: str):
        if name.startswith("__"):  # Python's own protocols (copy, pickle): not config fields
            raise AttributeError(name)
        derived = getattr(type(self._config), name, None)
        if isinstance(derived, property):
            return derived.fget(self)
        if name in self._allowed:
            return getattr(self._config, name)
        raise UndeclaredConfigRead(f"stage {self._stage} reads config field {name!r}, which neither it nor a stage "
                                   "upstream declares (add it to the stage's FIELDS)")
