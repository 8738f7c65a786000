"""Prefect artifacts of a collection run: live progress, a results table, a markdown summary."""

from __future__ import annotations

import asyncio
import logging
import time

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from tryon.batch import Plan
from tryon.report import RunReport

MAX_TABLE_ROWS = 500
log = logging.getLogger("tryon.artifacts")


def artifact_key(collection: str, suffix: str) -> str:
    """Artifact keys must match ^[a-z0-9-]*$."""
    safe = "".join(c if c.isalnum() else "-" for c in collection.lower()).strip("-")
    return f"tryon-{safe}-{suffix}"[:100]


class ProgressTracker:
    """A progress artifact updated as items finish, at most once per ``interval`` seconds.

    Updates run in the background, one at a time: a slow Prefect server (on SQLite a write can
    wait seconds behind others) must never hold up the item that finished, or its worker.
    """

    def __init__(self, artifact_id, total: int, interval: float = 1.0) -> None:
        self.artifact_id = artifact_id
        self.total = max(total, 1)
        self.interval = interval
        self._last = 0.0
        self._running: asyncio.Task | None = None

    @classmethod
    async def create(cls, collection: str, total: int) -> "ProgressTracker":
        artifact_id = await acreate_progress_artifact(
            0.0, key=artifact_key(collection, "progress"), description=f"Items of {collection} done")
        return cls(artifact_id, total)

    async def update(self, report: RunReport, *, force: bool = False) -> None:
        """Send the progress now if due (``force``: wait for it, e.g. the final one)."""
        busy = self._running is not None and not self._running.done()
        if not force and (busy or time.monotonic() - self._last < self.interval):
            return
        if busy:
            await asyncio.gather(self._running, return_exceptions=True)
        self._last = time.monotonic()
        self._running = asyncio.ensure_future(aupdate_progress_artifact(
            self.artifact_id, 100.0 * report.total / self.total, description=report.summary_line()))
        self._running.add_done_callback(_log_failure)
        if force:
            await asyncio.gather(self._running, return_exceptions=True)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not update the progress artifact (%s)", task.exception())


async def publish_results(report: RunReport, location: str, gallery: str | None = None) -> None:
    flagged = sorted(report.items, key=lambda e: not e.flags.needs_review)  # what needs review first
    rows = [
        {"garment": e.garment_id, "model": e.model_id, "take": e.take, "state": e.state,
         "needs_review": e.flags.needs_review or "", "prediction": e.prediction_id or "",
         "outputs": len(e.outputs), "credits": e.credits_used,
         "error": f"{e.error_name}: {e.error_message}" if e.error_name else
         f"left for the budget: would cost {e.credits_needed} credit(s)" if e.state == "unfunded" else ""}
        for e in flagged[:MAX_TABLE_ROWS]
    ]
    await acreate_table_artifact(rows, key=artifact_key(report.collection, "results"),
                                 description=f"{report.summary_line()} (first {MAX_TABLE_ROWS} rows)")
    links = f"\n\nReport: `{location}`" + (f"\n\nGallery: [{gallery}]({gallery})" if gallery else "")
    await acreate_markdown_artifact(f"# {report.collection}\n\n```\n{report.summary_text()}\n```{links}",
                                    key=artifact_key(report.collection, "summary"),
                                    description=report.summary_line())


async def publish_plan(collection: str, planned: Plan) -> None:
    """A dry run's answer: what a real run would do and cost."""
    covered = planned.balance is None or planned.balance >= planned.credits_needed
    verdict = "" if covered else "\n\n**The balance does not cover this run: a real run would refuse to start.**"
    if planned.over_limit:
        verdict += f"\n\n**{planned.credits_needed} credits, {planned.over_limit} over the limit of {planned.limit}: " \
                   "a real run would refuse to start (or, partial, leave items for the budget).**"
    await acreate_markdown_artifact(f"# {collection}: dry run\n\n{planned.line()}{verdict}",
                                    key=artifact_key(collection, "plan"), description=planned.line())
