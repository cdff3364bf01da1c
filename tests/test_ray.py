"""The Ray executor on a real local Ray instance (2 CPUs): the same shard bytes and verdict as the local executor,
resume across executors, a worker killed mid-run, a driver killed mid-run, and the bound on tasks in flight.

Skipped only where Ray is not installed and the CI variable is unset; CI installs the `ray` extra and runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

if not os.environ.get("CI"):
    pytest.importorskip("ray")
import ray  # noqa: E402
from tiny import tiny_config, write_tiny_run  # noqa: E402

import analysis
from analysis.errors import InputError  # noqa: E402
from analysis.pipeline import executors, stages  # noqa: E402
from analysis.pipeline.executors import RayExecutor, WorkerState  # noqa: E402
from analysis.store import codec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_SHARDS = 6  # the tiny run's 6 KDs, one per shard, so there is a queue to fault and to bound


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance with 2 CPUs (2 workers), started as the executor starts one, and shut down after."""
    if ray.is_initialized():
        ray.shutdown()
    executors.init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The tiny run analysed with the local executor: (config, {stage: {file: sha256}}, verdict)."""
    config = write_tiny_run(tmp_path_factory.mktemp("tiny")).replace(shard_kds=1)
    results = analysis.run(config, progress=False)
    return config, stage_digests(config.cache_dir), codec.encode(results.routing.verdict)


def stage_folder(cache_dir: Path, stage: str) -> Path:
    (folder,) = (Path(cache_dir) / stage).iterdir()
    return folder


def stage_digests(cache_dir: Path) -> dict:
    """{stage: {file: sha256}} as each stage's completion record lists them (shard files included)."""
    out = {}
    for stage in (s for s in stages.LINE_STAGES if s != "quality"):  # quality scores predictions here, not on workers
        record = json.loads((stage_folder(cache_dir, stage) / "_done.json").read_text())
        out[stage] = {name: entry["sha256"] for name, entry in record["files"].items()}
    return out


def shard_bytes(cache_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(stage_folder(cache_dir, "jacobians").glob("shard_*.npz"))}


def fresh_copy(config, tmp_path: Path, keep_shards: set[int] = frozenset()):
    """A copy of the local run's cache holding Part 1 and the shards `keep_shards` only: its config."""
    cache_dir = tmp_path / "cache"
    shutil.copytree(config.cache_dir, cache_dir)
    shutil.rmtree(cache_dir / "routing")
    folder = stage_folder(cache_dir, "jacobians")
    (folder / "_done.json").unlink()
    for index in set(range(N_SHARDS)) - set(keep_shards):
        (folder / f"shard_{index:05d}.npz").unlink()
        (folder / f"shard_{index:05d}.json").unlink()
    return config.replace(cache_dir=cache_dir)


@pytest.mark.slow
def test_ray_gives_the_local_bytes_and_verdict_with_one_pool_for_both_parts(ray_instance, local, tmp_path):
    config, digests, verdict = local
    ray_config = config.replace(cache_dir=tmp_path / "cache", executor="ray")
    executor = Watched(RayExecutor())
    results = analysis.run(ray_config, progress=False, executor=executor)
    assert stage_digests(ray_config.cache_dir) == digests  # Part 1 (ΔY batches), shards and Part 3, byte for byte
    assert shard_bytes(ray_config.cache_dir) == shard_bytes(config.cache_dir)
    assert codec.encode(results.routing.verdict) == verdict
    record = json.loads((stage_folder(ray_config.cache_dir, "jacobians") / "_done.json").read_text())
    assert record["measured"]["executor"] == "ray: 2 workers × 1 CPU"
    # effects (ΔY batches), interventions (substituted pert_repr), Jacobian shards, steering, in the stages' order
    (delta_y, _, first_pids), (substituted, _, _), (shards, _, _), (steered, _, _) = executor.maps
    assert len(delta_y) == 3 and len(shards) == N_SHARDS  # 6 KDs in batches of kds_per_call = 2; 6 shards
    assert substituted and steered
    # every stage ran on the workers the first started: the model was built once per worker
    assert all(pids == first_pids for _, _, pids in executor.maps)


def test_the_config_chooses_the_executor(tmp_path):
    config = tiny_config(tmp_path)
    assert config.executor == "local" and isinstance(executors.for_config(config), executors.LocalExecutor)
    assert isinstance(executors.for_config(config.replace(executor="ray")), RayExecutor)
    with pytest.raises(InputError, match=r"override executor: expected 'local' or 'ray', got 'dask'"):
        tiny_config(tmp_path, executor="dask")


@pytest.mark.slow
def test_a_run_started_locally_is_finished_on_ray_computing_only_the_missing_shards(ray_instance, local, tmp_path):
    config, digests, _ = local
    resumed = fresh_copy(config, tmp_path, keep_shards={0, 2, 3})
    folder = stage_folder(resumed.cache_dir, "jacobians")
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.npz")}
    executor = Watched(RayExecutor())
    analysis.run(resumed, progress=False, executor=executor)
    ((tasks, _, _),) = executor.maps  # Part 1 was cached: one map, the missing shards only
    assert [task.index for task in tasks] == [1, 4, 5]
    assert {name: (folder / name).stat().st_mtime_ns for name in kept} == kept  # not rewritten
    assert stage_digests(resumed.cache_dir) == digests


