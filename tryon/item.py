"""The life of one item, without Prefect: plan, submit, wait, archive, report.

One state type, :class:`ItemState`, and its stages::

    reuse ──copy, verify──▶ reused (0 credits)
     ▲ │
     │ ▼ a copy does not verify
    planned ──submit──▶ submitted ──wait──▶ (completed) ──archive──▶ archived
       ▲                    │
       └── resubmit ────────┤ (retryable failure, 404, ambiguous answer)
                            └──────────────────────────────────────▶ failed
    planned → reuse: another item of this process was paying for the same key (waited for)
    planned → unfunded: its submission would not fit the run's spend limit (nothing archived)
    skipped: archived by an earlier run (planned so, nothing to do)

:func:`plan` decides the stage from the archive alone (no API call): an item not archived under
its own collection whose key the archive's index knows (another collection archived the same
pair) is planned ``reuse``. :func:`run` takes an active item to its end and may be called again
after it raised (``flows.tasks`` retries it as one Prefect task): the state it changed (the
prediction it waits on, attempts, flags, notes) is the one it goes on from, so a repeat polls the
prediction this run started instead of paying for another, even when its id never reached the
archive and even with ``force``. Across runs the archive's pending record does the same. Every
transition is in this module.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Literal

from tryon.archive import (Archive, ArchiveError, Flags, IndexEntry, ItemResult, NotReusable, SubmissionRecord,
                           utcnow)
from tryon.checks import review_reason
from tryon.errors import AmbiguousSubmission, FashnError, NotFound, OutputExpired, PredictionFailed
from tryon.models import Prediction, RunRequest
from tryon.report import ItemReport
from tryon.runtime import Runtime
from tryon.spec.items import Item
from tryon.spec.key import item_key
from tryon.takes import current_take
from tryon.traffic import Slot

logger = logging.getLogger(__name__)

Stage = Literal["reuse", "planned", "submitted", "archived", "reused", "failed", "skipped", "unfunded"]
ACTIVE: frozenset[Stage] = frozenset({"reuse", "planned", "submitted"})


class ItemState:
    """Where one item stands in this run. Created by :func:`plan`, changed only here.

    A plain class on purpose: Prefect walks dataclasses and models passed to a task (to find
    futures), and this object is handed to one task per item.
    """

    __slots__ = ("item", "key", "stage", "reason", "attempt", "submission", "pushed", "result", "earlier", "notes",
                 "flags", "forgotten", "source", "reusable")

    def __init__(self, item: Item, key: str, stage: Stage, *, reason: str = "", attempt: int = 0,
                 submission: SubmissionRecord | None = None, result: ItemResult | None = None,
                 flags: Flags = Flags(), source: IndexEntry | None = None, reusable: bool = False) -> None:
        self.item = item
        self.key = key
        self.stage: Stage = stage
        self.reason = reason  # why it was planned so
        self.attempt = attempt  # submissions so far, this run's and earlier runs'
        self.submission = submission  # the prediction it waits on (stage "submitted")
        self.pushed = False  # that prediction was submitted with this run's webhook URL: its end comes by webhook
        self.result = result  # how it ended (archived, failed or skipped)
        self.earlier = result is not None  # it ended in an earlier run
        self.notes: list[str] = []
        self.flags = flags  # what its report must say; into its pending record and its result
        self.forgotten = False  # the provider forgot a prediction of this run (404): submitted again; twice raises
        self.source = source  # the index entry it copies from (stage "reuse")
        self.reusable = reusable  # may wait for another item of this process paying for its key
        if flags.reuse_refused:
            self.notes.append(f"not reused: {flags.reuse_refused}")
        if flags.possible_duplicate_charge:
            self.notes.append("an earlier run got an ambiguous answer to a submission")

    @property
    def label(self) -> str:
        return self.item.label

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE

    def __repr__(self) -> str:
        return f"ItemState({self.label!r}, {self.stage})"

    def flag(self, **changes: bool | str) -> None:
        self.flags = self.flags.model_copy(update=changes)

    def resubmit(self, note: str) -> None:
        """Back to ``planned``, saying why: the next submission is a new prediction."""
        self.notes.append(note)
        self.submission, self.stage = None, "planned"

    def unfund(self, why: str) -> None:
        """End the item left for the budget: not submitted (again), nothing archived (a later run plans it)."""
        self.notes.append(why)
        self.end(ItemReport.unfunded(self.item, self.key, self.flags, attempts=self.attempt))

    def end(self, result: ItemResult) -> None:
        if self.earlier and result.state == "archived":
            self.stage = "skipped"
        else:
            self.stage = "reused" if result.reused_from else result.state
        self.result = result
        self.submission = None

    def failed(self, failure: PredictionFailed, *, credits_used: int | None = None) -> ItemResult:
        """The result of this item failed by ``failure``."""
        return ItemResult.failed(self.item, self.key, self.submission, failure, self.flags, attempts=self.attempt,
                                 credits_used=credits_used)

    def fail(self, exc: BaseException, *, name: str | None = None) -> None:
        """End the item failed by ``exc`` (outside a prediction: not written to the archive)."""
        self.end(self.failed(PredictionFailed(name or type(exc).__name__, str(exc) or repr(exc))))

    def report(self) -> ItemReport:
        """The report entry, derived from how the item ended."""
        if self.result is None:
            raise ValueError(f"{self.label} has not ended ({self.stage})")
        note = self.reason if self.earlier else "; ".join(self.notes)
        return ItemReport.of(self.result, note=note, earlier=self.earlier)


# -- plan -----------------------------------------------------------------------------------------

async def plan(archive: Archive, item: Item, *, force: bool = False, max_resubmits: int = 2,
               reuse: bool = True) -> ItemState:
    """Skip what is archived, resume what was submitted, reuse what another collection archived
    for the same key (``reuse``), submit the rest: from the archive alone, for the item's current
    take (:mod:`tryon.takes`). A failure that retrying cannot fix stays failed (resubmitting would
    pay for the same answer); ``force`` re-does any item on purpose, never reusing."""
    item = await current_take(archive, item)
    key = await item_key(item)
    if force:
        return ItemState(item, key, "planned", reason="forced")
    result = await archive.read_result(item, key)
    if result is not None and result.state == "archived":
        return ItemState(item, key, "skipped", reason="already archived", result=result)
    pending = await archive.read_pending(item, key) if result is None else None
    if pending is not None and (submission := pending.current) is not None:
        return ItemState(item, key, "submitted", reason=f"polling prediction {submission.prediction_id}",
                         attempt=pending.attempts, submission=submission, flags=pending.flags, reusable=reuse)
    refused = None
    if reuse:
        try:
            entry = await archive.read_index(key)
        except NotReusable as exc:
            entry, refused = None, str(exc)
        if entry is not None:
            return ItemState(item, key, "reuse", reason=f"outputs of {entry.folder}", source=entry, reusable=True,
                             attempt=result.attempts if result else 0)
    common = dict(reusable=reuse, flags=(pending.flags if pending else Flags()) | Flags(reuse_refused=refused))
    if result is not None:
        retryable = result.error_name is not None and PredictionFailed(result.error_name, "").retryable
        if not retryable or result.attempts > max_resubmits:
            return ItemState(item, key, "failed", reason="failed before; not resubmitted (use force)", result=result)
        return ItemState(item, key, "planned", reason="retryable failure before", attempt=result.attempts, **common)
    if pending is None:
        return ItemState(item, key, "planned", **common)
    return ItemState(item, key, "planned", reason="ambiguous submission before", attempt=pending.attempts, **common)


# -- run ------------------------------------------------------------------------------------------

async def run(runtime: Runtime, state: ItemState) -> ItemReport:
    """Take an active item to its end, archived (or reused), failed with its reason or left for the
    budget, and return its report entry. Failed predictions end the item; errors of our own (the
    archive, the network) are raised with the state left where it stands, so a repeat goes on from
    there. An item whose life began ahead of this call (:func:`tryon.batch.begin`) is awaited."""
    begun = runtime.begun.pop(state, None)
    return await (begun if begun is not None else live(runtime, state))


async def live(runtime: Runtime, state: ItemState) -> ItemReport:
    """The life itself (:func:`run`)."""
    paying: asyncio.Future | None = None
    try:
        while state.active:
            if state.stage == "reuse":
                await _reuse(runtime, state)
                continue
            if state.reusable and paying is None:
                paying, entry = await runtime.process.pay_or_wait((runtime.archive.url, state.key))
                if entry is not None:  # another item of this process paid for the key meanwhile
                    state.stage, state.source, state.reason = "reuse", entry, f"outputs of {entry.folder}"
                    continue
            if state.submission is None:
                slot = await _submit(runtime, state)
                if slot is None:
                    continue
            else:  # resumed, or repeated: the prediction may still run on the server, in one of its slots
                slot = await runtime.traffic.occupied_slot()  # None while draining: polled all the same
            await _wait_and_archive(runtime, state, slot)
    finally:
        if paying is not None:  # what it archived, to the items waiting for the key (None: the next one pays)
            entry = runtime.archive.index_entry(state.result) if state.stage == "archived" and state.result else None
            runtime.process.paid((runtime.archive.url, state.key), paying, entry)
        if runtime.webhooks is not None and not state.active:
            runtime.webhooks.forget(state.label)
    return state.report()


# -- reuse ----------------------------------------------------------------------------------------

async def _reuse(runtime: Runtime, state: ItemState) -> None:
    """Copy every output of the index entry's item into this item's folder, verify each by size
    and sha256, and write ``result.json`` marked reused (0 credits). An entry that does not verify
    is set aside: the item is paid for, and its report says why."""
    entry, archive = state.source, runtime.archive
    assert entry is not None
    try:
        await archive.check_source(entry)
        outputs = [await archive.copy_output(entry, output, state.item) for output in entry.outputs]
    except NotReusable as exc:
        state.flag(reuse_refused=str(exc))
        state.notes.append(f"not reused: {exc}; paid for")
        state.source, state.stage = None, "planned"
        return
    result = ItemResult.reused(state.item, state.key, entry, outputs)
    state.notes.append(f"reused from {entry.folder}")
    state.end(await archive.write_result(state.item, result))


# -- submit, wait, archive ------------------------------------------------------------------------

async def _submit(runtime: Runtime, state: ItemState) -> Slot | None:
    """Take an in-flight slot, send ``POST /v1/run`` once and record the prediction id durably;
    the slot, which the prediction now occupies, is returned (None after an ambiguous answer).

    The images are encoded before the slot is taken, so a freed slot is reused at once; the slot
    is taken here rather than before the task starts, so a task run's start-up is paid while
    waiting for one. After an ambiguous answer the slot stays taken (a phantom) for as long as the
    prediction the server may have created would run; after any other error it is freed.

    With webhooks, the submission is registered with the inbox before it is sent and carries its
    callback URL. After an ambiguous answer the item waits (up to a generous prediction's duration)
    for a webhook naming that attempt: if one comes, the prediction it names is the one this
    attempt created, and the item waits on it (confirmed by a status call) instead of paying again.
    """
    item, hooks = state.item, runtime.webhooks
    request: RunRequest = await runtime.client.prepare_run(item.model_name, item.inputs, base_dir=item.base_dir)
    slot = await runtime.traffic.acquire_slot()  # held until the prediction ends
    if (reservation := runtime.budget.admit(item.credits)) is None:  # held until the prediction's end is known
        runtime.traffic.release_slot(slot)
        return state.unfund(f"left for the budget: {runtime.budget.line()}")
    state.attempt += 1
    submitted_at = utcnow()
    webhook_url = None
    if hooks is not None:
        hooks.expect(state.label, state.attempt, lambda delivery: runtime.traffic.hint(delivery.prediction_id))
        webhook_url = hooks.url_for(state.label, state.attempt)
    try:
        prediction_id = await runtime.client.start(request, webhook_url=webhook_url)
    except AmbiguousSubmission as exc:
        runtime.traffic.hold_phantom(item.model_name, item.mode, slot=slot)
        await _record(runtime.archive.record_ambiguous(item, state.key, attempt=state.attempt),
                      f"{item.label}: could not record the ambiguous submission")
        state.notes.append(f"attempt {state.attempt}: {exc}")
        if hooks is not None:
            profile = (item.model_name, item.mode)
            delivery = await hooks.wait(state.label, state.attempt, runtime.traffic.latency.expected_duration(profile))
            if delivery is not None:
                runtime.budget.bind(reservation, delivery.prediction_id)
                state.flag(recovered_ambiguous=True)
                state.notes.append(f"attempt {state.attempt}: prediction {delivery.prediction_id} recovered by its "
                                   "webhook; not submitted again")
                return await _submitted(runtime, state, delivery.prediction_id, submitted_at, slot, recovered=True)
        # The server may have created (and will bill) a prediction whose id we never got.
        state.flag(possible_duplicate_charge=True)
        if not (runtime.resubmit_ambiguous and state.attempt <= runtime.max_resubmits):
            state.fail(exc, name="AmbiguousSubmission")
        return None
    except BaseException as exc:
        runtime.traffic.release_slot(slot)
        if isinstance(exc, FashnError):  # an answer, or a failure before sending: no prediction was created
            runtime.budget.release(reservation)
        raise
    runtime.budget.bind(reservation, prediction_id)
    if hooks is not None:
        hooks.bind(state.label, state.attempt, prediction_id)
    return await _submitted(runtime, state, prediction_id, submitted_at, slot)


async def _submitted(runtime: Runtime, state: ItemState, prediction_id: str, submitted_at: dt.datetime, slot: Slot,
                     *, recovered: bool = False) -> Slot:
    # The prediction exists (and will be billed) whether or not its id is recorded: never abandon
    # it. Only a kill before its result.json is written can lose an id the archive refused.
    # After a recovered ambiguous answer the state's flags are the record's: no unknown prediction.
    submission = SubmissionRecord(prediction_id=prediction_id, submitted_at=submitted_at, attempt=state.attempt)
    await _record(runtime.archive.record_pending(state.item, state.key, submission,
                                                 flags=state.flags if recovered else None, owner=runtime.owner),
                  f"{state.label}: prediction {prediction_id} is running but its id could not be recorded; "
                  "archiving it anyway")
    state.submission, state.pushed, state.stage = submission, runtime.webhooks is not None, "submitted"
    return slot


async def _record(write, what: str) -> None:
    try:
        await write
    except ArchiveError as exc:
        logger.warning("%s (%s)", what, exc)


async def _wait_and_archive(runtime: Runtime, state: ItemState, slot: Slot | None) -> None:
    """Wait for the prediction's end (frees ``slot`` the moment it comes); archive its outputs, or
    end the item failed, or put it back to ``planned`` when submitting again can help."""
    submission = state.submission
    assert submission is not None
    try:
        prediction = await _wait(runtime, state, slot)
        runtime.budget.settle(prediction)
    except NotFound:
        if state.forgotten:
            raise
        # The provider no longer tracks it: submit once more, and say so in the report.
        state.forgotten = True
        state.flag(resubmitted_after_404=True)
        state.resubmit(f"prediction {submission.prediction_id} unknown to the provider (404); submitted again")
        return
    if prediction.status == "completed":
        try:
            state.end(await _archive(runtime, state, prediction))
        except OutputExpired as exc:  # final: the provider no longer has the images
            await _record_failure(runtime, state, state.failed(PredictionFailed("OutputExpired", str(exc)),
                                                               credits_used=prediction.credits_used))
        return
    failure = _failure_of(prediction)
    if failure.retryable and state.attempt <= runtime.max_resubmits:
        state.resubmit(f"attempt {state.attempt}: {failure.name}: {failure.message}; submitted again")
        return
    await _record_failure(runtime, state, state.failed(failure))


async def _wait(runtime: Runtime, state: ItemState, slot: Slot | None) -> Prediction:
    """The terminal answer, polled through the key's shared scheduler (with webhooks: confirmed
    when its webhook comes, polled late as a fallback)."""
    item, submission, hooks = state.item, state.submission, runtime.webhooks
    assert submission is not None
    elapsed = max(0.0, (utcnow() - submission.submitted_at).total_seconds())
    hinted = state.pushed and hooks is not None and hooks.delivered(state.label, submission.attempt) is not None
    return await runtime.traffic.wait(
        submission.prediction_id, model_name=item.model_name, mode=item.mode, poll=runtime.client.status,
        submitted_at=runtime.traffic.clock.now() - elapsed, timeout=runtime.prediction_timeout, slot=slot,
        pushed=state.pushed, hinted=hinted,
    )


async def _archive(runtime: Runtime, state: ItemState, prediction: Prediction) -> ItemResult:
    """Copy every output into the archive, verify it, and write ``result.json`` last, with the
    item's flags in that one write (a second could fail or be killed, losing a possible duplicate
    charge)."""
    item = state.item
    if not prediction.output:
        raise OutputExpired(f"prediction {prediction.id} completed with no output")
    ext = "jpg" if item.output_format == "jpeg" else "png"
    outputs, data = [], []
    for index, url in enumerate(prediction.output):  # one at a time: each verified before the next
        data.append((f"output_{index}.{ext}", await runtime.client.download(url)))
        outputs.append(await runtime.archive.write_output(item, index, data[-1][1], ext))
    if (reason := await asyncio.to_thread(review_reason, data, item.model_name, item.inputs)) is not None:
        state.flag(needs_review=reason)  # kept in result.json, the report, the gallery and the artifact
    result = ItemResult.archived(item, state.key, state.submission, prediction, outputs, state.flags)
    result = await runtime.archive.write_result(item, result)
    # After result.json, so an entry never names an item being written; another collection's
    # items with the same key reuse these outputs rather than paying again.
    await _record(runtime.archive.write_index(result), f"{item.label}: could not index its outputs")
    return result


async def _record_failure(runtime: Runtime, state: ItemState, result: ItemResult) -> None:
    """End the item failed: write its ``result.json`` and keep the prediction's own reason.

    An archive that refuses the record does not change why the item failed: the report keeps the
    reason and says the record may be missing. The next run then finds the pending record and
    polls the same prediction again rather than paying for a new one.
    """
    try:
        result = await runtime.archive.write_result(state.item, result)
    except ArchiveError as exc:
        state.notes.append(f"its result.json could not be written: {exc}")
    state.end(result)


def _failure_of(prediction: Prediction) -> PredictionFailed:
    error = prediction.error
    name = error.name if error else prediction.status
    message = error.message if error else f"prediction ended {prediction.status}"
    return PredictionFailed(name, message, prediction_id=prediction.id)
