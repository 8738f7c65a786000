"""The CLI's ``run --dry-run``: validate, list what a run would submit, reuse or skip with the
credits each costs, then the total against the spend limit and the key's balance; spend nothing,
write nothing."""

from __future__ import annotations

from typing import TextIO

from tryon.archive import Archive
from tryon.batch import ACTIONS, Plan, load_and_validate, planned_chunks
from tryon.client import FashnClient
from tryon.errors import OverBudget
from tryon.item import ItemState
from tryon.settings import ArchiveSettings, FashnSettings
from tryon.traffic.budget import Budget


async def dry_run(spec: str, *, archive: str | None = None, model_name: str | None = None, force: bool = False,
                  reuse: bool | None = None, max_credits: int | None = None, partial: bool = False,
                  out: TextIO) -> int:
    """Print the plan of ``spec`` to ``out``, one line per item; 1 when it is above the spend limit
    (``max_credits``, default ``TRYON_MAX_CREDITS``; with ``partial``, the items left for it are
    listed) or the balance does not cover it (a real run would refuse to start), else 0."""
    settings = FashnSettings()
    archive_settings = ArchiveSettings()
    collection = await load_and_validate(spec, model_name)
    store = Archive(archive or archive_settings.archive_url)
    print(f"{collection.name} ({collection.model_name}) into {store.url}:", file=out)
    states: list[ItemState] = []
    async for chunk in planned_chunks(collection, store, force=force, max_resubmits=settings.max_resubmits,
                                      reuse=archive_settings.reuse if reuse is None else reuse):
        states.extend(chunk)
        for state in chunk:
            credits = 0 if state.stage == "reuse" else state.item.credits
            print(f"  {ACTIONS[state.stage][0]:<7} {state.label}  ({credits} credit(s)) {state.reason}", file=out)
    planned = Plan(states)
    try:
        planned.fund(Budget(max_credits or settings.max_credits), partial=partial)
    except OverBudget as exc:
        print(f"{planned.line()}\n{exc}\na real run would refuse to start", file=out)
        return 1
    for state in planned.states:
        if state.stage == "unfunded":
            print(f"  {ACTIONS[state.stage][0]:<7} {state.label}  ({state.item.credits} credit(s))", file=out)
    print(planned.line(), file=out)
    async with FashnClient.from_settings(settings) as client:
        balance = await client.credits()
    print(f"balance: {balance.total} credits (subscription {balance.subscription}, on demand {balance.on_demand})",
          file=out)
    if balance.total < planned.credits_needed:
        print("the balance does not cover this run: a real run would refuse to start", file=out)
        return 1
    return 0
