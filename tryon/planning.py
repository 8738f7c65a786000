"""Before anything is spent: validate the spec, decide each item from the archive, count the
credits a run would cost and compare them with the balance. No Prefect here: the CLI's
``--dry-run`` and ``validate`` use it directly."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TextIO

from tryon.archive import Archive
from tryon.client import FashnClient
from tryon.collection import CollectionSpec, Item, item_key, iter_items, load_spec, spec_from_data, validate_spec
from tryon.errors import InsufficientCredits
from tryon.settings import ArchiveSettings, FashnSettings
from tryon.steps import Plan, plan_item


async def load_and_validate(spec: str | Mapping[str, Any], model_name: str | None = None,
                            overrides: Mapping[str, Any] | None = None) -> CollectionSpec:
    """Load (a path or URL, or already parsed data) and check a spec; raises
    :class:`tryon.collection.SpecError` listing every problem. ``overrides`` are inputs set
    on every item (a run's mode or num_samples)."""
    if isinstance(spec, Mapping):
        collection = await spec_from_data(spec, model_name_override=model_name)
    else:
        collection = await load_spec(spec, model_name_override=model_name)
    if overrides:
        collection = collection.model_copy(update={"overrides": {**collection.overrides, **overrides}})
    await validate_spec(collection)
    return collection


@dataclass
class Preview:
    """What a run would do: items by action, and the credits the submissions would cost."""

    actions: Counter[str] = field(default_factory=Counter)
    credits_needed: int = 0
    balance: int | None = None  # the key's credits, when asked

    def add(self, plan: Plan, num_samples: int) -> None:
        self.actions[plan.action] += 1
        if plan.action == "submit":
            self.credits_needed += num_samples

    def line(self) -> str:
        parts = [f"{self.actions[a]} {label}" for a, label in
                 (("submit", "to submit"), ("resume", "to resume"), ("skip", "already archived"),
                  ("failed", "failed before"))]
        balance = "" if self.balance is None else f" (balance {self.balance})"
        return ", ".join(parts) + f"; at most {self.credits_needed} credits{balance}"

    def as_dict(self) -> dict[str, int | None]:
        return {**{a: self.actions[a] for a in ("submit", "resume", "skip", "failed")},
                "credits_needed": self.credits_needed, "balance": self.balance}


async def preview(collection: CollectionSpec, archive: Archive, *, force: bool = False, max_resubmits: int = 2,
                  out: TextIO | None = None, batch: int = 32) -> Preview:
    """Plan every item from the archive alone (items are streamed, one line each to ``out``).

    ``batch`` items at a time: on S3 each plan is one or two round trips, and a catalogue of
    thousands planned one by one would keep the run from starting for minutes.
    """
    result = Preview()

    async def plan(item: Item) -> Plan:
        return await plan_item(archive, item, await item_key(item), force=force, max_resubmits=max_resubmits)

    items = iter_items(collection)
    while chunk := list(islice(items, batch)):
        for item, planned in zip(chunk, await asyncio.gather(*map(plan, chunk)), strict=True):
            result.add(planned, item.num_samples)
            if out is not None:
                print(f"  {planned.action:<7} {item.label}  ({item.num_samples} credit(s)) {planned.reason}", file=out)
    return result


def require_balance(balance: int, needed: int) -> None:
    if balance < needed:
        raise InsufficientCredits(
            f"the run needs up to {needed} credits but the balance is {balance}; nothing was submitted")


async def dry_run(spec: str, *, archive: str | None = None, model_name: str | None = None, force: bool = False,
                  out: TextIO) -> int:
    """Validate, list what would be submitted or skipped, the credits and the balance; spend nothing."""
    settings = FashnSettings()
    collection = await load_and_validate(spec, model_name)
    store = Archive(archive or ArchiveSettings().archive_url)
    print(f"{collection.name} ({collection.model_name}) into {store.url}:", file=out)
    result = await preview(collection, store, force=force, max_resubmits=settings.max_resubmits, out=out)
    print(result.line(), file=out)
    async with FashnClient.from_settings(settings) as client:
        balance = await client.credits()
    print(f"balance: {balance.total} credits (subscription {balance.subscription}, on demand {balance.on_demand})",
          file=out)
    if balance.total < result.credits_needed:
        print("the balance does not cover this run: a real run would refuse to start", file=out)
        return 1
    return 0
