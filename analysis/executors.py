"""Executors: where a stage's independent tasks run.

The interface is one method, `map(fn, tasks)`: it calls `fn(task)` for every task and yields
`(task, result)` pairs as results finish (completion order, not submission order), keeping at most
`max_in_flight` tasks started and not yet yielded. The caller persists each result as it arrives, so
a killed run keeps what finished. `fn` and the tasks are plain picklable values, so an executor that
runs them elsewhere (a Ray executor: `ray.remote(fn)`, `ray.wait` on at most `max_in_flight` refs)
plugs in without changing the stage.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")


class LocalExecutor:
    """Runs tasks one after another in this process (one in flight)."""

    max_in_flight = 1

    def map(self, fn: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[tuple[Task, Result]]:
        for task in tasks:
            yield task, fn(task)
