"""The reconciler: finish what runs left pending, spending nothing.

A run that was killed, crashed or cancelled past its grace period leaves ``prediction.json``
records: predictions paid for, whose outputs are not archived. :func:`reconcile` finds every such
record whose owner holds no live lease (:mod:`tryon.lease`), polls its prediction through the
key's traffic controller like any other call, and archives the outputs through the same verified
path as a run (outputs written and read back, ``result.json`` last, then the index); a prediction
that failed, that the provider no longer knows or whose outputs expired is recorded failed with
that reason. It never submits. Each record is taken first (its owner becomes the reconciler's own
lease), so two reconcilers, or a run resuming the same item, leave each other's items alone; the
report of each collection it completed is updated.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tryon.archive import PENDING_FILE, RESULT_FILE, Archive, ArchiveError, ItemResult, PendingRecord, utcnow
from tryon.batch import save_report
from tryon.client import FashnClient
from tryon.errors import FashnError, NotFound, OutputExpired, PredictionFailed
from tryon.lease import RunLease, is_live
from tryon.models import Prediction
from tryon.report import ItemReport, RunReport, new_run_id
from tryon.spec.ids import LABEL_SEPARATOR
from tryon.spec.items import Item
from tryon.traffic import TrafficController


RECONCILER = "reconcile-"  # how a reconciler's lease is named


@dataclass
class Reconciled:
    """What one pass did, by item folder (relative to the archive root)."""

    recovered: list[str] = field(default_factory=list)  # archived now
    lost: dict[str, str] = field(default_factory=dict)  # folder: why (expired, unknown, failed)
    live: list[str] = field(default_factory=list)  # a live run owns it
    others: list[str] = field(default_factory=list)  # another reconciler took it
    unsubmitted: list[str] = field(default_factory=list)  # an ambiguous answer left no id to poll
    left: dict[str, str] = field(default_factory=dict)  # folder: why it is still pending (the next pass retries)

    def line(self) -> str:
        return (f"{len(self.recovered)} recovered, {len(self.lost)} lost, {len(self.live)} left to live runs, "
                f"{len(self.others)} to other reconcilers, "
                f"{len(self.left)} still pending, {len(self.unsubmitted)} without a prediction id; 0 submitted")

    def text(self) -> str:
        """The line, then every lost or still pending item with its reason."""
        lines = [self.line()]
        lines += [f"  lost {folder}: {why}" for folder, why in sorted(self.lost.items())]
        lines += [f"  still pending {folder}: {why}" for folder, why in sorted(self.left.items())]
        return "\n".join(lines) + "\n"


def _item(record: PendingRecord) -> Item:
    garment, _, model = record.label.partition(LABEL_SEPARATOR)
    return Item(collection=record.collection, model_name=record.model_name, garment_id=garment, model_id=model,
                inputs=record.inputs)


async def pending_folders(archive: Archive) -> list[str]:
    """Every item folder with a ``prediction.json`` and no ``result.json`` (one listing)."""
    paths = set(await archive.sizes())
    folders = {path.rsplit("/", 1)[0] for path in paths if path.endswith("/" + PENDING_FILE)}
    return sorted(folder for folder in folders if f"{folder}/{RESULT_FILE}" not in paths)


async def _take(archive: Archive, folder: str, owner: str, done: Reconciled) -> tuple[Item, PendingRecord] | None:
    """The record, now naming ``owner`` (read back), or None when it is not ours to finish."""
    record = await archive.read_pending_in(folder)
    if record is None:  # finished meanwhile
        return None
    if record.current is None:
        done.unsubmitted.append(folder)
        return None
    if record.owner != owner and await is_live(archive, record.owner):
        _left(done, folder, record.owner)
        return None
    item = _item(record)
    await archive.write_pending(item, record.model_copy(update={"owner": owner}))
    back = await archive.read_pending_in(folder)
    if back is None or back.owner != owner:
        _left(done, folder, back.owner if back is not None else None)
        return None
    return item, back


async def _finish(archive: Archive, client: FashnClient, traffic: TrafficController, item: Item,
                  record: PendingRecord, timeout: float) -> ItemResult | None:
    """Poll the record's prediction to its end and archive it, or record why it is lost; None when
    another taker named itself in the record meanwhile (a take is a write and a read-back, not a
    lock: this second look, one poll later, leaves the item to the last taker)."""
    submission = record.current
    assert submission is not None
    prediction_id = submission.prediction_id

    def failed(failure: PredictionFailed, credits_used: int | None = None) -> ItemResult:
        return ItemResult.failed(item, record.key, submission, failure, record.flags, attempts=record.attempts,
                                 credits_used=credits_used)

    elapsed = max(0.0, (utcnow() - submission.submitted_at).total_seconds())
    try:
        prediction: Prediction = await traffic.wait(
            prediction_id, model_name=item.model_name, mode=item.mode, poll=client.status, timeout=timeout,
            submitted_at=traffic.clock.now() - elapsed)
    except NotFound:
        if not await _still_ours(archive, item, record):
            return None
        return await archive.write_result(item, failed(PredictionFailed(
            "NotFound", f"the provider no longer knows prediction {prediction_id}", prediction_id=prediction_id)))
    if not await _still_ours(archive, item, record):
        return None
    if prediction.status != "completed":
        error = prediction.error
        return await archive.write_result(item, failed(PredictionFailed(
            error.name if error else prediction.status,
            error.message if error else f"prediction ended {prediction.status}", prediction_id=prediction_id)))
    try:
        if not prediction.output:
            raise OutputExpired(f"prediction {prediction_id} completed with no output")
        ext = "jpg" if item.output_format == "jpeg" else "png"
        outputs = [await archive.write_output(item, index, await client.download(url), ext)
                   for index, url in enumerate(prediction.output)]
    except OutputExpired as exc:
        return await archive.write_result(item, failed(PredictionFailed("OutputExpired", str(exc)),
                                                       prediction.credits_used))
    result = await archive.write_result(item, ItemResult.archived(item, record.key, submission, prediction, outputs,
                                                                  record.flags))
    try:
        await archive.write_index(result)
    except ArchiveError:  # the outputs are archived; only their reuse by other collections waits
        pass
    return result


async def _still_ours(archive: Archive, item: Item, record: PendingRecord) -> bool:
    now = await archive.read_pending(item, record.key)
    return now is not None and now.owner == record.owner


def _left(done: Reconciled, folder: str, owner: str | None) -> None:
    (done.others if owner is not None and owner.startswith(RECONCILER) else done.live).append(folder)


async def update_reports(archive: Archive, folders: list[str]) -> None:
    """Move the entry of each item of ``folders`` that a reconciler finished (its ``result.json``
    is there) in its collection's latest report (a new report when the collection has none) to how
    it ended. Read from the archive, so two reconcilers at once each write every item either
    finished."""
    by_folder: dict[tuple[str, str], list[ItemResult]] = {}
    for folder in folders:
        if (result := await archive.read_result_in(folder)) is not None:
            by_folder.setdefault((result.collection, result.model_name), []).append(result)
    for (collection, model_name), finished in by_folder.items():
        data = await archive.read_report(collection, model_name)
        report = RunReport.model_validate(data) if data is not None else RunReport.start(collection, model_name)
        for result in finished:
            report.add(ItemReport.of(result, note=f"finished by the reconciler from prediction {result.prediction_id}"))
        await save_report(archive, report)


async def reconcile(archive: Archive, client: FashnClient, traffic: TrafficController, *, lease_term: float,
                    prediction_timeout: float, workers: int | None = None) -> Reconciled:
    """One pass over the archive (see the module's docstring); ``workers`` items at once."""
    done = Reconciled()
    folders = await pending_folders(archive)
    limit = asyncio.Semaphore(workers or 2 * traffic.limits.in_flight + 2)
    async with RunLease(archive, f"{RECONCILER}{new_run_id()}", lease_term) as lease:

        async def one(folder: str) -> None:
            async with limit:
                taken = await _take(archive, folder, lease.owner, done)
                if taken is None:
                    return
                try:
                    result = await _finish(archive, client, traffic, *taken, timeout=prediction_timeout)
                except FashnError as exc:  # left pending: the next pass tries again
                    done.left[folder] = str(exc)
                    return
                if result is None:  # a later taker finishes it
                    done.others.append(folder)
                    return
                if result.state == "archived":
                    done.recovered.append(folder)
                else:
                    done.lost[folder] = f"{result.error_name}: {result.error_message}"

        await asyncio.gather(*(one(folder) for folder in folders))
    await update_reports(archive, [*done.recovered, *done.lost, *done.others])
    return done
