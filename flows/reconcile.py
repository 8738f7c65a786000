"""The reconciler flow, for a schedule (hourly in prefect.yaml) or ``tryon reconcile``: finish
every prediction a run left pending and no live run owns (:mod:`tryon.reconcile`), on the key's
shared traffic control, spending 0 credits."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.config import resolve_archive, resolve_settings
from flows.coordination import key_membership
from tryon.client import FashnClient
from tryon.process import joined
from tryon.reconcile import reconcile
from tryon.settings import ArchiveSettings


@flow(name="tryon-reconcile", description="Archive what killed or cancelled runs left pending; never submits.")
async def reconcile_archive(archive: str = "", credentials_block: str = "", archive_block: str = "") -> dict[str, Any]:
    """Reconcile an archive.

    Args:
        archive: Archive root URL; empty: the archive block, then TRYON_ARCHIVE_URL, then ./archive.
        credentials_block: Name of a FashnCredentials block; empty: the worker's FASHN_* settings.
        archive_block: Name of a TryonArchive block (URL and storage credentials).
    """
    logger = get_run_logger()
    settings = await resolve_settings(credentials_block or None)
    store = await resolve_archive(archive or None, archive_block or None)
    async with joined() as process:
        traffic = process.controller(settings)
        async with key_membership(traffic, settings.key_fingerprint(), settings.share_staleness), \
                FashnClient.from_settings(settings, gate=traffic) as client:
            done = await reconcile(store, client, traffic, lease_term=ArchiveSettings().run_lease,
                                   prediction_timeout=settings.prediction_timeout)
    logger.info("%s: %s", store.url, done.text().rstrip())
    summary = {"text": done.text(), "recovered": done.recovered, "lost": done.lost, "live": done.live,
               "other_reconcilers": done.others,
               "still_pending": done.left, "without_prediction_id": done.unsubmitted}
    if done.left:  # the next pass tries these again
        return Failed(message=done.text())  # type: ignore[return-value]
    return summary
