"""The inbox sweep, for a schedule: every collection spec dropped under an inbox prefix is
run once; a spec whose content changed is run again; re-running the sweep does nothing new."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import Field

from flows.config import resolve_archive
from flows.launch import Launched, bounded, launch
from tryon.catalog import InboxLedger, find_specs, spec_digest
from tryon.process import joined

RECORDED = {"COMPLETED", "FAILED"}  # a crash or cancellation is not recorded: the next sweep retries


@flow(name="tryon-sweep-inbox", description="Run every new or changed collection spec under an inbox prefix once.")
async def sweep_inbox(
    inbox: str,
    archive: str = "",
    max_concurrent: Annotated[int, Field(ge=1, le=8)] = 1,
    credentials_block: str = "",
    archive_block: str = "",
) -> dict[str, Any]:
    """Sweep an inbox.

    Args:
        inbox: Prefix (s3://bucket/inbox/ or a folder) searched recursively for .yaml/.yml/.json/.csv specs.
        archive: Archive root URL; the processed-specs ledger lives there too (under _tryon/inbox/).
        max_concurrent: Collections run at once (they share the key's traffic control).
        credentials_block: Name of a FashnCredentials block; default: the worker's FASHN_* settings.
        archive_block: Name of a TryonArchive block.
    """
    logger = get_run_logger()
    ledger = InboxLedger(await resolve_archive(archive, archive_block))
    found = await find_specs([inbox])
    todo: list[tuple[str, str]] = []
    for url in found:
        digest = await spec_digest(url)
        if not await ledger.is_processed(url, digest):
            todo.append((url, digest))
    logger.info("inbox %s: %d spec(s), %d new or changed", inbox, len(found), len(todo))
    parameters = {"archive": archive, "credentials_block": credentials_block, "archive_block": archive_block}

    async def process(url: str, digest: str) -> Launched:
        launched = await launch(url, parameters)
        if launched.outcome in RECORDED:
            await ledger.record(url, digest, launched.outcome, launched.state.message or "", launched.flow_run_id)
        return launched

    # The subflows run here share one controller per key, one after another too.
    async with joined():
        runs = await bounded([lambda u=url, d=digest: process(u, d) for url, digest in todo], max_concurrent)
    summary = {"found": len(found), "processed": [r.as_dict() for r in runs]}
    failed = [r.spec for r in runs if r.outcome != "COMPLETED"]
    if failed:
        return Failed(message=f"{len(failed)} of {len(runs)} collection run(s) did not complete: "  # type: ignore[return-value]
                              + ", ".join(failed))
    return summary
