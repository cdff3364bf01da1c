"""The house's import rules, read from the code: every analysis import of every module (at any depth of the file,
as the cache keys read them: `pipeline.stages.imports`), and every torch import."""

from __future__ import annotations

import ast

import pytest

from analysis.config import PACKAGE_DIR
from analysis.pipeline import stages

BASE = {"config", "results", "errors", "console"}
# room -> the rooms it may import (a room: a base module or a subpackage)
ALLOWED = {
    "model": BASE | {"model"},
    "stats": BASE | {"stats"},
    "store": BASE | {"store"},
    "pipeline": BASE | {"pipeline", "model", "stats", "store"},
    "present": BASE | {"present"},
    "datasets": BASE | {"datasets", "model", "stats", "store"},
    **{name: BASE for name in BASE},
}
TORCH_ROOMS = {"model", "datasets"}  # the model side, and the trainers of the demo and the known answers


def modules() -> list[str]:
    """Every module but the package's own __init__ and __main__ (the entry points may import anything)."""
    names = [".".join(p.relative_to(PACKAGE_DIR).with_suffix("").parts) for p in PACKAGE_DIR.rglob("*.py")]
    return sorted(n.removesuffix(".__init__") for n in names if n not in {"__init__", "__main__"})


def room(module: str) -> str:
    return module.split(".")[0]


def torch_lines(module: str) -> list[int]:
    tree = ast.parse(stages.read_source(stages.module_path(module)))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names)
            or isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "torch"]


def violations(module: str) -> list[str]:
    here = room(module)
    wrong = [f"{module} imports {target}" for target in sorted(stages.imports(module))
             if room(target) not in ALLOWED[here]]
    return wrong + [f"{module} line {line}: torch outside the model side" for line in torch_lines(module)
                    if here not in TORCH_ROOMS]


@pytest.mark.parametrize("module", modules())
def test_imports_follow_the_house_rules(module):
    assert not violations(module), "\n".join(violations(module))


def test_the_rules_catch_a_violation(monkeypatch):
    """The check itself can fail: a statistics module importing the model side, and importing torch."""
    target = stages.module_path("stats.draws")
    read = stages.read_source
    monkeypatch.setattr(stages, "read_source",
                        lambda p: b"from ..model import jacobians\nimport torch\n" if p == target else read(p))
    assert violations("stats.draws") == ["stats.draws imports model.jacobians",
                                         "stats.draws line 2: torch outside the model side"]


def test_every_room_is_checked():
    assert {room(m) for m in modules()} == set(ALLOWED)
