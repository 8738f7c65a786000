"""An item's folder: its pending record, its outputs and its result.

``prediction.json`` is written right after ``/v1/run`` answers; every output is written and read
back (size, sha256); ``result.json`` is written last, so a reader never sees half an item. Both
records are only trusted under the item key they were written for (the caller hands it in), so
changed inputs or images make a new prediction rather than reusing outputs of other inputs.
"""

from __future__ import annotations

import re

from tryon.archive.records import Flags, ItemResult, OutputRecord, PendingRecord, SubmissionRecord, utcnow
from tryon.archive.store import PENDING_FILE, RESULT_FILE, ArchiveError, Store, dumps
from tryon.images import sanitize_inputs
from tryon.spec.items import Item

_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")
OUTPUT_RE = re.compile(r"^output_\d+\.[a-z0-9]{1,8}$")


class ItemFiles(Store):
    """The files of each item's folder, ``<root>/<collection>/<model_name>/<garment>__<model>/``."""

    async def read_result(self, item: Item, key: str) -> ItemResult | None:
        """The item's ``result.json`` if it was written for ``key`` (the same inputs and images)."""
        result = await self._read_model(self._join(self.item_dir(item), RESULT_FILE), ItemResult)
        return result if result is not None and result.key == key else None

    async def read_result_in(self, folder: str) -> ItemResult | None:
        """The ``result.json`` of an item folder given relative to the root, or None."""
        return await self._read_model(self._join(self.root, *folder.split("/"), RESULT_FILE), ItemResult)

    async def read_pending(self, item: Item, key: str) -> PendingRecord | None:
        """The item's ``prediction.json`` if it was written for ``key``."""
        pending = await self._read_model(self._join(self.item_dir(item), PENDING_FILE), PendingRecord)
        return pending if pending is not None and pending.key == key else None

    async def _write_pending(self, item: Item, record: PendingRecord) -> PendingRecord:
        # A result.json already there (another key, a failure, or a forced redo) is removed, so no
        # reader ever pairs it with the outputs this item's prediction will write.
        folder = self.item_dir(item)
        await self._write(self._join(folder, PENDING_FILE), dumps(record))
        await self._delete(self._join(folder, RESULT_FILE))
        return record

    async def read_pending_in(self, folder: str) -> PendingRecord | None:
        """The ``prediction.json`` of an item folder given relative to the root, or None."""
        return await self._read_model(self._join(self.root, *folder.split("/"), PENDING_FILE), PendingRecord)

    async def record_pending(self, item: Item, key: str, submission: SubmissionRecord, *,
                             flags: Flags | None = None, owner: str | None = None) -> PendingRecord:
        """Write the submission durably (call right after ``/v1/run`` answers, before polling),
        after the same key's earlier ones.

        ``flags`` replace the record's (None: kept): an ambiguous answer whose prediction a webhook
        then named no longer leaves one without an id, and the item's flags say so. ``owner``: the
        lease of the run that waits on it (:mod:`tryon.lease`).
        """
        previous = await self.read_pending(item, key)
        record = PendingRecord(
            key=key, collection=item.collection, model_name=item.model_name, label=item.label,
            submissions=[*(previous.submissions if previous else []), submission], attempts=submission.attempt,
            flags=flags if flags is not None else previous.flags if previous else Flags(), owner=owner,
            inputs=sanitize_inputs(item.inputs))
        return await self._write_pending(item, record)

    async def write_pending(self, item: Item, record: PendingRecord) -> None:
        """Replace the item's ``prediction.json`` with ``record`` (naming a new owner)."""
        await self._write(self._join(self.item_dir(item), PENDING_FILE), dumps(record))

    async def record_ambiguous(self, item: Item, key: str, *, attempt: int) -> PendingRecord:
        """Write durably that submission ``attempt`` got an ambiguous answer: a prediction whose id
        we never got may exist and be billed. A run killed before the item ends still reports the
        item as a possible duplicate charge, and counts the attempt."""
        previous = await self.read_pending(item, key)
        if previous is None:
            previous = PendingRecord(key=key, collection=item.collection, model_name=item.model_name, label=item.label)
        return await self._write_pending(item, previous.model_copy(update={
            "flags": previous.flags | Flags(possible_duplicate_charge=True),
            "attempts": max(previous.attempts, attempt), "updated_at": utcnow()}))

    async def write_output(self, item: Item, index: int, data: bytes, ext: str) -> OutputRecord:
        """Write one output, read it back and compare size and sha256 (:class:`ArchiveError` if not equal)."""
        ext = ext.lower().lstrip(".")
        if not _EXT_RE.match(ext):
            raise ArchiveError(f"output extension {ext!r} is not allowed")
        if index < 0:
            raise ArchiveError(f"output index {index} is negative")
        name = f"output_{index}.{ext}"
        path = self._join(self.item_dir(item), name)
        digest = await self.write_verified(path, data)
        return OutputRecord(index=index, name=name, path=self.relative(path), url=self.location(path),
                            size=len(data), sha256=digest)

    async def write_result(self, item: Item, result: ItemResult) -> ItemResult:
        """Write ``result.json`` last, with the pending record's prediction ids, attempts and flags,
        then tidy up: the pending record and, for an archived item, outputs of earlier predictions
        not listed."""
        folder = self.item_dir(item)
        pending = await self.read_pending(item, result.key)
        if pending is not None:
            history = [p for p in pending.prediction_ids if p not in result.prediction_ids]
            result = result.model_copy(update={
                "prediction_ids": [*history, *result.prediction_ids],
                "attempts": max(result.attempts, pending.attempts), "flags": result.flags | pending.flags})
        await self._write(self._join(folder, RESULT_FILE), dumps(result))
        if result.state == "archived":
            keep = {o.name for o in result.outputs}
            for name in await self._list(folder):
                if OUTPUT_RE.match(name) and name not in keep:
                    await self._delete(self._join(folder, name))
        await self._delete(self._join(folder, PENDING_FILE))
        return result
