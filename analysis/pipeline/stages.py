"""The stage graph, assembled from the stage modules (`pipeline.stage.*`, one module per stage); each stage's cache
key is derived from that declaration (showyourwork's way), never written by hand.

A stage's key hashes
- its name and the keys of the stages it needs (so a change upstream reaches every stage downstream),
- the config fields it declares, and the facts of the loaded run it declares (`facts`: the KDs, the set size, …),
- its code: the source of its own module and of every analysis module that module imports, transitively (the
  closure over `from .x import` / `from ..x import` lines, read from the files), and of the store that writes and
  reads its record.
`tests/test_stage_keys.py` traces each stage's computation and checks that every analysis function it executes is
covered, then changes each covered file and checks that the key changes: a stale result cannot be reused after a
code change. A stage's compute sees the config through a view of the fields its key covers (`context.ConfigView`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from ..config import PACKAGE_DIR, AnalysisConfig
from ..store import cache
from .context import UNKEYED_FIELDS, ConfigView
from .stage import across, effects, inputs, interventions, jacobians, quality, routing, steering

# The store's writer and reader shape every stage's bytes, so every stage's code includes them.
STORE = ("store.cache", "store.codec")


@dataclass(frozen=True)
class Stage:
    """One node of the graph, read from its module (`of`). name: its cache folder (`<cache_dir>/<name>/<key>/`) and
    its name everywhere (records, `LineResults` fields, report); needs: stages whose keys enter this one and whose
    records `compute` takes, by name; fields: config fields it reads; facts: names of the run facts (`RunFacts`) it
    reads; located: fields naming input files whose bytes its facts hash; code: the analysis modules its module
    imports, and the store; module: its module (dotted, e.g. "pipeline.stage.routing"); compute: the function that
    computes its record; record: the record's class (compute's return annotation); scope: "line" (per cell line) or
    "run" (once, from every line's records); stored: whether its record is cached (not the loaded inputs)."""

    name: str
    needs: tuple[str, ...]
    fields: tuple[str, ...]
    facts: tuple[str, ...]
    located: tuple[str, ...]
    code: tuple[str, ...]
    module: str
    compute: Callable
    record: type
    scope: str
    stored: bool

    @classmethod
    def of(cls, module: ModuleType) -> "Stage":
        dotted = module.__name__.removeprefix(f"{PACKAGE_DIR.name}.")
        return cls(dotted.rsplit(".", 1)[1], module.NEEDS, module.FIELDS, module.FACTS, getattr(module, "LOCATED", ()),
                   tuple(sorted(imports(dotted))) + STORE, dotted, module.compute,
                   typing.get_type_hints(module.compute)["return"], getattr(module, "SCOPE", "line"),
                   getattr(module, "STORED", True))


# ---------------------------------------------------------------- code of a stage
def module_path(module: str) -> Path:
    """The file of an analysis module, "stats.evidence" -> analysis/stats/evidence.py (a package: its __init__.py)."""
    base = PACKAGE_DIR.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def read_source(path: Path) -> bytes:
    """A module's bytes as the key hashes them (the one reader, so tests can check what a change does to a key)."""
    return path.read_bytes()


def imports(module: str) -> set[str]:
    """Analysis modules `module` imports (relative or `analysis.` imports, at any depth of the file)."""
    path = module_path(module)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(read_source(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        named = node.module.split(".") if node.module else []
        if node.level:
            stem = package[:len(package) - node.level + 1] + named
        elif named[:1] == ["analysis"]:
            stem = named[1:]
        else:
            continue
        for alias in node.names:  # `from . import cache` names a module; `from .x import y` names x
            candidate = ".".join(stem + [alias.name])
            target = candidate if _exists(candidate) else ".".join(stem)
            if _exists(target):
                found.add(target)
    return found


def _exists(module: str) -> bool:
    return bool(module) and module_path(module).is_file()


@functools.cache
def closure(modules: tuple[str, ...]) -> tuple[str, ...]:
    """`modules` and every analysis module they import, transitively (packages' __init__ included), sorted."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if _exists(".".join(parts[:i]))]
        todo += sorted(imports(module) - seen)
    return tuple(sorted(seen))


def code_files(stage: Stage) -> tuple[Path, ...]:
    """Every file whose bytes enter the stage's own code digest."""
    return tuple(module_path(m) for m in closure(stage.code))


def upstream(stage: Stage) -> tuple[Stage, ...]:
    """The stages whose keys enter this one's, directly or through others (their code decides it too)."""
    found, todo = [], list(stage.needs)
    while todo:
        name = todo.pop()
        if BY_NAME[name] not in found:
            found.append(BY_NAME[name])
            todo += BY_NAME[name].needs
    return tuple(found)


def code_digest(stage: Stage) -> str:
    """Hash of the stage's code: its own module and its code's closure."""
    h = hashlib.sha256()
    for path in (module_path(stage.module), *code_files(stage)):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode())
        h.update(read_source(path))
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- keys
def key(stage_name: str, config: AnalysisConfig, facts: dict, needs: dict[str, str]) -> str:
    """The cache key of a stage: `facts` holds at least the stage's declared facts, `needs` the keys of the stages
    it needs (by name)."""
    stage = BY_NAME[stage_name]
    missing = [n for n in stage.needs if n not in needs] + [f for f in stage.facts if f not in facts]
    if missing:
        raise ValueError(f"stage {stage_name}: no value for {missing}")
    return cache.content_key(stage.name, code_digest(stage), [needs[n] for n in stage.needs],
                             {f: getattr(config, f) for f in stage.fields}, {f: facts[f] for f in stage.facts})


def stage_folder(config: AnalysisConfig, stage_name: str, stage_key: str) -> Path:
    return Path(config.cache_dir) / stage_name / stage_key


def config_view(stage: Stage, config: AnalysisConfig) -> ConfigView:
    """The config as `stage` computes with it: its own fields, those of every stage upstream (their keys enter its
    key), the files those stages' facts hash, and `UNKEYED_FIELDS`; any other read raises."""
    keyed = (stage, *upstream(stage))
    return ConfigView(config, frozenset(UNKEYED_FIELDS).union(*(s.fields + s.located for s in keyed)), stage.name)


# ---------------------------------------------------------------- the graph
STAGES: tuple[Stage, ...] = tuple(Stage.of(m) for m in (inputs, effects, interventions, jacobians, routing, steering,
                                                         quality, across))
BY_NAME = {stage.name: stage for stage in STAGES}
LINE_STAGES = tuple(s.name for s in STAGES if s.scope == "line" and s.stored)  # a line's stored stages, in order
