"""A collection's items, without Prefect: validated and planned once before anything is spent,
then run with bounded concurrency into one report, which is saved with its gallery.

The CLI's ``--dry-run`` and ``validate`` use the first half directly; ``flows.collection``
uses all of it, passing down the Prefect task that runs one item and its own progress callback.
"""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from itertools import islice
from typing import Any, TextIO

from PIL import Image

from tryon import images
from tryon import item as life
from tryon.archive import Archive, ArchiveError
from tryon.client import FashnClient
from tryon.errors import InsufficientCredits, UnauthorizedAccess
from tryon.gallery import render_gallery
from tryon.item import ItemState
from tryon.models import credits_for, model_spec
from tryon.report import ItemReport, RunReport
from tryon.runtime import Runtime
from tryon.settings import ArchiveSettings, FashnSettings
from tryon.spec.collection import CollectionSpec, run_inputs
from tryon.spec.items import Item, iter_items
from tryon.spec.loaders import load_spec, spec_from_data
from tryon.spec.validation import validate_spec

#: How each planned stage is counted in a plan's line and data.
ACTIONS = {"planned": ("submit", "to submit"), "submitted": ("resume", "to resume"),
           "reuse": ("reuse", "to reuse from other collections (0 credits)"),
           "skipped": ("skip", "already archived"), "failed": ("failed", "failed before")}

RunOne = Callable[[Runtime, ItemState], Awaitable[ItemReport]]
OnReport = Callable[[RunReport], Awaitable[None]]


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
        overrides = run_inputs(collection.model_name, overrides)
        collection = collection.model_copy(update={"overrides": {**collection.overrides, **overrides}})
    await validate_spec(collection)
    return collection


class Plan:
    """Every item of a run as planned from the archive (the states the run then takes on), the
    counts by action and the credits the submissions would cost."""

    def __init__(self, states: list[ItemState], balance: int | None = None) -> None:
        self.states = states
        self.actions = Counter(ACTIONS[s.stage][0] for s in states)
        self.credits_needed = sum(credits_for(s.item.model_name, s.item.inputs) for s in states
                                  if s.stage == "planned")
        # False when some model's price is only known as the top of a published range.
        self.credits_exact = all(model_spec(s.item.model_name).credits_exact for s in states)
        self.balance = balance  # the key's credits, when asked

    def line(self) -> str:
        parts = [f"{self.actions[action]} {label}" for action, label in ACTIONS.values()]
        balance = "" if self.balance is None else f" (balance {self.balance})"
        bound = "" if self.credits_exact else " (an upper bound: the model's price table is not published)"
        return ", ".join(parts) + f"; at most {self.credits_needed} credits{bound}{balance}"

    def as_dict(self) -> dict[str, int | None]:
        return {**{action: self.actions[action] for action, _ in ACTIONS.values()},
                "credits_needed": self.credits_needed, "balance": self.balance}


async def plan(collection: CollectionSpec, archive: Archive, *, force: bool = False, max_resubmits: int = 2,
               reuse: bool = True, out: TextIO | None = None, batch: int = 32) -> Plan:
    """Plan every item from the archive alone, ``batch`` at a time (on S3 each plan is one to
    three round trips, see ``bench/reuse_lookup.py``, and a catalogue planned one by one would
    keep the run from starting for minutes); one line each to ``out``. ``reuse``: consult the
    archive's index for items another collection archived."""
    states: list[ItemState] = []
    items = iter_items(collection)
    while chunk := list(islice(items, batch)):
        planned = await asyncio.gather(*(life.plan(archive, i, force=force, max_resubmits=max_resubmits, reuse=reuse)
                                         for i in chunk))
        states.extend(planned)
        if out is not None:
            for state in planned:
                credits = 0 if state.stage == "reuse" else credits_for(state.item.model_name, state.item.inputs)
                print(f"  {ACTIONS[state.stage][0]:<7} {state.label}  ({credits} credit(s)) {state.reason}", file=out)
    return Plan(states)


def require_balance(balance: int, needed: int) -> None:
    if balance < needed:
        raise InsufficientCredits(
            f"the run needs up to {needed} credits but the balance is {balance}; nothing was submitted")


async def run_items(runtime: Runtime, planned: Plan, report: RunReport, *, run_one: RunOne = life.run,
                    on_report: OnReport | None = None) -> None:
    """Every planned item into ``report``, ``runtime.workers`` at a time through ``run_one``
    (:func:`tryon.item.run`, or a Prefect task around it); ``on_report`` hears of each entry.

    None is dropped: each ends in the report, archived, skipped or failed with its reason. A wrong
    key stops every further call.
    """
    states = iter(planned.states)
    stopped: list[UnauthorizedAccess] = []

    async def worker() -> None:
        for state in states:
            if state.active and stopped:
                state.fail(UnauthorizedAccess(f"not attempted: {stopped[0]}"))
            elif state.active:
                try:
                    await run_one(runtime, state)
                except UnauthorizedAccess as exc:
                    stopped.append(exc)
                    runtime.traffic.stop_submissions(str(exc), UnauthorizedAccess)
                    state.fail(exc)
                except Exception as exc:  # this item fails with its reason; the others go on
                    state.fail(exc)
            report.add(state.report())
            if on_report is not None:
                await on_report(report)

    await asyncio.gather(*(worker() for _ in range(runtime.workers)))


