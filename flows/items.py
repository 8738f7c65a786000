"""Every item of a collection with bounded concurrency, each one Prefect task run
(:func:`flows.tasks.tryon_item`); a wrong key stops the rest.
"""

from __future__ import annotations

import asyncio

from flows.tasks import tryon_item
from tryon import pipeline, progress
from tryon.collection import CollectionSpec, iter_items
from tryon.errors import UnauthorizedAccess
from tryon.report import ItemReport, RunReport
from tryon.steps import Runtime


async def run_items(runtime: Runtime, collection: CollectionSpec, report: RunReport, *, force: bool) -> None:
    """Every item, ``runtime.workers`` at a time. Items are drawn lazily from one shared
    generator, so memory does not grow with the collection; none is dropped: each ends in the
    report, archived, skipped or failed with its reason."""
    items = iter_items(collection)
    stopped: list[UnauthorizedAccess] = []

    async def worker() -> None:
        for item in items:
            if stopped:  # a wrong key: no further calls at all
                entry = ItemReport.failed(item, None, "UnauthorizedAccess", f"not attempted: {stopped[0]}")
            else:
                key = None
                try:
                    # Planned outside any task: an archived item costs no task run on a rerun.
                    key, entry = await pipeline.begin(runtime, item, force=force)
                    if entry is None:
                        entry = await tryon_item(runtime, item, key)
                except UnauthorizedAccess as exc:
                    stopped.append(exc)
                    runtime.traffic.stop_submissions(str(exc), UnauthorizedAccess)
                    entry = ItemReport.failed(item, None, "UnauthorizedAccess", str(exc))
                except Exception as exc:  # this item fails with its reason; the others go on
                    entry = ItemReport.failed(item, None, type(exc).__name__, str(exc) or repr(exc))
                finally:  # its last attempt is over (the task's retries go on from this state)
                    runtime.in_progress.pop(key, None)
            report.add(entry)
            await progress.publish(report)

    await asyncio.gather(*(worker() for _ in range(runtime.workers)))
