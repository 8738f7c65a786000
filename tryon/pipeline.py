"""One item from plan to archive, without Prefect: what comes next at every turn (resume,
resubmit after a retryable failure or a 404).

:func:`begin` plans from the archive (no API call); :func:`run` does the rest and may be called
again after a failure (``flows.tasks`` retries it as one Prefect task): where the item stands (the
prediction it waits on, its attempts, flags and notes) stays in the runtime until it ends, so a
repeat polls and archives the prediction this run started instead of paying for another, even
when its id never reached the archive and even with ``force``. Across runs the archive's records
do the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from tryon import steps
from tryon.archive import ArchiveError, ItemResult
from tryon.collection import Item, item_key
from tryon.errors import AmbiguousSubmission, NotFound, OutputExpired
from tryon.models import Prediction
from tryon.report import ItemReport
from tryon.steps import InProgress, Runtime, Submission, failure_of, plan_item, prepare, resumed
from tryon.traffic import Slot


@dataclass(frozen=True)
class Collected:
    """How a prediction ended: its last answer, and the archived result when it completed."""

    prediction: Prediction
    result: ItemResult | None = None
    expired: OutputExpired | None = None


async def collect(runtime: Runtime, item: Item, key: str, submission: Submission, slot: Slot | None,
                  flags: dict[str, bool]) -> Collected:
    """Poll (through the key's shared scheduler) until the prediction ends; when it completed,
    download every output, write and verify it, then write result.json last, with ``flags`` (in
    that one write: a second could fail or be killed, losing a possible duplicate charge)."""
    prediction = await steps.wait(runtime, item, submission, slot)
    if prediction.status != "completed":
        return Collected(prediction)
    try:
        return Collected(prediction, await steps.archive(runtime, item, key, submission, prediction, flags))
    except OutputExpired as exc:  # final: the provider no longer has the images
        return Collected(prediction, expired=exc)


async def begin(runtime: Runtime, item: Item, *, force: bool) -> tuple[str, ItemReport | None]:
    """Plan the item from the archive alone (no API call): its key, and its report when there is
    nothing to do (archived, or failed for good); else None, and the item is in progress in
    ``runtime.in_progress`` until the caller removes it, after its last :func:`run`."""
    key = await item_key(item)
    plan = await plan_item(runtime.archive, item, key, force=force, max_resubmits=runtime.max_resubmits)
    if plan.action == "skip":
        return key, ItemReport.skipped(item, plan.result)
    if plan.action == "failed":
        return key, ItemReport.from_result(item, plan.result, note=plan.reason)
    duplicate = bool(plan.pending and plan.pending.possible_duplicate_charge)
    runtime.in_progress[key] = InProgress(
        resumed(plan.pending) if plan.action == "resume" else None, plan.attempts,
        {"resubmitted_after_404": False, "possible_duplicate_charge": duplicate},
        ["an earlier run got an ambiguous answer to a submission"] if duplicate else [])
    return key, None


async def run(runtime: Runtime, item: Item, key: str) -> ItemReport:
    """Take a begun item to its end: archived, or failed with its reason. Called again after a
    failure it goes on from where the item stands (the prediction it waits on), never paying
    twice for what this run started (so the item stays in ``runtime.in_progress``: the caller,
    which knows when the last attempt is over, removes it)."""
    state = runtime.in_progress[key]
    flags, notes = state.flags, state.notes

    def note() -> str:
        return "; ".join(notes)

    while True:
        if state.submission is None:
            # Encode the images before waiting for a slot, so a freed slot is reused at once.
            request = await prepare(runtime, item)
            state.attempt += 1
            try:
                state.submission, slot = await steps.submit(runtime, item, key, state.attempt, request)
            except AmbiguousSubmission as exc:
                # The server may have created (and will bill) a prediction whose id we never got.
                flags["possible_duplicate_charge"] = True
                notes.append(f"attempt {state.attempt}: {exc}")
                if runtime.resubmit_ambiguous and state.attempt <= runtime.max_resubmits:
                    continue
                return ItemReport.failed(item, key, "AmbiguousSubmission", str(exc), attempts=state.attempt,
                                         possible_duplicate_charge=True, note=note())
        else:  # resumed: the prediction may still run on the server, in one of its slots
            slot = await runtime.traffic.acquire_slot()
        submission = state.submission
        try:
            collected = await collect(runtime, item, key, submission, slot, dict(flags))
        except NotFound:
            if flags["resubmitted_after_404"]:
                raise
            # The provider no longer tracks it: submit once more, and say so in the report.
            flags["resubmitted_after_404"] = True
            notes.append(f"prediction {submission.prediction_id} unknown to the provider (404); submitted again")
            state.submission = None
            continue
        prediction = collected.prediction
        if collected.expired is not None:
            result = ItemResult.failed(item, key, submission, collected.expired,
                                       credits_used=prediction.credits_used, **flags)
            return await record_failure(runtime, item, result, notes)
        if collected.result is not None:
            return ItemReport.from_result(item, collected.result, note=note())
        failure = failure_of(prediction)
        if failure.retryable and state.attempt <= runtime.max_resubmits:
            notes.append(f"attempt {state.attempt}: {failure.name}: {failure.message}; submitted again")
            state.submission = None
            continue
        result = ItemResult.failed(item, key, submission, failure, **flags)
        return await record_failure(runtime, item, result, notes)


async def record_failure(runtime: Runtime, item: Item, result: ItemResult, notes: list[str]) -> ItemReport:
    """Write a failed item's ``result.json`` and report it with the prediction's own reason.

    An archive that refuses the record does not change why the item failed: the report keeps
    the reason and says the record may be missing. The next run finds this record (when the
    write landed before it failed) and leaves the item failed, or finds the pending record and
    polls the same prediction again rather than paying for a new one.
    """
    try:
        result = await runtime.archive.write_result(item, result)
    except ArchiveError as exc:
        notes.append(f"its result.json could not be written: {exc}")
    return ItemReport.from_result(item, result, note="; ".join(notes))
