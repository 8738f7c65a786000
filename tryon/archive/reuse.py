"""The reuse index: where the outputs of each item key are archived, content-addressed under
``<root>/_index/<key[:2]>/<key>.json``, and the verified copy of those outputs into another item's
folder (for 0 credits)."""

from __future__ import annotations

import asyncio
import re

from pydantic import ValidationError

from tryon.archive.items import OUTPUT_RE
from tryon.archive.records import IndexedOutput, IndexEntry, ItemResult, OutputRecord
from tryon.archive.store import INDEX_DIR, RESULT_FILE, ArchiveError, Store, dumps, mismatch
from tryon.spec.ids import LABEL_SEPARATOR, id_problem
from tryon.spec.items import Item

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class NotReusable(ArchiveError):
    """An index entry whose outputs cannot be reused: missing, or not verified by size and sha256."""


def _is_label(value: str) -> bool:
    garment, sep, model = value.partition(LABEL_SEPARATOR)
    return bool(sep) and id_problem(garment) is None and id_problem(model) is None


class ReuseIndex(Store):
    """Index entries, written after an item's ``result.json`` and trusted only once a copy of every
    output verifies against them."""

    def index_path(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise ArchiveError(f"{key!r} is not an item key (64 hex digits)")
        return self._join(self.root, INDEX_DIR, key[:2], f"{key}.json")

    def index_entry(self, result: ItemResult) -> IndexEntry:
        """The entry naming ``result``'s item folder as where its key's outputs are."""
        folder = self._join(self.model_dir(result.collection, result.model_name), result.label)
        return IndexEntry(key=result.key, collection=result.collection, model_name=result.model_name,
                          label=result.label, folder=self.relative(folder), prediction_id=result.prediction_id,
                          outputs=[IndexedOutput(name=o.name, size=o.size, sha256=o.sha256) for o in result.outputs])

    async def write_index(self, result: ItemResult) -> IndexEntry:
        """Index an archived item's outputs under its key (call after its ``result.json``)."""
        entry = self.index_entry(result)
        await self._write(self.index_path(result.key), dumps(entry))
        return entry

    async def read_index(self, key: str) -> IndexEntry | None:
        """The key's entry, or None; :class:`NotReusable` if it cannot be read as one."""
        data = await self._read(self.index_path(key))
        if data is None:
            return None
        try:
            entry = IndexEntry.model_validate_json(data)
        except ValidationError as exc:
            raise NotReusable(f"index entry {self.location(self.index_path(key))} is not valid "
                              f"({exc.error_count()} errors)") from exc
        if entry.key != key:
            raise NotReusable(f"index entry {self.location(self.index_path(key))} names another key")
        return entry

    def _source_dir(self, entry: IndexEntry) -> str:
        parts = entry.folder.split("/")
        earlier_take = len(parts) == 5 and parts[3] == "takes" and parts[4].isdigit()  # a rejected take's folder
        if (len(parts) != 3 and not earlier_take) or id_problem(parts[0]) or id_problem(parts[1]) \
                or not _is_label(parts[2]):
            raise NotReusable(f"index entry names an unsafe folder {entry.folder!r}")
        return self._join(self.root, *parts)

    async def check_source(self, entry: IndexEntry) -> None:
        """The entry's item still holds the key, archived, with the same outputs (its ``result.json``);
        :class:`NotReusable` if not."""
        data = await self._read(self._join(self._source_dir(entry), RESULT_FILE))
        try:
            result = None if data is None else ItemResult.model_validate_json(data)
        except ValidationError:
            result = None
        if result is None or result.key != entry.key or result.state != "archived":
            raise NotReusable(f"{entry.folder} no longer holds these outputs")
        listed = {(o.name, o.size, o.sha256) for o in result.outputs}
        if listed != {(o.name, o.size, o.sha256) for o in entry.outputs}:
            raise NotReusable(f"the index entry does not match {entry.folder}/{RESULT_FILE}")

    async def copy_output(self, entry: IndexEntry, output: IndexedOutput, item: Item) -> OutputRecord:
        """Copy one output of ``entry``'s item into ``item``'s folder and verify it by reading it
        back against the entry's size and sha256; :class:`NotReusable` (and no copy left) if the
        source is missing or the copy differs."""
        if not OUTPUT_RE.match(output.name):
            raise NotReusable(f"index entry names {output.name!r}, not an output file")
        source = self._join(self._source_dir(entry), output.name)
        path = self._join(self.item_dir(item), output.name)
        try:
            await asyncio.to_thread(self._copy_sync, source, path)
        except FileNotFoundError as exc:
            raise NotReusable(f"{entry.folder}/{output.name} is missing") from exc
        except Exception as exc:
            raise ArchiveError(f"cannot copy {self.location(source)} to {self.location(path)}: "
                               f"{type(exc).__name__}: {exc}") from exc
        if (got := mismatch(await self._read(path), output.size, output.sha256)) is not None:
            await self._delete(path)
            raise NotReusable(f"the copy of {entry.folder}/{output.name} does not verify: the index says "
                              f"{output.size} bytes, sha256 {output.sha256}; read back {got}")
        index = int(output.name.split("_", 1)[1].split(".", 1)[0])
        return OutputRecord(index=index, name=output.name, path=self.relative(path), url=self.location(path),
                            size=output.size, sha256=output.sha256)
