"""Prefect tasks: thin wrappers over :mod:`tryon.item`, adding names, retries and logs.

One task run per item: a task run is the largest cost per item after the API calls
(``bench/task_cost.py``). Retrying the whole item is safe because :func:`tryon.item.run` goes on
from the state it left, never submitting twice what this run started.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tryon import item
from tryon.drain import RunCancelled
from tryon.errors import NotFound, OutOfCredits, UnauthorizedAccess
from tryon.item import ItemState
from tryon.report import ItemReport
from tryon.runtime import Runtime


def retry_unless(*final: type[BaseException]):
    """A retry condition: retry a failed task run unless it raised one of ``final``.

    A coroutine function on purpose: Prefect awaits it in the async task engine, where
    ``state.result()`` returns a coroutine instead of raising, so a sync condition built on it
    would answer False every time.
    """

    async def condition(task: Any, task_run: Any, state: Any) -> bool:
        exc = state.data if isinstance(state.data, BaseException) else None
        if exc is None:
            try:
                await state.aresult()
            except BaseException as raised:
                exc = raised
            else:
                return False
        return not isinstance(exc, final)

    return condition


@task(task_run_name="try on {state.label}", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15],
      retry_condition_fn=retry_unless(NotFound, UnauthorizedAccess, OutOfCredits, RunCancelled))
async def tryon_item(runtime: Runtime, state: ItemState) -> ItemReport:
    """Take one planned item to its end (:func:`tryon.item.run`): submit (waiting for an in-flight
    slot inside the task, so the task run's start-up is paid while waiting), poll through the
    key's shared scheduler, archive every output, write result.json. Failed predictions are
    reported, not raised; a retry goes on with the prediction this run started."""
    return await item.run(runtime, state)
