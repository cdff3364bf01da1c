"""Executors: where a stage's independent tasks run.

The interface is one method, `map(fn, tasks)`: it calls `fn(task)` for every task and yields
`(task, result)` pairs as results finish (completion order, not submission order). The caller
persists each result as it arrives, so a killed run keeps what finished. `fn` and the tasks are
plain picklable values, so an executor that runs them elsewhere plugs in without changing the
stage: a Ray executor would submit `ray.remote(fn)` calls, keep a bounded number in flight (its
constructor's choice, e.g. one per GPU) and yield each as `ray.wait` returns it.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")


class LocalExecutor:
    """Runs tasks one after another in this process (one in flight)."""

    def map(self, fn: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[tuple[Task, Result]]:
        for task in tasks:
            yield task, fn(task)
