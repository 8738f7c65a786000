"""Several processes on one API key: each a member of the key through Prefect.

A member holds one slot of the global concurrency limit ``tryon-key-<fingerprint>`` under a lease
it renews, which lapses if the process dies: the slots held are the processes using the key. With
no Prefect server of its own (one embedded in the process, which forgets its leases when it
stops), a member's lease is a line of a file under ``PREFECT_HOME`` instead.
What a member may admit follows from the count alone (:mod:`tryon.traffic.share`); this module is
the :class:`~tryon.traffic.share.Membership` over Prefect's client and the process's membership
(flow runs of one process share one controller, and so one membership).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import weakref
from pathlib import Path
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from tryon.traffic import TrafficController
from tryon.traffic.members_file import FileMembership
from tryon.traffic.share import hold_share

MAX_MEMBERS = 64  # the limit is a counter, not a gate: never make a process wait for it
SHORTEST_LEASE = 60.0  # the server's: a lease asked for shorter runs this long
JOIN_PATIENCE = 60.0  # seconds a join retries a busy server before the run gives up
BUSY = (429, 502, 503)  # a busy server (503: "database is locked" on SQLite): try again
log = logging.getLogger("tryon.coordination")
T = TypeVar("T")

if TYPE_CHECKING:  # imported where used: a run keeping its membership in a file never loads Prefect
    from prefect.client.orchestration import PrefectClient


class KeyCoordinationError(RuntimeError):
    """Prefect could not count this process among the key's users: it does not start, since it may
    admit nothing without a slot (nothing was spent)."""


def limit_name(fingerprint: str) -> str:
    return f"tryon-key-{fingerprint}"


async def count_members(name: str, client: PrefectClient | None = None) -> int:
    if client is None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await count_members(name, client)
    return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def _patiently(call: Callable[[], Awaitable[T]], patience: float) -> T:
    """``call()``, retried while the server answers busy, for up to ``patience`` seconds."""
    from prefect.exceptions import PrefectHTTPStatusError

    deadline, delay = time.monotonic() + patience, 0.05
    while True:
        try:
            return await call()
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code not in BUSY or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)


class PrefectMembership:
    """One slot of ``tryon-key-<fingerprint>`` under a lease, through ``client``."""

    def __init__(self, client: PrefectClient, name: str) -> None:
        self.client, self.name = client, name
        self._lease_id: str | None = None

    async def join(self, lease: float) -> float:
        from prefect.exceptions import ObjectAlreadyExists

        lease = max(lease, SHORTEST_LEASE)
        with contextlib.suppress(ObjectAlreadyExists):  # another process created it meanwhile
            await _patiently(lambda: self.client.upsert_global_concurrency_limit_by_name(self.name, MAX_MEMBERS),
                             JOIN_PATIENCE)
        response = await _patiently(lambda: self.client.increment_concurrency_slots_with_lease(
            [self.name], 1, "concurrency", lease), JOIN_PATIENCE)
        self._lease_id = response.json()["lease_id"]
        return lease

    async def renew(self, lease: float) -> float:
        lease = max(lease, SHORTEST_LEASE)
        await self.client.renew_concurrency_lease(self._lease_id, lease)
        return lease

    async def count(self) -> int:
        return await count_members(self.name, self.client)

    async def leave(self) -> None:
        if self._lease_id is not None:  # else the others count us until the lease lapses
            await _patiently(lambda: self.client.release_concurrency_slots_with_lease(self._lease_id), JOIN_PATIENCE)


class _ProcessMembership:
    """This process's membership of one key: held by a loop from its first run on the key until its
    last one ends (``users``), by all the runs that share the key's controller."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.users = 0
        self.joined: asyncio.Future[None] = loop.create_future()
        self.stop: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None


#: The membership each controller holds while a run uses it; an entry is removed by the last run
#: leaving, and goes with its controller at the latest.
_memberships: weakref.WeakKeyDictionary[TrafficController, _ProcessMembership] = weakref.WeakKeyDictionary()


async def _hold(controller: TrafficController, name: str, joined: asyncio.Future[None],
                stop: asyncio.Future[None], staleness: float | None, embedded_home: Path | None) -> None:
    try:
        if embedded_home is None:
            # Imported in a thread: the loop goes on with what it has (a terminal's first items).
            await asyncio.to_thread(importlib.import_module, "prefect.client.orchestration")
            from prefect.settings import PREFECT_API_URL, PREFECT_HOME

            if not PREFECT_API_URL.value():  # an embedded server goes with us: a file counts us after
                embedded_home = Path(PREFECT_HOME.value())
        if embedded_home is not None:
            members = FileMembership(embedded_home / "tryon-keys" / f"{name}.json")
            await hold_share(members, controller, joined, stop, staleness)
            return
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        # The client's own retries back off 2, 4, 8 s on a busy server; ours are quicker, and a
        # count that fails is simply read again D/2 later.
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            async with get_client() as client:
                await hold_share(PrefectMembership(client, name), controller, joined, stop, staleness)
    except Exception as exc:
        if not joined.done():
            joined.set_exception(exc)
        else:
            log.warning("left the key's membership early (%s: %s)", type(exc).__name__, exc)


@contextlib.asynccontextmanager
async def key_membership(controller: TrafficController, fingerprint: str, staleness: float | None = None, *,
                         embedded_home: Path | None = None) -> AsyncIterator[None]:
    """Count this process among the users of the key while the block runs (``staleness``: D,
    see :mod:`tryon.traffic.share`); through Prefect as configured, or, given the home of the
    Prefect server embedded in the process (``embedded_home``), in a file there."""
    member = _memberships.get(controller)
    if member is None:
        member = _memberships[controller] = _ProcessMembership()
        member.task = asyncio.create_task(_hold(controller, limit_name(fingerprint), member.joined, member.stop,
                                                staleness, embedded_home))
    member.users += 1
    try:
        try:
            await asyncio.shield(member.joined)
        except Exception as exc:
            raise KeyCoordinationError(
                f"Prefect could not count this run among the key's users ({type(exc).__name__}: {exc}); "
                "not starting, so as not to overrun another run's share. Nothing was spent.") from exc
        yield
    finally:
        member.users -= 1
        if member.users == 0:
            del _memberships[controller]
            member.stop.set_result(None)
            await asyncio.gather(member.task, return_exceptions=True)  # the key left
