"""A collection's items, without Prefect: validated and planned once before anything is spent,
then run with bounded concurrency, each item's report entry handed back as it ends; the run's
report is saved with its gallery.

The CLI's ``validate`` and :mod:`tryon.dry_run` use the first half; ``flows.collection`` uses all
of it, passing down the Prefect task that runs one item.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from itertools import islice
from typing import Any

from tryon import item as life
from tryon.archive import Archive
from tryon.drain import Drain
from tryon.errors import InsufficientCredits, UnauthorizedAccess
from tryon.gallery import gallery_headers, render_gallery
from tryon.item import ItemState
from tryon.models import model_spec
from tryon.report import ItemReport, RunReport
from tryon.runtime import Runtime
from tryon.spec.collection import CollectionSpec, run_inputs
from tryon.spec.items import Item, iter_items
from tryon.spec.loaders import load_spec, spec_from_data
from tryon.spec.validation import validate_spec
from tryon.traffic.budget import Budget

#: How each planned stage is counted in a plan's line and data.
ACTIONS = {"planned": ("submit", "to submit"), "submitted": ("resume", "to resume"),
           "reuse": ("reuse", "to reuse from other collections (0 credits)"),
           "skipped": ("skip", "already archived"), "failed": ("failed", "failed before"),
           "unfunded": ("unfunded", "left for the budget")}

RunOne = Callable[[Runtime, ItemState], Awaitable[ItemReport]]


async def load_and_validate(spec: str | Mapping[str, Any], model_name: str | None = None,
                            overrides: Mapping[str, Any] | None = None) -> CollectionSpec:
    """Load (a path or URL, or already parsed data) and check a spec; raises
    :class:`tryon.spec.problems.SpecError` listing every problem. ``overrides`` are inputs set
    on every item (a run's mode or num_samples)."""
    if isinstance(spec, Mapping):
        collection = await spec_from_data(spec, model_name_override=model_name)
    else:
        collection = await load_spec(spec, model_name_override=model_name)
    if overrides:
        overrides = run_inputs(collection.model_name, overrides)
        collection = collection.model_copy(update={"overrides": {**collection.overrides, **overrides}})
    await validate_spec(collection)
    return collection


class Plan:
    """Every item of a run as planned from the archive (the states the run then takes on), the
    counts by action and the credits the submissions would cost."""

    def __init__(self, states: list[ItemState], balance: int | None = None) -> None:
        self.states = states
        # False when some model's price is only known as the top of a published range.
        self.credits_exact = all(model_spec(s.item.model_name).credits_exact for s in states)
        self.balance = balance  # the key's credits, when asked
        self.limit: int | None = None  # the run's spend limit, once funded
        self.over_limit = 0  # credits the plan is above what the limit has left
        self._count()

    def _count(self) -> None:
        self.actions = Counter(ACTIONS[s.stage][0] for s in self.states)
        self.credits_needed = sum(s.item.credits for s in self.states if s.stage == "planned")

    def fund(self, budget: Budget, *, partial: bool = False) -> None:
        """Check the plan against ``budget`` before anything is spent: above what its limit has left,
        refuse the run (:class:`~tryon.errors.OverBudget`, naming the estimate and the limit) or,
        with ``partial``, keep the items in spec order until the next would not fit and leave the
        rest for the budget."""
        self.limit, self.over_limit = budget.limit, budget.shortfall(self.credits_needed)
        if not self.over_limit:
            return
        if not partial:
            raise budget.refusal(self.credits_needed)
        room, full = budget.available or 0, False
        for state in [s for s in self.states if s.stage == "planned"]:
            full = full or state.item.credits > room  # this one and every later one are left
            if full:
                state.unfund(f"left for the budget by the plan ({state.item.credits} credit(s))")
            else:
                room -= state.item.credits
        self._count()
        self.over_limit = 0

    def line(self) -> str:
        parts = [f"{self.actions[action]} {label}" for action, label in ACTIONS.values()
                 if action != "unfunded" or self.actions[action]]
        limit = "" if self.limit is None else f" (limit {self.limit})"
        balance = "" if self.balance is None else f" (balance {self.balance})"
        bound = "" if self.credits_exact else " (an upper bound: the model's price table is not published)"
        return ", ".join(parts) + f"; at most {self.credits_needed} credits{bound}{limit}{balance}"

    def as_dict(self) -> dict[str, int | None]:
        data = {**{action: self.actions[action] for action, _ in ACTIONS.values() if action != "unfunded"},
                "credits_needed": self.credits_needed, "balance": self.balance}
        if self.limit is not None:  # the budget's part, when the run has a limit
            data.update(unfunded=self.actions["unfunded"], max_credits=self.limit, over_limit=self.over_limit)
        return data


async def planned_chunks(collection: CollectionSpec, archive: Archive, *, force: bool = False, max_resubmits: int = 2,
                         reuse: bool = True, batch: int = 32) -> AsyncIterator[list[ItemState]]:
    """Every item planned from the archive alone, ``batch`` at a time (on S3 each plan is one to
    three round trips, see ``bench/reuse_lookup.py``, and a catalogue planned one by one would
    keep the run from starting for minutes). ``reuse``: consult the archive's index for items
    another collection archived."""
    items = iter_items(collection)
    while chunk := list(islice(items, batch)):
        yield list(await asyncio.gather(*(life.plan(archive, i, force=force, max_resubmits=max_resubmits, reuse=reuse)
                                          for i in chunk)))


async def plan(collection: CollectionSpec, archive: Archive, *, force: bool = False, max_resubmits: int = 2,
               reuse: bool = True) -> Plan:
    """Every item of the collection planned (:func:`planned_chunks`)."""
    chunks = planned_chunks(collection, archive, force=force, max_resubmits=max_resubmits, reuse=reuse)
    return Plan([state async for chunk in chunks for state in chunk])


def require_balance(balance: int, needed: int) -> None:
    if balance < needed:
        raise InsufficientCredits(
            f"the run needs up to {needed} credits but the balance is {balance}; nothing was submitted")


async def run_items(runtime: Runtime, planned: Plan, *, run_one: RunOne = life.run,
                    drain: Drain | None = None) -> AsyncIterator[ItemReport]:
    """Every planned item's report entry as it ends, ``runtime.workers`` items at a time through
    ``run_one`` (:func:`tryon.item.run`, or a Prefect task around it). Close it when leaving early
    (``contextlib.aclosing``): the items in progress are cancelled.

    None is dropped: each ends with its entry, archived, skipped or failed with its reason, or
    cancelled when ``drain`` was requested before it was submitted. A wrong key stops every
    further call.
    """
    states = iter(planned.states)
    stopped: list[UnauthorizedAccess] = []
    ended: asyncio.Queue[ItemReport] = asyncio.Queue()

    def held_back(state: ItemState) -> bool:
        return drain is not None and drain.holds_back(state)

    async def worker() -> None:
        for state in states:
            # A begun item always goes through run_one, which awaits its life: it may be submitting
            # now, or have ended already (its task run records it).
            begun = state in runtime.begun
            if state.active and stopped and not begun:
                state.fail(UnauthorizedAccess(f"not attempted: {stopped[0]}"))
            elif begun or (state.active and not held_back(state)):
                try:
                    await run_one(runtime, state)
                except UnauthorizedAccess as exc:
                    stopped.append(exc)
                    runtime.traffic.stop_submissions(str(exc), UnauthorizedAccess)
                    state.fail(exc)
                except Exception as exc:  # this item fails with its reason (unless never submitted: cancelled)
                    if not held_back(state):
                        state.fail(exc)
            ended.put_nowait(drain.cancelled(state) if drain is not None and held_back(state) else state.report())

    workers = asyncio.gather(*(worker() for _ in range(runtime.workers)))
    try:
        for _ in planned.states:
            entry = asyncio.ensure_future(ended.get())
            await asyncio.wait({entry, workers}, return_when=asyncio.FIRST_COMPLETED)
            if not entry.done():  # the workers ended first: only by an error, raised here
                entry.cancel()
                workers.result()
            yield entry.result()
        await workers
    finally:
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)


