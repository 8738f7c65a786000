"""Several processes on one API key: counted through Prefect, each taking an equal share.

Every process that runs items on a key holds one slot of the global concurrency limit
``tryon-key-<fingerprint>`` for as long as it does, under a lease that Prefect renews in the
background and lets lapse if the process dies. The number of slots held is the number of
processes using the key; :class:`tryon.traffic.share.KeyShare` scales this process's
limiters and in-flight slots to its share. Per-call decisions stay in the process (exact,
no round trip); Prefect is asked once at start and then every ``interval`` seconds.

Flow runs of one process share one controller and so count once (reference counted).
If the Prefect API cannot be reached, the process runs alone on its full share and says so
in a warning: the controller still backs off on any 429 it draws.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency

from tryon.traffic import TrafficController

MAX_MEMBERS = 64  # the limit is a counter, not a gate: never make a process wait for it
LEASE_SECONDS = 60.0
log = logging.getLogger("tryon.coordination")


@dataclass
class _Membership:
    users: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


_memberships: dict[int, _Membership] = {}


def limit_name(fingerprint: str) -> str:
    return f"tryon-key-{fingerprint}"


async def count_members(name: str) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def _hold(controller: TrafficController, name: str, stop: asyncio.Event, joined: asyncio.Future) -> None:
    """Hold our slot (entered and left in this one task, as Prefect's lease renewal needs),
    and keep the share in step with the count until ``stop``."""
    try:
        async with get_client() as client:
            await client.upsert_global_concurrency_limit_by_name(name, MAX_MEMBERS)
        async with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True,
                               raise_on_lease_renewal_failure=False):
            members = await count_members(name)
            controller.share.join(members)
            joined.set_result(members)
            # Often enough that the others shrink well within a newcomer's settle period.
            interval = min(5.0, max(0.25, controller.share.settle / 6))
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                    break
                try:
                    controller.share.observe(await count_members(name))
                except Exception as exc:  # keep the last share; try again next time
                    log.warning("could not count the processes using this key (%s: %s)", type(exc).__name__, exc)
    except Exception as exc:
        if not joined.done():
            joined.set_exception(exc)
        else:
            log.warning("left the key's membership early (%s: %s)", type(exc).__name__, exc)


@contextlib.asynccontextmanager
async def key_membership(controller: TrafficController, fingerprint: str) -> AsyncIterator[None]:
    """Count this process among the users of the key while the block runs."""
    membership = _memberships.setdefault(id(controller), _Membership())
    membership.users += 1
    try:
        if membership.users == 1:
            joined: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            membership.task = asyncio.create_task(_hold(controller, limit_name(fingerprint), membership.stop, joined))
            try:
                members = await joined
                if members > 1:
                    log.info("%d processes use this key: this one takes 1/%d of it, starting in %.1fs",
                             members, members, controller.share.settle)
            except Exception as exc:
                log.warning("running alone on the key: cannot register with Prefect (%s: %s)",
                            type(exc).__name__, exc)
        yield
    finally:
        membership.users -= 1
        if membership.users == 0:
            _memberships.pop(id(controller), None)
            membership.stop.set()
            if membership.task is not None:
                with contextlib.suppress(BaseException):
                    await membership.task
            controller.share.observe(1)  # grows back only after the settle period
