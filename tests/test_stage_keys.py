"""Cache keys follow the code and the config: every analysis function a stage executes while computing is covered by
its key, a change to any covered file (or to the stage's own module) changes the key, and a stage that reads a config
field its key does not cover is stopped. A stale result cannot outlive a code or config change."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import KDS, tiny_config, write_tiny_run

import analysis
from analysis.config import PACKAGE_DIR
from analysis.pipeline import stages
from analysis.pipeline.context import UndeclaredConfigRead
from analysis.results import LineResults
from analysis.store import cache, codec

COMPUTED = [s.name for s in stages.STAGES if s.stored]  # every stage that computes a stored record

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
    assert set(calls) == set(COMPUTED)
    assert all(len(seen) > 10 for seen in calls.values())


@pytest.mark.parametrize("name", COMPUTED)
def test_every_executed_function_is_in_the_stage_key(traced, name):
    calls, _ = traced
    stage = stages.BY_NAME[name]
    # its own module and code, and those of every stage whose key enters its key
    covered = {str(p) for s in (stage, *stages.upstream(stage))
               for p in (stages.module_path(s.module), *stages.code_files(s))}
    outside = sorted(f"{Path(file).relative_to(PACKAGE_DIR)}:{qualname}" for file, qualname in calls[name]
                     if file not in covered)
    assert not outside, f"{name} executes code its key does not hash: {outside}"


@pytest.mark.parametrize("name", [s.name for s in stages.STAGES])
def test_changing_any_covered_file_or_the_stage_module_changes_the_key(traced, monkeypatch, name):
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
    own = stages.module_path(stage.module)
    monkeypatch.setattr(stages, "read_source", lambda p: read(p) + (b"#" if p == own else b""))
    assert stages.key(name, config, facts, needs) != key, "a change to the stage's module kept the key"
    for other in stages.STAGES:  # another stage's module moves this key only when this key hashes it
        path = stages.module_path(other.module)
        if other is not stage and path not in files:
            monkeypatch.setattr(stages, "read_source", lambda p, path=path: read(p) + (b"#" if p == path else b""))
            assert stages.key(name, config, facts, needs) == key, f"{other.name}'s module moved this key"
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
    for name in stages.LINE_STAGES:
        needs = {n: "k" for n in stages.BY_NAME[name].needs}
        assert stages.key(name, config.replace(executor="ray"), facts, needs) == stages.key(name, config, facts, needs)


def test_closure_follows_imports_transitively():
    """routing's closure reaches stats/mantel.py and stats/pairs.py through stats.evidence (imports of imports),
    results.py through stats.evidence, and config.py through results.py."""
    files = {p.relative_to(PACKAGE_DIR).as_posix() for p in stages.code_files(stages.BY_NAME["routing"])}
    assert {"stats/mantel.py", "stats/pairs.py", "results.py", "config.py", "errors.py", "store/shards.py"} <= files
    assert not any(f.startswith(("present/", "datasets/")) for f in files)


def test_line_results_hold_one_field_per_line_stage():
    """The line's stages, their order and the results container's fields come from the one declaration."""
    assert stages.LINE_STAGES and "inputs" not in stages.LINE_STAGES and "across" not in stages.LINE_STAGES
    fields = [f.name for f in dataclasses.fields(LineResults)]
    assert fields[-len(stages.LINE_STAGES):] == list(stages.LINE_STAGES)
    for name in stages.LINE_STAGES:
        hint = dataclasses.fields(LineResults)[fields.index(name)].type
        assert hint == stages.BY_NAME[name].record.__name__, name


def test_every_stage_reads_only_config_fields_its_key_covers(traced):
    """The view a stage computes with: its own fields and its upstream's; an undeclared read raises."""
    _, config = traced
    routing = stages.config_view(stages.BY_NAME["routing"], config)
    assert routing.n_permutations == config.n_permutations and routing.decision_rule == config.decision_rule
    assert routing.control_label == config.control_label  # an inputs field: the inputs key is in routing's key
    with pytest.raises(UndeclaredConfigRead, match="routing reads config field 'executor'"):
        routing.executor
    with pytest.raises(UndeclaredConfigRead, match="'min_observed_cells'"):  # quality's, downstream of routing
        routing.min_observed_cells


def test_an_undeclared_config_read_planted_in_a_stage_is_caught(tmp_path, monkeypatch):
    """A stage module that reads a field it does not declare stops the run, naming the stage and the field."""
    config = write_tiny_run(tmp_path)
    steering = stages.BY_NAME["steering"]
    module = sys.modules[steering.compute.__module__]

    def planted(ctx, config, **upstream):
        config.n_permutations  # declared by routing, upstream: allowed
        config.min_observed_cells  # declared by quality, which steering does not need
        return module.compute(ctx, config, **upstream)

    monkeypatch.setitem(stages.BY_NAME, "steering", dataclasses.replace(steering, compute=planted))
    with pytest.raises(UndeclaredConfigRead, match="stage steering reads config field 'min_observed_cells'"):
        analysis.run(config, progress=False)


def equal_records(a, b) -> bool:
    """Field by field: arrays and frames by value (NaN equal), Jacobian readers by what they read."""
    if dataclasses.is_dataclass(a) and hasattr(a, "shape") and hasattr(a, "n_kds"):  # a JacobianReader
        return (a.n_kds, a.shape, a.n_blocks) == (b.n_kds, b.shape, b.n_blocks)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(equal_records(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, pd.DataFrame):
        return a.equals(b) and list(a.dtypes) == list(b.dtypes)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(equal_records(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_records(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a == b or a != a and b != b)


@pytest.mark.parametrize("name", COMPUTED)
def test_every_stage_record_round_trips_through_the_store(traced, tmp_path, name):
    """Each stored record (both lines') read, written into a fresh folder and read again: the store writes the same
    bytes and reads the same record (the shards a stage streams while computing are copied, not rewritten)."""
    _, config = traced
    kind = stages.BY_NAME[name].record
    for folder in sorted((config.cache_dir / name).iterdir()):
        stored = cache.StageDir(config.cache_dir, name, folder.name)
        completion = stored.record()
        record = codec.read_record(stored, kind, completion)
        copy = cache.StageDir(tmp_path / folder.name, name, folder.name)
        meta = codec.write_record(copy, record)
        written = dict(copy.files)
        assert written and all((copy / n).read_bytes() == (stored / n).read_bytes() for n in written), name
        assert meta == {"measured": completion["measured"]}
        streamed = set(completion["files"]) - set(written)  # the Jacobian shards
        for file in streamed:
            shutil.copy(stored / file, copy / file)
        again = codec.read_record(copy, kind, copy.complete(**meta))
        assert equal_records(record, again), name