THUMBNAIL_EDGE = 240  # px, the longest edge of an input's thumbnail in the gallery


def _thumbnail(ref: str, base: str | None) -> bytes | None:
    """A small JPEG of an input image given as a file, fsspec URL or data URI (None: unreadable)."""
    try:
        if images.is_data_uri(ref):
            data = images.parse_data_uri(ref)[1]
        else:
            fs, path = images.open_fs(images.resolve_ref(ref, base))
            data = fs.cat_file(path)
        with Image.open(io.BytesIO(data)) as picture:
            picture = picture.convert("RGB")
            picture.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
            out = io.BytesIO()
            picture.save(out, "JPEG", quality=85)
            return out.getvalue()
    except Exception:  # the gallery goes without this thumbnail; the run's outcome does not depend on it
        return None


async def gallery_headers(archive: Archive, report: RunReport, items: Iterable[Item]) -> None:
    """Set the report's garments and model photos in spec order, each with a thumbnail in the
    archive (``_inputs/<content hash>.jpg``: made once per image, then found by one listing), or its
    URL when given as one (``saved:`` names have none)."""
    have = await archive.thumbnails(report.collection, report.model_name)
    for item in items:
        spec = model_spec(item.model_name)
        for ident, field, heads in ((item.garment_id, spec.garment_field, report.garments),
                                    (item.model_id, spec.model_field, report.models)):
            if ident in heads:
                continue
            ref = str(item.inputs.get(field) or "")
            heads[ident] = ref if images.is_http(ref) else None
            if not ref or images.is_http(ref) or images.is_saved(ref):
                continue
            try:  # hashed already by planning (the item key): no second read
                name = (await images.image_identity(ref, item.base_dir)).removeprefix("sha256:")[:32]
            except Exception:  # the gallery goes without this thumbnail
                continue
            if name not in have:
                data = await asyncio.to_thread(_thumbnail, ref, item.base_dir)
                if data is None:
                    continue
                await archive.write_thumbnail(report.collection, report.model_name, name, data)
                have.add(name)
            heads[ident] = archive.thumbnail_path(name)


async def save_report(archive: Archive, report: RunReport, items: Iterable[Item] = ()) -> str:
    """Write the run's report, summary and gallery (headed by the ``items``' input thumbnails) into
    the archive; the report's location."""
    await gallery_headers(archive, report, items)
    return await archive.write_report(
        report.collection, report.model_name, report.run_id, report=report.to_json().encode("utf-8"),
        summary=(report.summary_text().rstrip("\n") + "\n").encode("utf-8"),
        gallery=render_gallery(report).encode("utf-8"))


async def gallery_copy(spec: str, *, archive: Archive, model_name: str | None = None, expires: int = 3600) -> str:
    """The gallery of a collection's latest run, every image linked for this machine's browser
    (presigned links on S3: no credentials in the page, each link one object for ``expires`` s)."""
    collection = await load_spec(spec, model_name_override=model_name)
    data = await archive.read_report(collection.name, collection.model_name)
    if data is None:
        raise ArchiveError(f"no report of {collection.name} ({collection.model_name}) in {archive.url}: run it first")
    return render_gallery(RunReport.model_validate(data), link=lambda relative: archive.link(
        collection.name, collection.model_name, relative, expires))


async def dry_run(spec: str, *, archive: str | None = None, model_name: str | None = None, force: bool = False,
                  reuse: bool | None = None, out: TextIO) -> int:
    """Validate, list what would be submitted, reused or skipped, the credits and the balance;
    spend nothing, write nothing."""
    settings = FashnSettings()
    archive_settings = ArchiveSettings()
    collection = await load_and_validate(spec, model_name)
    store = Archive(archive or archive_settings.archive_url)
    print(f"{collection.name} ({collection.model_name}) into {store.url}:", file=out)
    planned = await plan(collection, store, force=force, max_resubmits=settings.max_resubmits,
                         reuse=archive_settings.reuse if reuse is None else reuse, out=out)
    print(planned.line(), file=out)
    async with FashnClient.from_settings(settings) as client:
        balance = await client.credits()
    print(f"balance: {balance.total} credits (subscription {balance.subscription}, on demand {balance.on_demand})",
          file=out)
    if balance.total < planned.credits_needed:
        print("the balance does not cover this run: a real run would refuse to start", file=out)
        return 1
    return 0
