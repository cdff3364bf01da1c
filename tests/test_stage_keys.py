"""Cache keys follow the code: every analysis function a stage executes while computing is covered by its key, and a
change to any covered file (or to the stage's runner) changes the key. A stale result cannot outlive a code change."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny import KDS, tiny_config, write_tiny_run

import analysis
from analysis.config import PACKAGE_DIR
from analysis.pipeline import run as pipeline
from analysis.pipeline import stages
from analysis.store import cache

LINES = ("LineA", "LineB")


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """{stage name: {(file, function qualname)}} of analysis code executed inside each stage's compute, on a fresh
    two-line tiny run (every stage computes), and the run's lines (for their keys)."""
    folder = tmp_path_factory.mktemp("keys")
    write_tiny_run(folder, lines={LINES[0]: (3.0, KDS), LINES[1]: (6.0, KDS)})
    config = tiny_config(folder, cell_lines=list(LINES))
    calls: dict[str, set] = {}
    ensure = cache.StageDir.ensure

    def tracing_ensure(self, compute, contents=True):
        seen = calls.setdefault(self.stage, set())

        def profile(frame, event, _arg):
            if event == "call" and frame.f_code.co_filename.startswith(str(PACKAGE_DIR)):
                seen.add((frame.f_code.co_filename, frame.f_code.co_qualname))

        def traced_compute():
            previous = sys.getprofile()
            sys.setprofile(profile)
            try:
                return compute()
            finally:
                sys.setprofile(previous)

        return ensure(self, traced_compute, contents)

    cache.StageDir.ensure = tracing_ensure
    try:
        analysis.run(config, progress=False)
    finally:
        cache.StageDir.ensure = ensure
    return calls, config


def test_every_stage_computed_and_was_traced(traced):
    calls, _ = traced
    assert set(calls) == {"effects", "interventions", "jacobians", "routing", "steering", "quality", "across"}
    assert all(len(seen) > 10 for seen in calls.values())


@pytest.mark.parametrize("name", ["effects", "interventions", "jacobians", "routing", "steering", "quality",
                                  "across"])
def test_every_executed_function_is_in_the_stage_key(traced, name):
    calls, _ = traced
    stage = stages.BY_NAME[name]
    # its own code, and the code of every stage whose key enters its key
    covered = {str(p) for s in (stage, *stages.upstream(stage)) for p in stages.code_files(s)}
    runners = {s.runner for s in (stage, *stages.upstream(stage))}
    runner_file = str(Path(pipeline.__file__))
    outside = sorted(f"{Path(file).relative_to(PACKAGE_DIR)}:{qualname}" for file, qualname in calls[name]
                     if file not in covered and not (file == runner_file and qualname.split(".")[0] in runners))
    assert not outside, f"{name} executes code its key does not hash: {outside}"


@pytest.mark.parametrize("name", ["inputs", "effects", "interventions", "jacobians", "routing", "steering",
                                  "quality", "across"])
def test_changing_any_covered_file_or_the_runner_changes_the_key(traced, monkeypatch, name):
    _, config = traced
    stage = stages.BY_NAME[name]
    facts = {f: ["fact"] for f in stage.facts}
    needs = {n: "upstream" for n in stage.needs}
    key = stages.key(name, config, facts, needs)
    assert stages.key(name, config, facts, needs) == key  # the key is a function of its inputs
    files = stages.code_files(stage)
    assert stages.module_path(stage.code[0]) in files
    read = stages.read_source
    for path in files:
        monkeypatch.setattr(stages, "read_source", lambda p, path=path: read(p) + (b"#" if p == path else b""))
        assert stages.key(name, config, facts, needs) != key, f"{path} is hashed but a change to it kept the key"
    runner = stages.module_path("pipeline.run")
    edited = lambda p: read(p).replace(f"def {stage.runner}(".encode(), f"def {stage.runner}(  # edited\n".encode())
    monkeypatch.setattr(stages, "read_source", lambda p: edited(p) if p == runner else read(p))
    assert stages.key(name, config, facts, needs) != key, "a change to the stage's runner kept the key"
    other = next(s.runner for s in stages.STAGES if s.runner != stage.runner)
    monkeypatch.setattr(stages, "read_source", lambda p: read(p).replace(f"def {other}(".encode(),
                                                                        f"def {other}(  # edited\n".encode()))
    assert stages.key(name, config, facts, needs) == key or runner in files, "another stage's runner moved this key"
    monkeypatch.setattr(stages, "read_source", read)
    for other in stage.needs:
        assert stages.key(name, config, facts, {**needs, other: "changed"}) != key
    for field in stage.fields[:3]:
        value = getattr(config, field)
        changes = {int: lambda v: v + 1, float: lambda v: v / 2, bool: lambda v: not v, tuple: lambda v: v + ("x",)}
        changed = changes.get(type(value), lambda v: f"{v}x")(value)
        assert stages.key(name, config.replace(**{field: changed}), facts, needs) != key, field


def test_a_field_no_stage_declares_changes_no_key(traced):
    """Fields that only decide how results are shown or where work runs leave every key alone."""
    _, config = traced
    facts = {"input_digests": [], "space": [], "kd_names": [], "set_size": 1, "gene_set_digests": [], "lines": []}
    for name in ("effects", "interventions", "jacobians", "routing", "steering"):
        needs = {n: "k" for n in stages.BY_NAME[name].needs}
        assert stages.key(name, config.replace(executor="ray"), facts, needs) == stages.key(name, config, facts, needs)


def test_closure_follows_imports_transitively():
    """routing's closure reaches stats/mantel.py and stats/pairs.py through stats.evidence (imports of imports),
    results.py through stats.evidence, and config.py through results.py."""
    files = {p.relative_to(PACKAGE_DIR).as_posix() for p in stages.code_files(stages.BY_NAME["routing"])}
    assert {"stats/mantel.py", "stats/pairs.py", "results.py", "config.py", "errors.py", "store/shards.py"} <= files
    assert not any(f.startswith(("present/", "datasets/")) for f in files)
