"""Prefect tasks: thin wrappers over :mod:`tryon.pipeline`, adding names, retries and logs.

One task run per item: a task run costs 35 ms of CPU between this process and a Prefect server
with its defaults, 15 ms with the embedded server's tuning (``bench/task_cost.py``), the largest
cost per item after the API calls; two per item (submit; poll and archive) cost 39 + 79 ms per
item in the benchmark, one 35 + 49 ms (before the tuning). Retrying the whole
item is safe because :func:`tryon.pipeline.run` never submits twice what this run started.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tryon import pipeline, steps
from tryon.collection import Item
from tryon.errors import NotFound, OutOfCredits, UnauthorizedAccess
from tryon.report import ItemReport


def retry_unless(*final: type[BaseException]):
    """A retry condition: retry a failed task run unless it raised one of ``final``.

    A coroutine function on purpose: Prefect awaits it in the async task engine. ``state.result()``
    called from there is dispatched to ``aresult`` and returns a coroutine instead of raising, so
    a sync condition built on it answered False every time and the tasks never retried.
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


@task(task_run_name="try on {item.label}", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15],
      retry_condition_fn=retry_unless(NotFound, UnauthorizedAccess, OutOfCredits))
async def tryon_item(runtime: steps.Runtime, item: Item, key: str) -> ItemReport:
    """Take one begun item (:func:`tryon.pipeline.begin`) to its end: submit (waiting for an
    in-flight slot inside the task, so the task run's start-up is paid while waiting), poll through
    the key's shared scheduler, archive every output, write result.json.

    Retried, because a repeat never pays twice: the item's state stays in the runtime until it
    ends, so a retry polls and archives the prediction this run started (and across runs the
    archive's pending record does the same). Failed predictions are reported, not raised.
    """
    return await pipeline.run(runtime, item, key)
