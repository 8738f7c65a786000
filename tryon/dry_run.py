"""The CLI's ``run --dry-run``: validate, list what a run would submit, reuse or skip with the
credits each costs, then the total and the key's balance; spend nothing, write nothing."""

from __future__ import annotations

from typing import TextIO

from tryon.archive import Archive
from tryon.batch import ACTIONS, Plan, load_and_validate, planned_chunks
from tryon.client import FashnClient
from tryon.item import ItemState
from tryon.models import credits_for
from tryon.settings import ArchiveSettings, FashnSettings


async def dry_run(spec: str, *, archive: str | None = None, model_name: str | None = None, force: bool = False,
                  reuse: bool | None = None, out: TextIO) -> int:
    """Print the plan of ``spec`` to ``out``, one line per item; 1 when the balance does not cover
    it (a real run would refuse to start), else 0."""
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
            credits = 0 if state.stage == "reuse" else credits_for(state.item.model_name, state.item.inputs)
            print(f"  {ACTIONS[state.stage][0]:<7} {state.label}  ({credits} credit(s)) {state.reason}", file=out)
    planned = Plan(states)
    print(planned.line(), file=out)
    async with FashnClient.from_settings(settings) as client:
        balance = await client.credits()
    print(f"balance: {balance.total} credits (subscription {balance.subscription}, on demand {balance.on_demand})",
          file=out)
    if balance.total < planned.credits_needed:
        print("the balance does not cover this run: a real run would refuse to start", file=out)
        return 1
    return 0