def begin(runtime: Runtime, planned: Plan) -> None:
    """Start now the lives of the items :func:`run_items` takes first (one per worker), ahead of it:
    ``tryon run`` submits them while Prefect starts. Its call for each of them awaits that life."""
    for state in [s for s in planned.states if s.active][:runtime.workers]:
        runtime.begun[state] = asyncio.ensure_future(life.live(runtime, state))


async def end_begun(runtime: Runtime, *, cancel: bool = False) -> None:
    """Wait for the lives begun and never taken (their outputs are archived, their reports lost: a
    later run skips them), or with ``cancel`` stop them (their pending records are kept)."""
    begun, runtime.begun = list(runtime.begun.values()), {}
    for future in begun if cancel else ():
        future.cancel()
    await asyncio.gather(*begun, return_exceptions=True)


async def save_report(archive: Archive, report: RunReport, items: Iterable[Item] = ()) -> str:
    """Write the run's report, summary and gallery (headed by the ``items``' input thumbnails, each
    item's last verdict on its take in its cell) into the archive; the report's location."""
    items = list(items)
    await gallery_headers(archive, report, items)
    verdicts = await asyncio.gather(*(archive.read_verdicts(item) for item in items))
    return await archive.write_report(
        report.collection, report.model_name, report.run_id, report=report.to_json().encode("utf-8"),
        summary=(report.summary_text().rstrip("\n") + "\n").encode("utf-8"),
        gallery=render_gallery(report, verdicts={item.label: v.latest(item.take) for item, v in zip(items, verdicts)})
        .encode("utf-8"))


