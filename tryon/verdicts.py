"""Reviewing a collection without Prefect: where each item stands (its current take, the checks'
reason, the last verdict), rejecting items (each gets a new take on the next run, see
:mod:`tryon.takes`) and approving the collection (``approved.json``).

The verdicts live in the archive beside the items (:mod:`tryon.archive.takes`), so the CLI, the
flow's review gate, later runs and the gallery read the same truth.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field

from tryon.archive import Archive, ArchiveError, ItemResult, Verdict, utcnow
from tryon.spec.collection import CollectionSpec
from tryon.spec.items import Item, iter_items
from tryon.takes import current_take


class Standing(BaseModel):
    """An item as it stands: its current take and that take's result (None: not made yet) and last verdict."""

    item: Item
    result: ItemResult | None = None
    verdict: Verdict | None = None
    rejected: list[Verdict] = Field(default_factory=list, description="The verdicts rejecting earlier takes.")

    @property
    def label(self) -> str:
        return self.item.label

    @property
    def take(self) -> int:
        return self.item.take

    @property
    def made(self) -> bool:
        """The current take is archived."""
        return self.result is not None and self.result.state == "archived" and self.result.take == self.take

    @property
    def needs_review(self) -> str | None:
        return self.result.flags.needs_review if self.made and self.result else None


async def standing(archive: Archive, item: Item) -> Standing:
    current = await current_take(archive, item)
    verdicts = await archive.read_verdicts(item)
    result = await archive.read_top_result(current)
    return Standing(item=current, result=result if result is not None and result.take == current.take else None,
                    verdict=verdicts.latest(current.take),
                    rejected=[v for v in verdicts.verdicts if v.verdict == "rejected"])


async def standings(collection: CollectionSpec, archive: Archive) -> list[Standing]:
    """Every item of the collection as it stands, in spec order."""
    return list(await asyncio.gather(*(standing(archive, item) for item in iter_items(collection))))


def flagged(items: Iterable[Standing]) -> dict[str, list[str]]:
    """Label -> the checks' reasons, for the items whose current take needs review."""
    return {s.label: [s.needs_review] for s in items if s.needs_review}


def standing_lines(items: Sequence[Standing]) -> list[str]:
    """One line per item, those needing review first: label, take, checks, verdict."""
    lines = []
    for s in sorted(items, key=lambda s: s.needs_review is None):
        made = "needs review: " + s.needs_review if s.needs_review else "checks passed" if s.made else "not made yet"
        verdict = f"; {s.verdict.verdict} by {s.verdict.by}" if s.verdict else ""
        lines.append(f"{s.label}  take {s.take}  {made}{verdict}")
    return lines


def _pick(items: Sequence[Standing], labels: Iterable[str]) -> list[Standing]:
    by_label = {s.label: s for s in items}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise ValueError(f"not items of this collection: {', '.join(unknown)}")
    return [by_label[label] for label in dict.fromkeys(labels)]


async def reject(collection: CollectionSpec, archive: Archive, labels: Sequence[str], *, reason: str, by: str,
                 review: str | None = None) -> list[Standing]:
    """Reject the current take of each labelled item: a verdict, and the take moved to ``takes/<n>/``;
    the next run makes the next take. ``review`` names the review round this answers: a repeat of
    it changes nothing. An item whose current take is not made yet cannot be rejected (a ValueError
    naming it: run the collection first)."""
    items = await standings(collection, archive)
    chosen = _pick(items, labels)
    todo = []
    for s in chosen:
        if review is not None and (await archive.read_verdicts(s.item)).answered(review):
            continue
        if not s.made:
            raise ValueError(f"{s.label}: take {s.take} is not made yet; run the collection first")
        todo.append(s)
    for s in todo:
        assert s.result is not None
        await archive.add_verdict(s.item, Verdict(take=s.take, verdict="rejected", reason=reason, by=by,
                                                  review=review))
        await archive.shelve(s.item, s.result)
    return [await standing(archive, s.item) for s in chosen]


class ApprovedItem(BaseModel):
    label: str
    take: int
    outputs: list[str] = Field(description="Paths relative to the archive root.")
    sha256: list[str]


class Approved(BaseModel):
    """``approved.json``: the collection as approved, one entry per item's current take."""

    collection: str
    model_name: str
    by: str
    approved_at: str
    items: list[ApprovedItem]


async def approve(collection: CollectionSpec, archive: Archive, *, by: str, review: str | None = None) -> Approved:
    """Approve every item's current take and write ``approved.json``. Every take must be made and
    archived (an :class:`~tryon.archive.ArchiveError` names those that are not)."""
    items = await standings(collection, archive)
    missing = [s.label for s in items if not s.made]
    if missing:
        raise ArchiveError(f"cannot approve {collection.name}: not archived yet: {', '.join(missing)}")
    for s in items:
        if s.verdict is None or s.verdict.verdict != "approved":
            await archive.add_verdict(s.item, Verdict(take=s.take, verdict="approved", by=by, review=review))
    approved = Approved(collection=collection.name, model_name=collection.model_name, by=by,
                        approved_at=utcnow().isoformat(), items=[
                            ApprovedItem(label=s.label, take=s.take, outputs=[o.path for o in s.result.outputs],
                                         sha256=[o.sha256 for o in s.result.outputs])
                            for s in items if s.result is not None])
    await archive.write_approved(collection.name, collection.model_name,
                                 (approved.model_dump_json(indent=2) + "\n").encode())
    return approved


async def read_approved(collection: CollectionSpec, archive: Archive) -> Approved | None:
    data = await archive.read_approved(collection.name, collection.model_name)
    return None if data is None else Approved.model_validate(json.loads(data))
