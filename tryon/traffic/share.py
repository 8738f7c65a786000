"""Several processes on one API key: lease-fenced equal shares.

The rule, for each limit of the key, with W its window (the limiter's, margin included) and D the
staleness bound: a member admits a request at ``t`` only if, throughout ``[t - (W + D), t]``, it
held its membership slot under a live lease and had an answered count of the members whose read
was sent at most D earlier; it then admits at most ``1 / n`` of the limit, ``n`` the largest
count among the reads it sent in that span (in-flight slots: ``1 / n`` with the run limit's
``n``). A member stays counted until W + D after its last admission (it admits only while its lease runs that much longer, and on
leaving renews it for W + D instead of giving it back), so a newcomer whose first count shows only
itself is alone on the key: it admits at once, with ``n`` taken from its reads since then. Any
other newcomer admits nothing for W + D after its slot is granted, a member that cannot count the others admits nothing, and a smaller count takes effect
only once it has held for W + D. Why that keeps every window of every limit within the key's
count: ``docs/design.md``.

This module is that rule (:class:`KeyShare`, pure) and the loop that follows it
(:func:`hold_share`: takes the slot, renews its lease, reads the count every D/2 and gives the
:class:`~tryon.traffic.controller.TrafficController` its share), over any :class:`Membership`;
:mod:`flows.coordination` is the Prefect one (a lease-backed global concurrency limit) and
:mod:`tryon.traffic.members_file` the one for a Prefect server that goes with its process.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Mapping
from typing import Protocol

from tryon.traffic.clock import sleep_or_wake
from tryon.traffic.controller import TrafficController

log = logging.getLogger("tryon.share")


class Membership(Protocol):
    """One slot per process using the key, under a lease that lapses if not renewed, kept by
    something that outlives every member (so it counts a killed one until its lease ends)."""

    async def join(self, lease: float) -> float: ...  # take our slot; the lease granted (>= lease)

    async def renew(self, lease: float) -> float: ...  # the slot stays counted that long from now

    async def count(self) -> int: ...  # slots held now, ours included

    async def leave(self) -> None: ...  # give the slot back at once


def default_staleness(window: float) -> float:
    """D for a key whose longest window is ``window``: a sixth of it (10 s at the provider's
    60 s), at least 1 s. A join or a leave costs W + D, so D small beside W; a count is read every
    D/2 (one cheap read), and a Prefect server slower than that to answer fences the member."""
    return max(1.0, window / 6)


class KeyShare:
    """The rule: count reads in, members per limit out (0: admit nothing)."""

    def __init__(self, windows: Mapping[str, float], staleness: float) -> None:
        if staleness <= 0:
            raise ValueError("staleness must be > 0")
        self.staleness = staleness
        self.spans = {name: window + staleness for name, window in windows.items()}
        self.reset()

    def reset(self) -> None:
        """Not (surely) holding a slot: from now on, a newcomer."""
        self._reads: deque[tuple[float, int]] = deque()  # (sent, count), within the longest span
        self.fresh_since = math.inf  # reads have been fresh without a break since then
        self.fresh_until = -math.inf  # the latest read's send + D
        self.alone = False  # the first read counted only us, and none since came late

    def read(self, sent: float, answered: float, count: int) -> None:
        """A count read sent at ``sent`` answered ``count`` at ``answered`` (our clock)."""
        if answered > self.fresh_until:
            self.fresh_since = answered  # a break: fresh again only from this answer on
            self.alone = self.fresh_until == -math.inf and count <= 1  # the first read since reset
        self.fresh_until = max(self.fresh_until, sent + self.staleness)
        self._reads.append((sent, max(1, count)))
        while self._reads and self._reads[0][0] < answered - max(self.spans.values()):
            self._reads.popleft()

    def members(self, now: float) -> dict[str, int]:
        """``n`` per limit at ``now``; 0 where the reads do not cover its span."""
        if now > self.fresh_until:
            return dict.fromkeys(self.spans, 0)
        return {name: max((count for sent, count in self._reads if sent >= now - span), default=0)
                if self.alone or self.fresh_since <= now - span else 0 for name, span in self.spans.items()}

    def next_change(self, now: float) -> float:
        """When :meth:`members` may change with no new read (a span filled, a read aged out)."""
        times = [self.fresh_until, *(self.fresh_since + span for span in self.spans.values()),
                 *(sent + span for sent, _ in self._reads for span in self.spans.values())]
        return min((t for t in times if t > now), default=math.inf)


async def hold_share(membership: Membership, controller: TrafficController, joined: asyncio.Future[None],
                     stop: asyncio.Future[None], staleness: float | None = None) -> None:
    """Keep ``controller`` to its share of the key until ``stop`` is done, then leave the key.

    ``joined`` is resolved once the slot is first granted and counted (or failed with why it was
    not): a newcomer alone on the key may admit from then on.
    """
    clock = controller.clock
    windows = {name: limiter.window for name, limiter in controller.limiters.items()}
    share = KeyShare(windows, staleness or default_staleness(max(windows.values())))
    hold = max(share.spans.values())  # counted this long after our last admission
    lease = 2 * hold  # renewed every lease/4, so it runs ≥ 1.5 × hold longer: no fence between renewals
    lease_until = renew_at = -math.inf
    admitted_at_join = 0

    def admitted() -> int:
        return sum(limiter.admitted for limiter in controller.limiters.values())

    def apply() -> None:
        now = clock.now()
        controller.set_limits(controller.limits.share(share.members(now)), min(share.fresh_until, lease_until - hold))

    apply()
    try:
        while not stop.done():
            if clock.now() >= lease_until:  # never granted, or lapsed: join (again) as a newcomer
                share.reset()
                apply()
                sent = clock.now()
                try:
                    lease_until = sent + await membership.join(lease)
                except Exception as exc:
                    if not joined.done():
                        joined.set_exception(exc)
                        return
                    log.warning("could not take a slot of the key again (%s: %s)", type(exc).__name__, exc)
                    await sleep_or_wake(clock, share.staleness, stop)
                    continue
                renew_at, admitted_at_join = sent + lease / 4, admitted()
            if clock.now() >= renew_at:
                sent = clock.now()
                try:
                    lease_until, renew_at = sent + await membership.renew(lease), sent + lease / 4
                except Exception as exc:  # tried again soon; the lease still runs meanwhile
                    log.warning("could not renew the key's lease (%s: %s)", type(exc).__name__, exc)
                    renew_at = clock.now() + share.staleness / 2
            sent = clock.now()
            try:
                count = await membership.count()
                share.read(sent, clock.now(), count)
            except Exception as exc:  # fenced once the last read is D old: safe, only slower
                log.info("could not count the key's members (%s: %s)", type(exc).__name__, exc)
            apply()
            if not joined.done():
                joined.set_result(None)
            wake = min(sent + share.staleness / 2, renew_at, lease_until, share.next_change(clock.now()))
            await sleep_or_wake(clock, wake - clock.now(), stop)
    finally:
        share.reset()
        apply()  # nothing more is admitted
        if lease_until > -math.inf:
            try:  # counted W + D after our last admission (the lease already runs that long)
                lingering = admitted() > admitted_at_join
                await (membership.renew(hold) if lingering else membership.leave())
            except Exception as exc:  # the lease lapses by itself
                log.info("could not leave the key (%s: %s)", type(exc).__name__, exc)
