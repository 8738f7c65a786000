"""Prefect tasks: thin wrappers over :mod:`tryon.steps`, adding names, retries and logs.

Two task runs per item. Submission has no Prefect retries: the client already re-sends
``POST /v1/run`` when the answer proves nothing was created, and any other re-send could
pay twice. Collecting (polling, then archiving) is safe to repeat, so it retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tryon import steps
from tryon.archive import ItemResult
from tryon.collection import Item
from tryon.errors import NotFound, OutputExpired, UnauthorizedAccess
from tryon.models import Prediction, RunRequest
from tryon.traffic import Slot


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


@task(task_run_name="submit {item.label}", cache_policy=NO_CACHE, retries=0)
async def submit_prediction(runtime: steps.Runtime, item: Item, key: str, attempt: int,
                            request: RunRequest | None = None) -> tuple[steps.Submission, Slot]:
    """Wait for an in-flight slot, start one prediction and write its id to the archive before
    anything else happens. The wait is inside the task so that the task run's own start-up
    (≈10-30 ms here) is not paid between a slot freeing and the next submission."""
    return await steps.submit(runtime, item, key, attempt, request)


@dataclass(frozen=True)
class Collected:
    """How a prediction ended: its last answer, and the archived result when it completed."""

    prediction: Prediction
    result: ItemResult | None = None
    expired: OutputExpired | None = None


@task(task_run_name="collect {item.label}", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15],
      retry_condition_fn=retry_unless(NotFound, UnauthorizedAccess))
async def collect_outputs(runtime: steps.Runtime, item: Item, key: str, submission: steps.Submission,
                          slot: Slot | None, flags: dict[str, bool] | None = None) -> Collected:
    """Poll (through the key's shared scheduler) until the prediction ends; when it completed,
    download every output, write and verify it, then write result.json last, with ``flags``
    (in that one write: a second write could fail or be killed, losing a possible duplicate charge).

    One task, not two, because a task run costs about 30 ms of CPU between this process and
    the server, and both steps are safe to repeat: a retry polls once more (the slot is
    already free) and rewrites the same objects. Failed predictions are returned, not raised.
    """
    prediction = await steps.wait(runtime, item, submission, slot)
    if prediction.status != "completed":
        return Collected(prediction)
    try:
        return Collected(prediction, await steps.archive(runtime, item, key, submission, prediction, flags))
    except OutputExpired as exc:  # final: the provider no longer has the images
        return Collected(prediction, expired=exc)
