"""Watching a run from the terminal that started it: what it waits for, its progress, and where
its report is.

The terminal runner registers a :class:`RunWatcher` for the flow run it created, under that run's
id, for as long as the run lasts (:func:`watching`); the run looks up the watcher of its own id
(:func:`watcher_of`), so no other run, subflows included, ever reports to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

from tryon.report import RunReport
from tryon.traffic import TrafficController
from tryon.traffic.latency import Profile


class RunWatcher(Protocol):
    def waiting(self, what: str) -> None: ...  # the run waits for this (a short phrase)

    def started(self, traffic: TrafficController, profiles: Sequence[Profile]) -> None: ...  # items to submit

    async def progress(self, report: RunReport) -> None: ...

    def saved(self, location: str) -> None: ...  # the report's URL


_watchers: dict[str, RunWatcher] = {}  # by flow run id, while :func:`watching` lasts


@contextlib.contextmanager
def watching(flow_run_id: str, watcher: RunWatcher) -> Iterator[None]:
    _watchers[flow_run_id] = watcher
    try:
        yield
    finally:
        del _watchers[flow_run_id]


def watcher_of(flow_run_id: str | None) -> RunWatcher | None:
    return _watchers.get(flow_run_id) if flow_run_id else None
