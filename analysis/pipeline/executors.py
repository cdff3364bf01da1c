"""Executors: where a stage's independent tasks run.

The interface is one method, `map(fn, tasks, state)`: it calls `fn(state_value, task)` for every task and
yields `(task, result)` pairs as results finish (completion order, not submission order). The caller
persists each result as it arrives, so a killed run keeps what finished. `state` (a `WorkerState`) is what
every task reads, such as the loaded model: its `local` value in this process, and `ship()`, a picklable
recipe whose `build()` makes the same value on another machine, once per worker. `fn`, the tasks and the
results are plain picklable values.

`LocalExecutor` runs the tasks here, one after another. `RayExecutor` (the optional `ray` extra) runs them on
Ray actors, one per GPU or CPU slot, each building the state once, with a bounded number of tasks in flight.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from ..config import PACKAGE_DIR
from ..errors import InputError
from ..model.cells import intra_op_threads

Task = TypeVar("Task")
Result = TypeVar("Result")


class Shipped(Protocol):
    """A picklable recipe for a worker's state (e.g. checkpoint bytes and control cells): `build()` makes it."""

    def build(self) -> Any: ...


@dataclass(frozen=True)
class WorkerState:
    """The state tasks read: `local`, the value in this process; `ship()`, its recipe for other processes
    (called only by executors that run elsewhere, so a local run never serialises the model)."""

    local: Any
    ship: Callable[[], Shipped]


class LocalExecutor:
    """Runs tasks one after another in this process (one in flight)."""

    def describe(self) -> str:
        return "local"

    def map(self, fn: Callable[[Any, Task], Result], tasks: Iterable[Task],
            state: WorkerState) -> Iterator[tuple[Task, Result]]:
        for task in tasks:
            yield task, fn(state.local, task)


class _Worker:
    """A Ray actor's body: builds the state on its first call (again after a restart, and when a later `map`
    ships another state), then runs tasks on it.

    Calls carry `refs`, [recipe, fn] as object references in a list, which Ray passes through unresolved: the
    worker fetches each only when it changes. (Not constructor arguments: Ray cannot promise those to a
    restarted actor.)
    """

    def __init__(self):
        self.held = {}  # "state" / "fn" -> (object id it came from, value)

    def _ready(self, refs: list) -> None:
        import ray

        shipped, fn = refs
        if self.held.get("state", (None,))[0] != shipped.hex():
            self.held["state"] = (shipped.hex(), ray.get(shipped).build())
        if self.held.get("fn", (None,))[0] != fn.hex():
            self.held["fn"] = (fn.hex(), ray.get(fn))

    def start(self, refs: list) -> int:
        """Build the state; returns this worker's process id."""
        self._ready(refs)
        return os.getpid()

    def run(self, refs: list, task):
        self._ready(refs)
        return self.held["fn"][1](self.held["state"][1], task)


