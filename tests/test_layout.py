"""The house's import rules, read from the code: every analysis import of every module (at any depth of the file,
as the cache keys read them: `pipeline.stages.imports`), every torch import, and STATE's internals, which only its
adapter (`model/state/`) names."""

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
STATE_ADAPTER = "model.state"  # the one package that may name STATE's internals and import arc-state
# Attributes of arc-state's StateTransitionPerturbationModel (and the class itself) that only the adapter reads.
STATE_NAMES = {"pert_encoder", "transformer_backbone", "project_out", "basal_encoder", "gene_decoder",
               "cell_sentence_len", "hidden_dim", "StateTransitionPerturbationModel", "batch_encoder", "batch_token",
               "use_batch_token", "confidence_token", "embed_key", "pert_dim", "_token_features", "_batch_token_cache",
               "load_from_checkpoint"}


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


def state_internals(module: str) -> list[str]:
    """Where `module` names a STATE internal (an attribute `x.pert_encoder`, a name, or an imported name) or imports
    arc-state (`state`, `state.tx…`), as "line N: what"; empty for the adapter's own modules."""
    if module == STATE_ADAPTER or module.startswith(STATE_ADAPTER + "."):
        return []
    found = []
    for node in ast.walk(ast.parse(stages.read_source(stages.module_path(module)))):
        if isinstance(node, ast.Attribute) and node.attr in STATE_NAMES:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Name) and node.id in STATE_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] == "state"]
        elif isinstance(node, ast.ImportFrom):
            if not node.level and (node.module or "").split(".")[0] == "state":
                found.append((node.lineno, f"from {node.module} import"))
            found += [(node.lineno, f"imports {a.name}") for a in node.names if a.name in STATE_NAMES]
    return [f"line {line}: {what}" for line, what in sorted(found)]


def violations(module: str) -> list[str]:
    here = room(module)
    wrong = [f"{module} imports {target}" for target in sorted(stages.imports(module))
             if room(target) not in ALLOWED[here]]
    wrong += [f"{module} line {line}: torch outside the model side" for line in torch_lines(module)
              if here not in TORCH_ROOMS]
    return wrong + [f"{module} {where}: STATE internal outside its adapter ({STATE_ADAPTER})"
                    for where in state_internals(module)]


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


def test_a_state_internal_outside_the_adapter_is_caught(monkeypatch):
    """The check itself can fail: a generic model module reaching into STATE's pert_encoder and importing
    arc-state, and the adapter doing the same (allowed)."""
    target, adapter = stages.module_path("model.jacobians"), stages.module_path("model.state.forward")
    planted = b"from state.tx.models import state_transition\nencoder = run.model.pert_encoder\n"
    read = stages.read_source
    monkeypatch.setattr(stages, "read_source", lambda p: planted if p in (target, adapter) else read(p))
    assert violations("model.jacobians") == [
        "model.jacobians line 1: from state.tx.models import: STATE internal outside its adapter (model.state)",
        "model.jacobians line 2: .pert_encoder: STATE internal outside its adapter (model.state)"]
    assert violations("model.state.forward") == []


def test_every_room_is_checked():
    assert {room(m) for m in modules()} == set(ALLOWED)
