"""The steps of one item, without Prefect: plan, submit, wait, archive.

``flows/`` wraps submit, wait and archive in Prefect tasks; the CLI's dry run calls
:func:`plan_item` directly, so it needs no Prefect server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tryon.archive import Archive, ArchiveError, ItemResult, OutputRecord, PendingRecord
from tryon.client import FashnClient
from tryon.collection import Item
from tryon.errors import AmbiguousSubmission, OutputExpired, PredictionFailed
from tryon.models import Prediction, RunRequest
from tryon.traffic import Slot, TrafficController

logger = logging.getLogger(__name__)


class Runtime:
    """What one flow run needs to run items on one key into one archive (shared by its tasks)."""

    def __init__(self, client: FashnClient, traffic: TrafficController, archive: Archive, *,
                 max_resubmits: int = 2, resubmit_ambiguous: bool = True, prediction_timeout: float = 600.0,
                 workers: int | None = None) -> None:
        self.client = client
        self.traffic = traffic
        self.archive = archive
        self.max_resubmits = max_resubmits
        self.resubmit_ambiguous = resubmit_ambiguous
        self.prediction_timeout = prediction_timeout
        # Enough items in progress to keep every slot busy while others download or archive.
        self.workers = workers or 2 * traffic.slots.capacity + 2
        # Items begun and not ended, by item key (tryon.pipeline): a repeat of an item (a Prefect
        # retry) goes on with the prediction it waits on rather than paying for another.
        self.in_progress: dict[str, InProgress] = {}

    def __repr__(self) -> str:
        return f"Runtime(archive={self.archive.url!r})"


@dataclass(frozen=True)
class Submission:
    prediction_id: str
    submitted_at: float  # epoch seconds
    attempt: int


@dataclass
class InProgress:
    """Where one item stands in this run: the prediction it waits on (None: to submit), its
    attempts so far, the flags its result will carry and the notes for its report."""

    submission: Submission | None
    attempt: int
    flags: dict[str, bool]
    notes: list[str]


Action = Literal["skip", "resume", "submit", "failed"]


@dataclass
class Plan:
    """What a run will do with one item, decided from the archive alone (no API call)."""

    action: Action
    key: str
    result: ItemResult | None = None
    pending: PendingRecord | None = None
    reason: str = ""

    @property
    def attempts(self) -> int:
        if self.pending is not None:
            return self.pending.attempts
        return self.result.attempts if self.result is not None else 0


async def plan_item(archive: Archive, item: Item, key: str, *, force: bool = False, max_resubmits: int = 2) -> Plan:
    """Skip what is archived, resume what was submitted, submit the rest.

    A failure that retrying cannot fix stays failed (resubmitting would pay for the same
    answer); ``force`` re-does any item on purpose.
    """
    if force:
        return Plan("submit", key, reason="forced")
    result = await archive.read_result(item, key)
    if result is not None and result.state == "archived":
        return Plan("skip", key, result=result, reason="already archived")
    if result is not None:
        retryable = result.error_name is not None and PredictionFailed(result.error_name, "").retryable
        if not retryable or result.attempts > max_resubmits:
            return Plan("failed", key, result=result, reason="failed before; not resubmitted (use force)")
        return Plan("submit", key, result=result, reason="retryable failure before")
    pending = await archive.read_pending(item, key)
    if pending is not None and pending.prediction_id:
        return Plan("resume", key, pending=pending, reason=f"polling prediction {pending.prediction_id}")
    if pending is not None:  # only ambiguous submissions so far
        return Plan("submit", key, pending=pending, reason="ambiguous submission before")
    return Plan("submit", key)


def failure_of(prediction: Prediction) -> PredictionFailed:
    error = prediction.error
    name = error.name if error else prediction.status
    message = error.message if error else f"prediction ended {prediction.status}"
    return PredictionFailed(name, message, prediction_id=prediction.id)


async def prepare(runtime: Runtime, item: Item) -> RunRequest:
    """The item's request body, images encoded: built before its slot is taken."""
    return await runtime.client.prepare_run(item.model_name, item.inputs, base_dir=item.base_dir)


async def submit(runtime: Runtime, item: Item, key: str, attempt: int,
                 request: RunRequest | None = None) -> tuple[Submission, Slot]:
    """Take an in-flight slot, send ``POST /v1/run`` once and write the prediction id durably
    before returning it with the slot the prediction now occupies.

    The slot is taken here, inside the submit step, so that whatever runs before the step (a
    Prefect task run's start) is paid while waiting for a slot, not after one frees. After an
    ambiguous answer the slot becomes a phantom for as long as the prediction the server may
    have created would run; after any other error it is freed.
    ``request``: the body from :func:`prepare` (built here when not given).
    """
    request = request or await prepare(runtime, item)
    slot = await runtime.traffic.acquire_slot()  # held until the prediction ends
    submitted_at = time.time()
    try:
        prediction_id = await runtime.client.start(request)
    except AmbiguousSubmission:
        runtime.traffic.hold_phantom(item.model_name, item.mode, slot=slot)
        try:
            await runtime.archive.record_ambiguous(item, key, attempt=attempt)
        except ArchiveError as exc:
            logger.warning("%s: could not record the ambiguous submission (%s)", item.label, exc)
        raise
    except BaseException:
        runtime.traffic.release_slot(slot)
        raise
    try:
        await runtime.archive.record_pending(item, key, prediction_id, attempt=attempt)
    except ArchiveError as exc:
        # The prediction exists (and will be billed): never abandon it. Raising here used to fail
        # the item, free its slot while the prediction still ran (a ConcurrencyLimitExceeded risk)
        # and make the next run submit it again. Poll and archive it from memory instead; only a
        # kill before its result.json is written can lose the id now.
        logger.warning("%s: prediction %s is running but its id could not be recorded (%s); "
                       "archiving it anyway", item.label, prediction_id, exc)
    return Submission(prediction_id, submitted_at, attempt), slot


def resumed(pending: PendingRecord) -> Submission:
    submitted = pending.submitted_at.timestamp() if pending.submitted_at else time.time()
    return Submission(pending.prediction_id or "", submitted, max(pending.attempts, 1))


async def wait(runtime: Runtime, item: Item, submission: Submission, slot: Slot | None) -> Prediction:
    """The terminal answer (polled by the key's shared scheduler); frees ``slot`` the moment it comes."""
    elapsed = max(0.0, time.time() - submission.submitted_at)
    return await runtime.traffic.wait(
        submission.prediction_id, model_name=item.model_name, mode=item.mode, poll=runtime.client.status,
        submitted_at=runtime.traffic.clock.now() - elapsed, timeout=runtime.prediction_timeout, slot=slot,
    )


async def archive(runtime: Runtime, item: Item, key: str, submission: Submission, prediction: Prediction,
                  flags: Mapping[str, bool] | None = None) -> ItemResult:
    """Copy every output into the archive, verify it, and write ``result.json`` last (with
    ``flags``: ``possible_duplicate_charge``, ``resubmitted_after_404``)."""
    if not prediction.output:
        raise OutputExpired(f"prediction {prediction.id} completed with no output")
    ext = "jpg" if item.output_format == "jpeg" else "png"
    outputs: list[OutputRecord] = []
    for index, url in enumerate(prediction.output):
        data = await runtime.client.download(url)
        outputs.append(await runtime.archive.write_output(item, index, data, ext))
    result = ItemResult.archived(item, key, submission, prediction, outputs, **dict(flags or {}))
    await runtime.archive.write_result(item, result)
    return result