class RayExecutor:
    """Runs tasks on Ray actors: `workers` actors (0: one per GPU of the cluster, or one per `cpus_per_worker`
    CPUs when it has none or `use_gpus` is False), each holding the state built once from `WorkerState.ship()`, which goes through
    the object store once (`ray.put`), so workers need no shared filesystem. When this executor starts or joins
    Ray itself (`init_ray`), the package's own code is shipped too, so workers compute with the driver's code;
    its dependencies (torch, arc-state) must be installed on every node.

    Memory bound: at most `workers × tasks_per_worker` tasks are submitted and not yet yielded, so at most that
    many results sit in the object store (each task is handed to a worker when one of its previous tasks is
    collected with `ray.wait`). `max_in_flight` records the largest number seen in the last `map`.

    Consecutive maps with the same `WorkerState.local` reuse the workers (the state is built once per worker).
    Faults: a worker process that dies is restarted (up to `max_restarts` times, rebuilding its state) and its
    unfinished tasks are re-run (up to `max_task_retries` times), so no result is lost or duplicated.
    `address`: None starts a local Ray instance when none is running; "auto" or "ray://host:port" joins a cluster.
    """

    def __init__(self, address: str | None = None, workers: int = 0, cpus_per_worker: int = 1,
                 tasks_per_worker: int = 2, max_restarts: int = 3, max_task_retries: int = 3, use_gpus: bool = True):
        try:
            import ray  # noqa: F401  (fail here, with the fix, rather than mid-run)
        except ImportError:
            raise InputError("[runtime].executor", "'ray' needs Ray installed: pip install 'state-routing-report[ray]'") from None
        self.address, self.workers, self.cpus_per_worker = address, workers, cpus_per_worker
        self.tasks_per_worker, self.max_restarts, self.max_task_retries = tasks_per_worker, max_restarts, max_task_retries
        self.use_gpus = use_gpus
        self.max_in_flight = 0
        self.pids: list[int] = []  # the worker processes as the last `map` started
        self.layout = "no tasks run"
        self._pool = None  # (the state's local value, workers, the state's object reference), kept between maps
        self.startup_seconds = 0.0  # until every worker held the state and fn, in the last `map`

    def describe(self) -> str:
        """The worker layout of the last `map`, for the stage record."""
        return f"ray: {self.layout}"

    def _connect(self) -> None:
        import ray

        if not ray.is_initialized():
            init_ray(self.address)

    def _gpus(self) -> int:
        import ray

        return int(ray.cluster_resources().get("GPU", 0)) if self.use_gpus else 0

    def _n_workers(self, n_tasks: int) -> int:
        import ray

        slots = self._gpus() or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.cpus_per_worker)
        return max(1, min(self.workers or slots, n_tasks))

    def map(self, fn: Callable[[Any, Task], Result], tasks: Iterable[Task],
            state: WorkerState) -> Iterator[tuple[Task, Result]]:
        import ray

        tasks = list(tasks)
        self.max_in_flight, self.pids = 0, []
        if not tasks:
            return
        self._connect()
        started = time.perf_counter()
        workers, shipped = self._pool_for(state, len(tasks))
        refs = [shipped, ray.put(fn)]  # fn with its shared inputs: once per map, whatever the number of workers
        self.pids = ray.get([w.start.remote(refs) for w in workers])
        self.startup_seconds = time.perf_counter() - started
        queue = iter(tasks)
        pending: dict = {}  # ObjectRef -> (task, worker)

        def submit(worker) -> None:
            task = next(queue, None)
            if task is not None:
                pending[worker.run.remote(refs, task)] = (task, worker)

        finished = False
        try:
            for worker in workers:
                for _ in range(self.tasks_per_worker):
                    submit(worker)
            while pending:
                self.max_in_flight = max(self.max_in_flight, len(pending))
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task, worker = pending.pop(ref)
                result = ray.get(ref)
                del ref  # the driver's reference was the last one: the object store frees the result
                submit(worker)
                yield task, result
            finished = True
        finally:
            if not finished:  # abandoned or failed: its workers may still hold tasks, so none is reused
                self.close()

    def _pool_for(self, state: WorkerState, n_tasks: int) -> tuple[list, Any]:
        """The workers and the state's object reference: the previous map's when it had the same state (the effects
        and Jacobian stages share one pool, so the model is built once per worker for both), else new ones."""
        import ray

        if self._pool is not None and self._pool[0] is state.local:
            return self._pool[1], self._pool[2]
        self.close()
        gpus = self._gpus()
        actor = ray.remote(_Worker).options(
            num_gpus=1 if gpus else 0, num_cpus=self.cpus_per_worker,
            max_restarts=self.max_restarts, max_task_retries=self.max_task_retries)
        shipped = ray.put(state.ship())  # once; every worker (and every restart) builds from this object
        workers = [actor.remote() for _ in range(self._n_workers(n_tasks))]
        self.layout = f"{len(workers)} workers × " + ("1 GPU" if gpus else f"{self.cpus_per_worker} CPU")
        self._pool = (state.local, workers, shipped)
        return workers, shipped

    def close(self) -> None:
        """End the workers (they also end with this process)."""
        import ray

        for worker in self._pool[1] if self._pool else ():
            ray.kill(worker)
        self._pool = None


def init_ray(address: str | None = None, **options) -> None:
    """Start a local Ray instance (address None) or join a cluster ("auto", "ray://host:port"), with this package's
    code shipped to its workers (`runtime_env` py_modules) and Ray's own logs kept off the console.
    Workers start with the driver's intra-op thread count: Ray sets OMP_NUM_THREADS=1 for a one-CPU worker, and torch
    started with one thread rounds the Jacobians' float32 sums differently (≈ 1e-8 on the tiny run: its shards'
    bytes differed from the local executor's), so the workers must do the driver's arithmetic.
    `options`: more `ray.init` arguments (e.g. num_cpus=2). A connection failure is one InputError line."""
    import ray

    env = {"OMP_NUM_THREADS": str(intra_op_threads())}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"py_modules": [str(PACKAGE_DIR)], "env_vars": env}, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError("[runtime].ray_address", f"cannot start or join Ray at {address!r} ({first[:200]})") from None


def for_config(config) -> LocalExecutor | RayExecutor:
    """The executor the config's [runtime] section names (Ray is imported only for executor = "ray")."""
    if config.executor == "ray":
        return RayExecutor(config.ray_address, use_gpus=config.device != "cpu")
    return LocalExecutor()
