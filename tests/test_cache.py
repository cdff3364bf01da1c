"""The cache cannot lie: each state a crash, a damaged disk or a second run leaves is rebuilt here, and the run
that follows recomputes what is damaged (with a one-line notice), reuses the rest, and ends byte-identical to a
clean run. Also: the executor seam, one-line errors for unusable caches and bad inputs, and a wheel install."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tiny import write_tiny_run

import analysis
from analysis.__main__ import main
from analysis.errors import CacheError
from analysis.pipeline import run as pipeline
from analysis.pipeline import stages
from analysis.pipeline.stage import effects as effects_stage
from analysis.store import cache, codec
from analysis.store.shards import open_shards

ROOT = Path(__file__).resolve().parents[1]
STAGES = stages.LINE_STAGES


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A tiny run analysed once into a clean cache: (config, the file records {stage: {name: {size, sha256}}})."""
    config = write_tiny_run(tmp_path_factory.mktemp("tiny"))
    analysis.run(config, progress=False)
    return config, stage_files(config.cache_dir)


@pytest.fixture
def copy(clean, tmp_path):
    """A copy of the clean cache for one test to damage: its config."""
    config, _ = clean
    shutil.copytree(config.cache_dir, tmp_path / "cache")
    return config.replace(cache_dir=tmp_path / "cache")


def stage_folder(cache_dir: Path, stage: str) -> Path:
    (folder,) = (Path(cache_dir) / stage).iterdir()
    return folder


def stage_files(cache_dir: Path) -> dict:
    """What each stage's completion record lists: {stage: {file: {size, sha256}}}."""
    return {s: json.loads((stage_folder(cache_dir, s) / "_done.json").read_text())["files"] for s in STAGES}


def sha256(path: Path) -> str:
    """The file's sha256, by hashlib (not the cache's own digest function)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests_on_disk(cache_dir: Path) -> dict:
    """sha256 of every file the records list, hashed here from the bytes on disk (not read from the records)."""
    return {s: {name: sha256(stage_folder(cache_dir, s) / name) for name in files}
            for s, files in stage_files(cache_dir).items()}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def rerun(config, capsys) -> str:
    """Run the analysis again; return its stderr (the notices)."""
    capsys.readouterr()
    analysis.run(config, progress=False)
    return capsys.readouterr().err


def assert_recovered(config, clean, err: str, damaged: str) -> None:
    """One notice line naming the damaged file, and every stage file byte-identical to the clean run's."""
    _, clean_files = clean
    notices = [line for line in err.splitlines() if line.startswith("cache: ")]
    assert notices and all(damaged in line and line.endswith("recomputing") for line in notices), err
    assert stage_files(config.cache_dir) == clean_files
    assert digests_on_disk(config.cache_dir) == {s: {n: e["sha256"] for n, e in f.items()} for s, f in clean_files.items()}


