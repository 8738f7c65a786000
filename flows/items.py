"""One item from plan to archive, and every item of a collection with bounded concurrency.

Composition only: the Prefect tasks in :mod:`flows.tasks` do the work; this decides what comes
next (resume, resubmit after a retryable failure or a 404, stop after a wrong key).
"""

from __future__ import annotations

import asyncio

from flows.tasks import collect_outputs, submit_prediction
from tryon import progress
from tryon.archive import ArchiveError, ItemResult
from tryon.collection import CollectionSpec, Item, item_key, iter_items
from tryon.errors import AmbiguousSubmission, NotFound, UnauthorizedAccess
from tryon.report import ItemReport, RunReport
from tryon.steps import Runtime, Submission, failure_of, plan_item, prepare, resumed


async def run_item(runtime: Runtime, item: Item, *, force: bool) -> ItemReport:
    """One item from plan to archive; returns its report entry."""
    key = await item_key(item)
    plan = await plan_item(runtime.archive, item, key, force=force, max_resubmits=runtime.max_resubmits)
    if plan.action == "skip":
        return ItemReport.skipped(item, plan.result)
    if plan.action == "failed":
        return ItemReport.from_result(item, plan.result, note=plan.reason)

    submission: Submission | None = resumed(plan.pending) if plan.action == "resume" else None
    attempt = plan.attempts
    notes: list[str] = []
    flags = {"resubmitted_after_404": False,
             "possible_duplicate_charge": bool(plan.pending and plan.pending.possible_duplicate_charge)}
    if flags["possible_duplicate_charge"]:
        notes.append("an earlier run got an ambiguous answer to a submission")

    def note() -> str:
        return "; ".join(notes)

    while True:
        if submission is None:
            # Encode the images before waiting for a slot, so a freed slot is reused at once.
            request = await prepare(runtime, item)
            attempt += 1
            try:
                submission, slot = await submit_prediction(runtime, item, key, attempt, request)
            except AmbiguousSubmission as exc:
                # The server may have created (and will bill) a prediction whose id we never got.
                flags["possible_duplicate_charge"] = True
                notes.append(f"attempt {attempt}: {exc}")
                if runtime.resubmit_ambiguous and attempt <= runtime.max_resubmits:
                    continue
                return ItemReport.failed(item, key, "AmbiguousSubmission", str(exc), attempts=attempt,
                                         possible_duplicate_charge=True, note=note())
        else:  # resumed: the recorded prediction may still run on the server, in one of its slots
            slot = await runtime.traffic.acquire_slot()
        try:
            collected = await collect_outputs(runtime, item, key, submission, slot, dict(flags))
        except NotFound:
            if flags["resubmitted_after_404"]:
                raise
            # The provider no longer tracks it: submit once more, and say so in the report.
            flags["resubmitted_after_404"] = True
            notes.append(f"prediction {submission.prediction_id} unknown to the provider (404); submitted again")
            submission = None
            continue
        prediction = collected.prediction
        if collected.expired is not None:
            result = ItemResult.failed(item, key, submission, collected.expired,
                                       credits_used=prediction.credits_used, **flags)
            return await record_failure(runtime, item, result, notes)
        if collected.result is not None:
            return ItemReport.from_result(item, collected.result, note=note())
        failure = failure_of(prediction)
        if failure.retryable and attempt <= runtime.max_resubmits:
            notes.append(f"attempt {attempt}: {failure.name}: {failure.message}; submitted again")
            submission = None
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


async def run_items(runtime: Runtime, collection: CollectionSpec, report: RunReport, *, force: bool) -> None:
    """Every item, ``runtime.workers`` at a time. Items are drawn lazily from one shared
    generator, so memory does not grow with the collection; none is dropped: each ends in the
    report, archived, skipped or failed with its reason."""
    items = iter_items(collection)
    stopped: list[UnauthorizedAccess] = []

    async def worker() -> None:
        for item in items:
            if stopped:  # a wrong key: no further calls at all
                entry = ItemReport.failed(item, None, "UnauthorizedAccess", f"not attempted: {stopped[0]}")
            else:
                try:
                    entry = await run_item(runtime, item, force=force)
                except UnauthorizedAccess as exc:
                    stopped.append(exc)
                    runtime.traffic.stop_submissions(str(exc), UnauthorizedAccess)
                    entry = ItemReport.failed(item, None, "UnauthorizedAccess", str(exc))
                except Exception as exc:  # this item fails with its reason; the others go on
                    entry = ItemReport.failed(item, None, type(exc).__name__, str(exc) or repr(exc))
            report.add(entry)
            await progress.publish(report)

    await asyncio.gather(*(worker() for _ in range(runtime.workers)))
