"""Watching a run from the terminal that started it: what it waits for, its progress, and where
its report is.

The terminal runner registers a :class:`RunWatcher` for the flow run it created, under that run's
id, for as long as the run lasts (:func:`watching`), with the run it opened and began for it
(:mod:`flows.opening`); the run looks up those of its own id (:func:`watcher_of`,
:func:`begun_of`), so no other run, subflows included, ever reports to it or takes its items.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from tryon.report import RunReport
from tryon.traffic import TrafficController
from tryon.traffic.latency import Profile

if TYPE_CHECKING:
    from flows.opening import OpenRun


class RunWatcher(Protocol):
    def waiting(self, what: str) -> None: ...  # the run waits for this (a short phrase)

    def started(self, traffic: TrafficController, profiles: Sequence[Profile]) -> None: ...  # items to submit

    async def progress(self, report: RunReport) -> None: ...

    def saved(self, location: str) -> None: ...  # the report's URL


# By flow run id, while :func:`watching` lasts: the terminal's watcher, and the run it opened.
_watchers: dict[str, RunWatcher] = {}
_begun: dict[str, OpenRun] = {}


@contextlib.contextmanager
def watching(flow_run_id: str, watcher: RunWatcher, begun: OpenRun | None = None) -> Iterator[None]:
    _watchers[flow_run_id] = watcher
    if begun is not None:
        _begun[flow_run_id] = begun
    try:
        yield
    finally:
        del _watchers[flow_run_id]
        _begun.pop(flow_run_id, None)


def watcher_of(flow_run_id: str | None) -> RunWatcher | None:
    return _watchers.get(flow_run_id) if flow_run_id else None


def begun_of(flow_run_id: str | None) -> OpenRun | None:
    """The run the terminal opened for this flow run, its first items already running; taken once
    (a review round later opens its own)."""
    return _begun.pop(flow_run_id, None) if flow_run_id else None
