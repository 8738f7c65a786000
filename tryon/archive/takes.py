"""An item's takes and the verdicts on them, in its folder beside its outputs::

    <garment>__<model>/
        output_0.png  result.json        # the current take (result.json says which: "take")
        verdicts.json                    # every verdict on every take, oldest first
        takes/<n>/output_0.png  takes/<n>/result.json    # take n, rejected (its reason in verdicts.json)

A rejected take's files are copied to ``takes/<n>/`` and verified before the top ones are removed,
and its reuse index entry is pointed there, so a rejection loses nothing and another collection
with the same inputs still copies those outputs for 0 credits. The current take is one more than
the highest rejected one: it is read from ``verdicts.json`` alone.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from tryon.archive.items import OUTPUT_RE
from tryon.archive.records import ItemResult, utcnow
from tryon.archive.reuse import ReuseIndex
from tryon.archive.store import RESULT_FILE, ArchiveError, dumps
from tryon.spec.items import Item

VERDICTS_FILE = "verdicts.json"
APPROVED_FILE = "approved.json"
TAKES_DIR = "takes"


class Verdict(BaseModel):
    """A reviewer's word on one take of an item."""

    take: int = Field(ge=1)
    verdict: Literal["approved", "rejected"]
    reason: str = ""
    by: str = Field(description="Who gave it: a user name, or the flow run whose review form it came from.")
    review: str | None = Field(None, description="The review round it answered (flow run id and round): a run "
                                                 "started again on resume records it once.")
    at: dt.datetime = Field(default_factory=utcnow)


class Verdicts(BaseModel):
    """``verdicts.json``."""

    label: str
    verdicts: list[Verdict] = Field(default_factory=list, description="Oldest first.")

    @property
    def current_take(self) -> int:
        return 1 + max((v.take for v in self.verdicts if v.verdict == "rejected"), default=0)

    def latest(self, take: int) -> Verdict | None:
        """The last verdict on ``take``, if any."""
        return next((v for v in reversed(self.verdicts) if v.take == take), None)

    def answered(self, review: str) -> bool:
        return any(v.review == review for v in self.verdicts)


class TakeFiles(ReuseIndex):
    """Verdicts, earlier takes and a collection's ``approved.json``."""

    def take_dir(self, item: Item, take: int) -> str:
        return self._join(self.item_dir(item), TAKES_DIR, str(int(take)))

    async def read_verdicts(self, item: Item) -> Verdicts:
        found = await self._read_model(self._join(self.item_dir(item), VERDICTS_FILE), Verdicts)
        return found or Verdicts(label=item.label)

    async def add_verdict(self, item: Item, verdict: Verdict) -> Verdicts:
        """Append ``verdict`` (written whole; a repeat of the same review round is not added again)."""
        verdicts = await self.read_verdicts(item)
        if verdict.review is None or not verdicts.answered(verdict.review):
            verdicts.verdicts.append(verdict)
            await self._write(self._join(self.item_dir(item), VERDICTS_FILE), dumps(verdicts))
        return verdicts

    async def read_top_result(self, item: Item) -> ItemResult | None:
        """The ``result.json`` at the top of the item's folder, whatever its key."""
        return await self._read_model(self._join(self.item_dir(item), RESULT_FILE), ItemResult)

    async def read_take_result(self, item: Item, take: int) -> ItemResult | None:
        return await self._read_model(self._join(self.take_dir(item, take), RESULT_FILE), ItemResult)

    async def shelve(self, item: Item, result: ItemResult) -> None:
        """Move the top take (``result``) to ``takes/<n>/``: copy and verify each output, then its
        ``result.json`` (last), point its index entry there, then remove the top files. Safe to repeat
        after a kill at any point."""
        top, folder = self.item_dir(item), self.take_dir(item, result.take)
        outputs = []
        for output in result.outputs:
            data = await self._read(self._join(top, output.name))
            if data is None and (await self._read(self._join(folder, output.name))) is None:
                raise ArchiveError(f"{item.label}: take {result.take}'s {output.name} is missing")
            target = self._join(folder, output.name)
            if data is not None and await self.write_verified(target, data) != output.sha256:
                raise ArchiveError(f"{self.location(target)} is not take {result.take}'s {output.name}: "
                                   f"its sha256 is not {output.sha256}")
            outputs.append(output.model_copy(update={"path": self.relative(target), "url": self.location(target)}))
        shelved = result.model_copy(update={"outputs": outputs})
        await self._write(self._join(folder, RESULT_FILE), dumps(shelved))
        if result.state == "archived":
            entry = self.index_entry(result).model_copy(update={"folder": self.relative(folder)})
            await self._write(self.index_path(result.key), dumps(entry))
        await self._delete(self._join(top, RESULT_FILE))
        for name in await self._list(top):
            if OUTPUT_RE.match(name):
                await self._delete(self._join(top, name))

    async def write_approved(self, collection: str, model_name: str, data: bytes) -> str:
        """``<collection>/<model_name>/approved.json``; its location."""
        path = self._join(self.model_dir(collection, model_name), APPROVED_FILE)
        await self._write(path, data)
        return self.location(path)

    async def read_approved(self, collection: str, model_name: str) -> bytes | None:
        return await self._read(self._join(self.model_dir(collection, model_name), APPROVED_FILE))
