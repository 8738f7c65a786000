"""Several processes on one API key: each a member of the key through Prefect.

A member holds one slot of the global concurrency limit ``tryon-key-<fingerprint>`` under a lease
it renews, which lapses if the process dies: the slots held are the processes using the key. With
no Prefect server of its own (one embedded in the process, which forgets its leases when it
stops), a member's lease is a line of a file under ``PREFECT_HOME`` instead.
What a member may admit follows from the count alone (:mod:`tryon.traffic.share`); this module is
the :class:`~tryon.traffic.share.Membership` over Prefect's REST API and the process's membership
(flow runs of one process share one controller, and so one membership). The membership calls the
API with httpx (:mod:`flows.prefect_api`), the same way in a flow run and in ``tryon run``, which
so joins the key and submits its first items before it imports Prefect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx

from flows.prefect_api import PrefectApi
from tryon.traffic import TrafficController
from tryon.traffic.members_file import FileMembership
from tryon.traffic.share import hold_share

MAX_MEMBERS = 64  # the limit is a counter, not a gate: never make a process wait for it
SHORTEST_LEASE = 60.0  # the server's: a lease asked for shorter runs this long
JOIN_PATIENCE = 60.0  # seconds a join retries a busy server before the run gives up
BUSY = (429, 502, 503)  # a busy server (503: "database is locked" on SQLite): try again
REQUEST_TIMEOUT = 60.0  # Prefect's client's default; a renewal still lands within the lease
log = logging.getLogger("tryon.coordination")
T = TypeVar("T")


class KeyCoordinationError(RuntimeError):
    """Prefect could not count this process among the key's users: it does not start, since it may
    admit nothing without a slot (nothing was spent)."""


def limit_name(fingerprint: str) -> str:
    return f"tryon-key-{fingerprint}"


async def _call(client: httpx.AsyncClient, path: str, body: dict | None = None) -> httpx.Response:
    """POST ``body`` (or GET without one) to ``/v2/concurrency_limits/<path>``; raises on an error."""
    url = f"/v2/concurrency_limits/{path}"
    response = await (client.get(url) if body is None else client.post(url, json=body))
    return response.raise_for_status()


async def count_members(name: str, client: httpx.AsyncClient | None = None) -> int:
    """The slots of the limit ``name`` held now (through Prefect's settings without ``client``)."""
    if client is None:
        api = PrefectApi.from_settings()
        if api is None:
            raise RuntimeError("no Prefect API URL: the key's members are counted in a file")
        async with api.client(timeout=REQUEST_TIMEOUT) as client:
            return await count_members(name, client)
    return (await _call(client, name)).json()["active_slots"]


async def _patiently(call: Callable[[], Awaitable[T]], patience: float) -> T:
    """``call()``, retried while the server answers busy, for up to ``patience`` seconds."""
    deadline, delay = time.monotonic() + patience, 0.05
    while True:
        try:
            return await call()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in BUSY or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)


class PrefectMembership:
    """One slot of the limit ``name`` under a lease, through Prefect's REST API (``client``: one from
    :meth:`flows.prefect_api.PrefectApi.client`). Never retried by the client: a busy server is asked
    again here, quicker than Prefect's client would."""

    def __init__(self, client: httpx.AsyncClient, name: str) -> None:
        self.client, self.name = client, name
        self._lease_id: str | None = None

    async def _create(self) -> None:
        """The limit, unless it exists."""
        try:
            await _call(self.client, self.name)
            return
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
        try:
            await _call(self.client, "", {"name": self.name, "limit": MAX_MEMBERS})
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 409:  # 409: another process created it meanwhile
                raise

    async def join(self, lease: float) -> float:
        lease = max(lease, SHORTEST_LEASE)
        await _patiently(self._create, JOIN_PATIENCE)
        response = await _patiently(lambda: _call(self.client, "increment-with-lease", {
            "names": [self.name], "slots": 1, "mode": "concurrency", "lease_duration": lease}), JOIN_PATIENCE)
        self._lease_id = response.json()["lease_id"]
        return lease

    async def renew(self, lease: float) -> float:
        lease = max(lease, SHORTEST_LEASE)
        await _call(self.client, f"leases/{self._lease_id}/renew", {"lease_duration": lease})
        return lease

    async def count(self) -> int:
        return await count_members(self.name, self.client)

    async def leave(self) -> None:
        if self._lease_id is not None:  # else the others count us until the lease lapses
            await _patiently(lambda: _call(self.client, "decrement-with-lease", {"lease_id": self._lease_id}),
                             JOIN_PATIENCE)


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
                stop: asyncio.Future[None], staleness: float | None, embedded_home: Path | None,
                api: PrefectApi | None) -> None:
    try:
        if api is None and embedded_home is None:  # as Prefect is configured
            from prefect.settings import PREFECT_HOME

            api = PrefectApi.from_settings()
            if api is None:  # an embedded server goes with us: a file counts us after
                embedded_home = Path(PREFECT_HOME.value())
        if api is None:
            members = FileMembership(embedded_home / "tryon-keys" / f"{name}.json")
            await hold_share(members, controller, joined, stop, staleness)
            return
        async with api.client(timeout=REQUEST_TIMEOUT) as client:
            await hold_share(PrefectMembership(client, name), controller, joined, stop, staleness)
    except Exception as exc:
        if not joined.done():
            joined.set_exception(exc)
        else:
            log.warning("left the key's membership early (%s: %s)", type(exc).__name__, exc)


@contextlib.asynccontextmanager
async def key_membership(controller: TrafficController, fingerprint: str, staleness: float | None = None, *,
                         embedded_home: Path | None = None, api: PrefectApi | None = None) -> AsyncIterator[None]:
    """Count this process among the users of the key while the block runs (``staleness``: D,
    see :mod:`tryon.traffic.share`): through the Prefect server ``api``; given the home of the
    Prefect server embedded in the process (``embedded_home``), in a file there; with neither, as
    Prefect's settings say (which a caller that has not imported Prefect passes instead)."""
    member = _memberships.get(controller)
    if member is None:
        member = _memberships[controller] = _ProcessMembership()
        member.task = asyncio.create_task(_hold(controller, limit_name(fingerprint), member.joined, member.stop,
                                                staleness, embedded_home, api))
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
