"""The per-collection flow: a collection goes in; every output ends archived once, or its item
ends failed with the reason in the report.

Read top to bottom: load and validate the spec, check the archive is writable and the balance
covers the run (all before anything is spent), run every item through submit → wait →
archive under the key's shared traffic control, then write the report, gallery and artifacts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows import artifacts
from flows.config import resolve_archive, resolve_settings
from flows.tasks import archive_outputs, submit_prediction, wait_for_prediction
from tryon import progress
from tryon.archive import ItemResult
from tryon.collection import CollectionSpec, Item, item_key, iter_items
from tryon.errors import AmbiguousSubmission, NotFound, OutOfCredits, OutputExpired, UnauthorizedAccess
from tryon.planning import load_and_validate, preview, require_balance
from tryon.report import ItemReport, RunReport
from tryon.runtime import open_runtime
from tryon.steps import Runtime, Submission, failure_of, plan_item, resumed


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
    flags = {"resubmitted_after_404": False, "possible_duplicate_charge": False}

    def note() -> str:
        return "; ".join(notes)

    while True:
        slot = await runtime.traffic.acquire_slot()  # held until the prediction ends
        if submission is None:
            attempt += 1
            try:
                submission = await submit_prediction(runtime, item, key, attempt, slot)
            except AmbiguousSubmission as exc:
                # The server may have created (and will bill) a prediction whose id we never got.
                flags["possible_duplicate_charge"] = True
                notes.append(f"attempt {attempt}: {exc}")
                if runtime.resubmit_ambiguous and attempt <= runtime.max_resubmits:
                    continue
                return ItemReport.failed(item, key, "AmbiguousSubmission", str(exc), attempts=attempt,
                                         possible_duplicate_charge=True, note=note())
            except BaseException:
                runtime.traffic.release_slot(slot)
                raise
        try:
            prediction = await wait_for_prediction(runtime, item, submission, slot)
        except NotFound:
            if flags["resubmitted_after_404"]:
                raise
            # The provider no longer tracks it: submit once more, and say so in the report.
            flags["resubmitted_after_404"] = True
            notes.append(f"prediction {submission.prediction_id} unknown to the provider (404); submitted again")
            submission = None
            continue
        if prediction.status == "completed":
            try:
                result = await archive_outputs(runtime, item, key, submission, prediction)
            except OutputExpired as exc:
                result = ItemResult.failed(item, key, submission, exc, credits_used=prediction.credits_used, **flags)
                await runtime.archive.write_result(item, result)
                return ItemReport.from_result(item, result, note=note())
            if any(flags.values()):
                result = await runtime.archive.write_result(item, result.model_copy(update=flags))
            return ItemReport.from_result(item, result, note=note())
        failure = failure_of(prediction)
        if failure.retryable and attempt <= runtime.max_resubmits:
            notes.append(f"attempt {attempt}: {failure.name}: {failure.message}; submitted again")
            submission = None
            continue
        result = ItemResult.failed(item, key, submission, failure, **flags)
        await runtime.archive.write_result(item, result)
        return ItemReport.from_result(item, result, note=note())


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
                    runtime.traffic.stop_submissions(str(exc))
                    entry = ItemReport.failed(item, None, "UnauthorizedAccess", str(exc))
                except Exception as exc:  # this item fails with its reason; the others go on
                    entry = ItemReport.failed(item, None, type(exc).__name__, str(exc) or repr(exc))
            report.add(entry)
            await progress.publish(report)

    await asyncio.gather(*(worker() for _ in range(runtime.workers)))


@flow(name="tryon-collection",
      description="Try on every garment × model pair of a collection and archive each output once.")
async def tryon_collection(
    spec: str,
    archive: str | None = None,
    model_name: str | None = None,
    force: bool = False,
    credentials_block: str | None = None,
    archive_block: str | None = None,
) -> dict[str, Any]:
    """Run one collection.

    Args:
        spec: Path or fsspec URL of the collection spec (YAML, JSON or CSV).
        archive: Archive root URL; default: the archive block, then TRYON_ARCHIVE_URL, then ./archive.
        model_name: Use this model instead of the spec's (re-render a catalogue with a newer model).
        force: Submit again items that are already archived (costs credits).
        credentials_block: Name of a FashnCredentials block; default: the FASHN_* settings.
        archive_block: Name of a TryonArchive block.
    """
    logger = get_run_logger()
    collection = await load_and_validate(spec, model_name)
    settings = await resolve_settings(credentials_block)
    store = await resolve_archive(archive, archive_block)
    await store.check_writable(collection.name)

    async with open_runtime(settings, store) as runtime:
        planned = await preview(collection, store, force=force, max_resubmits=runtime.max_resubmits)
        if planned.credits_needed:
            require_balance(await runtime.client.credits(), planned.credits_needed)
        logger.info("%s: %s", collection.name, planned.line())
        report = RunReport.start(collection.name, collection.model_name)
        tracker = await artifacts.ProgressTracker.create(collection.name, total=sum(planned.actions.values()))
        with progress.subscribe(tracker.update):
            await run_items(runtime, collection, report, force=force)
        await tracker.update(report, force=True)
        report.finish()
        location = await store.write_report(collection.name, collection.model_name, report)
    await artifacts.publish_results(report, location)
    logger.info("%s; report at %s", report.summary_line(), location)
    if report.totals.get("failed"):
        return Failed(message=f"{report.summary_line()}; report at {location}")  # type: ignore[return-value]
    return report.totals_dict(location)