def test_records_list_every_file_with_size_and_checksum(clean):
    config, files = clean
    for stage in STAGES:
        folder = stage_folder(config.cache_dir, stage)
        record = json.loads((folder / "_done.json").read_text())
        assert record["stage"] == stage and record["key"] == folder.name
        for name, entry in files[stage].items():
            assert entry == {"size": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
    # what was measured while computing (times, device) is kept in the completion record, outside the listed files
    jac = json.loads((stage_folder(config.cache_dir, "jacobians") / "_done.json").read_text())
    assert {"seconds", "device", "autograd_check"} <= jac["measured"].keys()


def test_half_written_record_recomputes_the_stage(copy, clean, capsys):
    record = stage_folder(copy.cache_dir, "routing") / "_done.json"
    record.write_bytes(record.read_bytes()[:40])  # the marker a kill during its write would leave without atomicity
    assert_recovered(copy, clean, rerun(copy, capsys), "_done.json")


def test_record_without_the_stage_metadata_recomputes(copy, clean, capsys):
    """The old poisoned state (`KeyError: 'seconds'`): a record missing its files list is not trusted."""
    record = stage_folder(copy.cache_dir, "jacobians") / "_done.json"
    record.write_text(json.dumps({"stage": "jacobians", "key": record.parent.name, "n_kds": 6}))
    assert_recovered(copy, clean, rerun(copy, capsys), "_done.json")


def test_orphaned_temp_files_of_a_killed_write_are_removed(copy, clean, capsys):
    folder = stage_folder(copy.cache_dir, "effects")
    (folder / "_done.json").unlink()  # killed while writing the stage: files maybe written, no record
    orphan = folder / ".kd_table.parquet.x1y2z3.tmp"
    orphan.write_bytes(b"half a parquet")
    err = rerun(copy, capsys)
    assert not orphan.exists() and not list(copy.cache_dir.rglob("*.tmp"))
    assert "cache: " not in err  # no record is the normal state of an interrupted stage: nothing to report
    _, clean_files = clean
    assert stage_files(copy.cache_dir) == clean_files


def test_truncated_shard_is_recomputed_alone(copy, clean, capsys):
    folder = stage_folder(copy.cache_dir, "jacobians")
    kept = (folder / "shard_00000.npz").stat().st_mtime_ns
    shard = folder / "shard_00001.npz"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert_recovered(copy, clean, rerun(copy, capsys), "shard_00001.npz")
    assert (folder / "shard_00000.npz").stat().st_mtime_ns == kept


def test_bit_flipped_shard_is_recomputed_before_it_is_read(copy, clean, capsys):
    shard = stage_folder(copy.cache_dir, "jacobians") / "shard_00000.npz"
    # A quarter in: inside J's float32 data (the first of the shard's two large arrays, J and the halves' difference),
    # where np.load alone would not notice.
    flip_byte(shard, shard.stat().st_size // 4)
    # Part 3 cached: this run reads no shard array (sizes and headers only), so it need not hash the shards.
    assert "cache: " not in rerun(copy, capsys)
    # Part 3 to compute: the shards are hashed before it reads them, and the damaged one is recomputed.
    (stage_folder(copy.cache_dir, "routing") / "_done.json").unlink()
    assert_recovered(copy, clean, rerun(copy, capsys), "shard_00000.npz")


@pytest.mark.parametrize("offset", [4, 326, -20])
def test_bit_flipped_parquet_is_recomputed(copy, clean, capsys, offset):
    table = stage_folder(copy.cache_dir, "effects") / "kd_table.parquet"
    flip_byte(table, offset % table.stat().st_size)
    assert_recovered(copy, clean, rerun(copy, capsys), "kd_table.parquet")


def test_killed_jacobian_stage_resumes_at_missing_and_damaged_shards(tmp_path):
    config = write_tiny_run(tmp_path)
    line = pipeline.load_line(config)
    run = line.run
    effects = pipeline.run_effects(line, progress=False)
    upstream = {"inputs": run, "effects": effects}
    shards = pipeline.run_stage(line, "jacobians", upstream, progress=False).shards
    assert len(shards.paths) == 2 and shards.n_kds == len(run.kd_names)
    folder = stage_folder(config.cache_dir, "jacobians")
    written = {p.name: p.read_bytes() for p in shards.paths}

    # Killed after shard 0 was written but before its own record; shard 1 never written; no stage record.
    (folder / "_done.json").unlink()
    (folder / "shard_00000.json").unlink()
    (folder / "shard_00001.npz").unlink()
    (folder / "shard_00001.json").unlink()
    pipeline.run_stage(line, "jacobians", upstream, progress=False)
    assert {p.name: p.read_bytes() for p in sorted(folder.glob("shard_*.npz"))} == written

    # Killed again, this time with shard 1 intact: only the record is missing, no shard is recomputed.
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.npz")}
    (folder / "_done.json").unlink()
    record = pipeline.run_stage(line, "jacobians", upstream, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.npz")} == stamps
    assert record.autograd_check["relative_error"] < 1e-4 and record.seconds > 0

    # The linear prediction stored with each shard is J_k·(p_k − p_ctrl).
    full = {int(i): j for idx, jac in open_shards(folder) for i, j in zip(idx, jac)}
    step = effects.responses.pert_repr[0] - effects.responses.control_repr
    assert np.allclose(open_shards(folder).linear_prediction()[0], full[0] @ step, atol=1e-4)


def test_opening_shards_reads_headers_not_arrays(clean, monkeypatch):
    config, _ = clean
    folder = stage_folder(config.cache_dir, "jacobians")
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("open_shards loaded an array"))
    shards = open_shards(folder)
    assert shards.n_kds == 6 and shards.shape == (24, 16)


def test_an_executor_yielding_out_of_order_gives_the_same_shards(copy, clean):
    """The executor seam: any `map(fn, tasks, state)` that yields (task, result) as results finish, in any order."""

    class Reversed:
        def describe(self):
            return "reversed"

        def map(self, fn, tasks, state):
            for task in reversed(list(tasks)):
                yield task, fn(state.local, task)

    shutil.rmtree(copy.cache_dir / "jacobians")
    shutil.rmtree(copy.cache_dir / "routing")
    analysis.run(copy, progress=False, executor=Reversed())
    assert stage_files(copy.cache_dir) == clean[1]


CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import analysis
    from analysis.store import cache
    from analysis.config import load_config

    config_path, log, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    complete = cache.StageDir.complete
    def logged(self, **meta):  # note which process completed which stage
        with open(log, "a") as fh:
            fh.write(f"{self.stage}\\n")
        return complete(self, **meta)
    cache.StageDir.complete = logged
    config = load_config(config_path)
    (ready / sys.argv[4]).touch()
    while len(list(ready.iterdir())) < 2:  # start the analyses together
        time.sleep(0.01)
    results = analysis.run(config, progress=False)
    print(results.routing.key, results.routing.evidence.mantel_pearson.statistic)
""")


@pytest.mark.slow  # two fresh Python processes import torch and arc-state
def test_two_concurrent_runs_compute_once_and_both_reuse(tmp_path):
    config = write_tiny_run(tmp_path)
    toml = write_config(tmp_path, config)
    (tmp_path / "ready").mkdir()
    log = tmp_path / "completed.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(toml), str(log), str(tmp_path / "ready"), str(i)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outputs]
    # each stage completed by exactly one of the two
    assert sorted(log.read_text().split()) == sorted(STAGES)
    assert outputs[0][0] == outputs[1][0]  # and both report the same results


def test_cache_files_are_world_readable(clean):
    config, _ = clean
    for path in config.cache_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def write_config(folder: Path, config, **fields) -> Path:
    """A TOML file for the tiny run of `config` with `fields` ({"section": {key: value}}) added."""
    sections = {"model": {"run_dir": str(config.run_dir)}, "data": {"h5ad": str(config.h5ad)},
                "effects": {"n_draws": 2}, "jacobian": {"shard_kds": 4, "kds_per_call": 2},
                "statistics": {"n_permutations": 199, "n_bootstrap": 50, "cluster_bootstrap": 5, "max_clusters": 3},
                "enrichment": {"prerank_permutations": 50, "gene_sets": [str(p) for p in config.gene_sets]},
                "runtime": {"device": "cpu", "cache_dir": str(config.cache_dir)}}
    for section, values in fields.items():
        sections[section].update(values)
    path = folder / "run.toml"
    path.write_text("".join(f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vals.items())
                            for s, vals in sections.items()))
    return path


def cli(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture
def read_only(tmp_path):
    """A cache folder nobody can write to (chattr +i for root, who ignores mode bits)."""
    folder = tmp_path / "ro-cache"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root without chattr: no way to make a folder read-only")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_read_only_cache_is_one_line_before_any_compute(tmp_path, read_only, monkeypatch, capsys):
    config = write_tiny_run(tmp_path).replace(cache_dir=read_only)
    monkeypatch.setattr(effects_stage, "compute_effects", lambda *a, **k: pytest.fail("Part 1 ran"))
    with pytest.raises(CacheError, match="not writable"):
        analysis.run(config, progress=False)
    code, err = cli(["--config", str(write_config(tmp_path, config, runtime={"cache_dir": str(read_only)})),
                     "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(read_only) in err and "not writable" in err


def test_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    """ENOSPC simulated by replacing the cache's one low-level write (`cache._write_all`) with one that fails."""
    config = write_tiny_run(tmp_path)

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache, "_write_all", disk_full)
    code, err = cli(["--config", str(write_config(tmp_path, config)), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "effects" in err
    assert not list(config.cache_dir.rglob("*.tmp"))


def test_too_few_strong_kds_is_one_line(tmp_path, capsys):
    config = write_tiny_run(tmp_path)
    code, err = cli(["--config", str(write_config(tmp_path, config, data={"kds": ["KD_A", "KD_B"]})), "--quiet"],
                    capsys)
    assert code == 2 and err.count("\n") == 1 and "at least 3 are needed to cluster" in err


def test_wrong_typed_config_field_is_one_line_through_the_cli(tmp_path, capsys):
    config = write_tiny_run(tmp_path)
    code, err = cli(["--config", str(write_config(tmp_path, config, effects={"n_draws": "2"}))], capsys)
    assert code == 2 and err == f"error: {tmp_path / 'run.toml'} [effects].n_draws: expected an integer, got '2'\n"


@pytest.mark.slow
def test_wheel_install_runs_and_carries_the_demo_config(tmp_path):
    """Build a wheel from a copy of the sources, install it (no deps: they are this environment's) into a
    target folder, and run the CLI from there: --help, the packaged demo config, and a tiny analysis."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "analysis", source / "analysis", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    python = lambda *args: subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True)

    help_ = python("-m", "analysis", "--help")
    assert help_.returncode == 0 and "--config" in help_.stdout
    probe = python("-c", "import analysis, analysis.config as c; cfg = c.load_config(); "
                         "print(analysis.__file__); print(cfg.cache_dir); print(*cfg.gene_sets, sep='\\n')")
    assert probe.returncode == 0, probe.stderr
    module, cache_dir, *gene_sets = probe.stdout.split("\n")[:-1]
    assert module.startswith(str(site)) and Path(cache_dir) == work / "cache"
    assert len(gene_sets) == 2 and all(g.startswith(str(site)) and Path(g).is_file() for g in gene_sets)

    config = write_tiny_run(tmp_path / "tiny")
    run = python("-m", "analysis", "--config", str(write_config(tmp_path, config)), "--quiet")
    assert run.returncode == 0 and "Verdict:" in run.stdout, run.stderr


HASH_SEED_RUN = """
import sys
from analysis.config import load_config
from analysis.pipeline import run as pipeline
config = load_config(sys.argv[1], cache_dir=sys.argv[2], cell_lines=["HepG2"])
print(pipeline.run_effects(pipeline.load_line(config), progress=False).key)
"""


def test_a_stage_writes_the_same_bytes_under_any_hash_seed(demo_config, tmp_path):
    """The effects stage (ΔY, clusters, ORA, prerank) on the demo, in two processes whose string hashing differs:
    every stored file is byte-identical, ΔY's float arrays included (gseapy lists overlap genes in set order, which
    follows the hash seed). Only the completion record's measured values (wall time, memory) may differ."""
    folders = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", HASH_SEED_RUN, str(demo_config.source), str(tmp_path / seed)],
                             env=env, capture_output=True, text=True, check=True)
        folders.append(tmp_path / seed / "effects" / out.stdout.split()[-1])
    files = [{p.name: p.read_bytes() for p in sorted(f.iterdir()) if not p.name.startswith(".")} for f in folders]
    assert {codec.ARRAYS, codec.VALUES, "_done.json"} <= set(files[0]) and len(files[0]) > 4
    records = [json.loads(f.pop("_done.json")) for f in files]
    for record in records:
        record.pop("measured")
    assert records[0] == records[1]  # the same key and the same digest of every file
    assert files[0] == files[1]  # ΔY, its draws, pert_repr, C_out, clusters, enrichment, names: the same bytes


def test_calibration_tables_are_benchmark_results_keyed_by_the_decision_rule():
    """benchmarks/calibration.py's tables live with the benchmark results, not in the package, and are read for the
    decision rule they were computed under only."""
    from analysis.config import default_decision_rule
    from analysis.datasets import calibration

    rule = default_decision_rule()
    for name in ("calibration_rates.json", "calibration_interventions.json"):
        path = ROOT / "benchmarks" / "results" / name
        assert calibration.stored_table(path, rule)["rates"]
        assert calibration.stored_table(path, dataclasses.replace(rule, alpha=0.01)) is None
    assert calibration.stored_table(ROOT / "benchmarks" / "results" / "missing.json", rule) is None
    assert not list((ROOT / "analysis").rglob("*.json"))
