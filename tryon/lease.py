"""Run leases: whether the run that owns a pending record is still working on it, decided from
the archive alone.

A run (or a reconciler) holds a lease while it works: ``_tryon/leases/<owner>.json`` with an
expiry it renews every third of its term, and each ``prediction.json`` it writes names that
owner. A lease past its expiry means the owner stopped (ended, killed, lost): what it left pending
is anyone's to finish. The term bounds how long a killed run's predictions wait for a reconciler;
clocks of the machines involved must agree within a fraction of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tryon.archive import Archive, ArchiveError, utcnow

if TYPE_CHECKING:
    from tryon.item import ItemState

logger = logging.getLogger(__name__)

LEASES = "leases"


class Lease(BaseModel):
    owner: str
    expires_at: dt.datetime


def _lease_name(owner: str) -> str:
    return f"{owner}.json"


async def read_lease(archive: Archive, owner: str) -> Lease | None:
    data = await archive.read_meta(LEASES, _lease_name(owner))
    return None if data is None else Lease.model_validate_json(data)


async def is_live(archive: Archive, owner: str | None, now: dt.datetime | None = None) -> bool:
    """Whether ``owner``'s lease is fresh (no owner, or no lease: not live)."""
    if owner is None:
        return False
    lease = await read_lease(archive, owner)
    return lease is not None and lease.expires_at > (now or utcnow())


class RunLease:
    """Held while a run works: written on entry, renewed in the background, released on exit (the
    file deleted: no lease is not live, so a reconciler need not wait out the term)."""

    def __init__(self, archive: Archive, owner: str, term: float) -> None:
        self.archive = archive
        self.owner = owner
        self.term = term
        self._renewer: asyncio.Task[None] | None = None

    async def _write(self, seconds: float) -> None:
        lease = Lease(owner=self.owner, expires_at=utcnow() + dt.timedelta(seconds=seconds))
        await self.archive.write_meta(lease.model_dump_json().encode(), LEASES, _lease_name(self.owner))

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.term / 3)
            try:
                await self._write(self.term)
            except ArchiveError as exc:  # the next renewal may succeed before the term runs out
                logger.warning("could not renew the run lease %s: %s", self.owner, exc)

    async def __aenter__(self) -> RunLease:
        await self._write(self.term)
        self._renewer = asyncio.create_task(self._renew(), name=f"lease {self.owner}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with suppress(asyncio.CancelledError):
                await self._renewer
        try:
            await self.archive.delete_meta(LEASES, _lease_name(self.owner))
        except ArchiveError as error:  # it expires by itself
            logger.warning("could not release the run lease %s: %s", self.owner, error)


async def adopt(archive: Archive, states: Iterable[ItemState], owner: str) -> None:
    """Name ``owner`` in the pending record of every planned item that resumes a prediction (an
    earlier run's), so a reconciler leaves it to this run."""
    for state in states:
        if state.stage == "submitted":
            record = await archive.read_pending(state.item, state.key)
            if record is not None and record.owner != owner:
                await archive.write_pending(state.item, record.model_copy(update={"owner": owner}))