class Watched:
    """Wraps an executor, noting each map's tasks, results and worker pids, and running `after_first` after the
    first result of the last map."""

    def __init__(self, inner, after_first=lambda inner: None):
        self.inner, self.after_first, self.maps = inner, after_first, []

    def describe(self):
        return self.inner.describe()

    def map(self, fn, tasks, state):
        tasks, results = list(tasks), []
        self.maps.append((tasks, results, None))
        for item in self.inner.map(fn, tasks, state):
            if not results:
                self.maps[-1] = (tasks, results, list(self.inner.pids))
                self.after_first(self.inner)
            results.append(item)
            yield item


@pytest.mark.slow
def test_a_worker_killed_by_pid_mid_run_is_replaced_and_the_results_are_identical(ray_instance, local, tmp_path):
    config, digests, _ = local
    killed = {}

    def kill_a_worker(inner: RayExecutor):
        # Each worker holds 2 tasks (6 in all), one result has arrived: the killed worker has unfinished tasks.
        killed["pid"] = inner.pids[0]
        os.kill(inner.pids[0], signal.SIGKILL)

    faulted = fresh_copy(config, tmp_path)
    analysis.run(faulted, progress=False, executor=Watched(RayExecutor(), kill_a_worker))
    assert not alive(killed["pid"])
    assert stage_digests(faulted.cache_dir) == digests
    assert shard_bytes(faulted.cache_dir) == shard_bytes(config.cache_dir)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# The driver of the killed run: joins the test's Ray instance and runs the analysis; each stored shard takes an extra
# second, so the test can kill it between two shards.
DRIVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    import analysis
    from analysis.store import shards
    from analysis.pipeline import executors
    from tiny import tiny_config

    put = shards.ShardStore.put
    def slow_put(self, *args, **kwargs):
        put(self, *args, **kwargs)
        time.sleep(1.0)
    shards.ShardStore.put = slow_put
    executors.init_ray(sys.argv[3])
    analysis.run(tiny_config(Path(sys.argv[2]), shard_kds=1, executor="ray"), progress=False)
""")


@pytest.mark.slow
def test_a_driver_killed_mid_run_leaves_whole_shards_and_the_rerun_resumes(ray_instance, local, tmp_path):
    config, digests, _ = local
    folder_copy = tmp_path / "tiny"  # the run, its data, and a cache with Part 1 only, where tiny_config looks
    shutil.copytree(Path(config.run_dir).parent, folder_copy, ignore=shutil.ignore_patterns("cache"))
    fresh_copy(config, folder_copy)
    shard_dir = stage_folder(folder_copy / "cache", "jacobians")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "tests"), str(folder_copy), ray_instance],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(list(shard_dir.glob("shard_*.json"))) < 2:
        assert driver.poll() is None, driver.communicate()[0]
        assert time.monotonic() < deadline, "the driver wrote no shards in 5 minutes"
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    written = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("shard_*.npz") if p.with_suffix(".json").exists()}
    assert 2 <= len(written) < N_SHARDS and not (shard_dir / "_done.json").exists()
    local_shards = shard_bytes(config.cache_dir)
    assert {name: (shard_dir / name).read_bytes() for name in written} == {name: local_shards[name] for name in written}

    # The rerun (here with the local executor: resume works across executors) keeps the whole shards.
    rerun = tiny_config(folder_copy, shard_kds=1)
    analysis.run(rerun, progress=False)
    assert {name: (shard_dir / name).stat().st_mtime_ns for name in written} == written
    assert stage_digests(rerun.cache_dir) == digests


# ---------------------------------------------------------------- the in-flight bound, without a model
class Offset:
    """A shipped state for the bound test: builds to an integer."""

    def __init__(self, value: int):
        self.value = value

    def build(self) -> int:
        return self.value


def slow_add(state: int, task: int) -> int:
    time.sleep(0.2)
    return state + task


@pytest.mark.parametrize("tasks_per_worker", [1, 3])
def test_tasks_in_flight_never_exceed_workers_times_tasks_per_worker(ray_instance, tasks_per_worker):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers do not have the tests folder
    executor = RayExecutor(workers=2, tasks_per_worker=tasks_per_worker)
    results = dict(executor.map(slow_add, range(20), WorkerState(local=None, ship=lambda: Offset(100))))
    assert results == {task: 100 + task for task in range(20)}
    assert executor.max_in_flight == 2 * tasks_per_worker  # reached, never exceeded
    assert len(set(executor.pids)) == 2


def test_the_local_executor_never_imports_ray(tmp_path):
    script = textwrap.dedent("""
        import sys
        from analysis.pipeline import executors, run as pipeline
        from analysis.config import load_config
        config = load_config(None, run_dir="r", h5ad="d.h5ad", cache_dir="c")
        assert isinstance(executors.for_config(config), executors.LocalExecutor)
        assert "ray" not in sys.modules, "ray imported"
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
