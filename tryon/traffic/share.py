"""One key used by several processes at once: each takes an equal share of it.

Counting the processes and carrying their records is someone else's job
(:mod:`flows.coordination` does both through Prefect: a lease-backed global concurrency limit
counts the members, one Prefect variable per member holds its record); this is the policy,
pure asyncio and testable on a fake clock. Every member takes ``1 / members`` of each limit and
of the in-flight slots, and:

- **shrinks at once** when more processes use the key: our sliding windows already hold our
  recent admissions, so a lower count just admits less from now on;
- **acknowledges** the newcomer: once its in-flight predictions fit its new share, it
  publishes a :meth:`record` with its *excess*, the admissions of the current windows beyond
  the ``s`` newest (``s`` its share of that limit). From then on it admits only while its
  window holds fewer than ``s``, so in any later window it has at most ``max(s, admissions
  before the record)``, which is ``s`` plus the excess still in that window;
- **a newcomer** holds every limiter until each other member has acknowledged it (a record
  taken after it joined, with a count that includes it), then seeds its limiters with their
  excess and starts: the members together stay within the key's limits in every window, and
  in flight (each fits its share). If an acknowledgement does not come (a member died, or
  records cannot be read) the hold ends after one settle period (the longest window), the
  safe wait without any knowledge;
- **a member that leaves** publishes its own admissions of the current windows and what it
  may still have running (phantoms); the one left alone seeds them and takes the whole key at
  once. When a member vanished without a record (killed) or another may still be joining,
  the larger share is taken only after the lower count has held for one settle period.

Records are plain JSON (times as milliseconds before the record's wall-clock time, so they
fit a Prefect variable); clocks of the processes are assumed to agree within the limiter's
margin (100 ms), as NTP keeps them.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable

from tryon.settings import Limit

Record = dict  # JSON: member, members, at, left, fits, excess {endpoint: [ms before at]}, in_flight [s]


class KeyShare:
    """Scales a :class:`~tryon.traffic.TrafficController` to ``1 / members`` of the key."""

    def __init__(self, controller, settle: float | None = None, *,
                 wall: Callable[[], float] = time.time, member: str | None = None) -> None:
        self.controller = controller
        self.base_limits: dict[str, Limit] = {name: lim.limit for name, lim in controller.limiters.items()}
        self.base_capacity: int = controller.slots.capacity
        self.settle = max(lim.window for lim in controller.limiters.values()) if settle is None else settle
        self.wall = wall
        self.member = member or uuid.uuid4().hex[:12]
        self.members = 1
        self.peak_members = 1
        self.joined_at: float | None = None  # wall time, taken before our membership was counted
        self.waiting = False  # a newcomer, until every other member has acknowledged it
        self.published_members = 0  # the count our latest record acknowledged
        self.published_at = -float("inf")  # wall time of our latest record
        self.heartbeat = self.settle  # a live member publishes at least this often
        self.latest = 1  # the latest count seen
        self._counts: deque[tuple[float, int]] = deque()  # (time, count) while fewer than our share's

    # -- counting ------------------------------------------------------------------------
    def _apply(self, members: int) -> None:
        self.members = members
        self.peak_members = max(self.peak_members, members)
        for name, limiter in self.controller.limiters.items():
            base = self.base_limits[name]
            limiter.set_limit(Limit(max(1, base.count // members), base.seconds))
        self.controller.slots.capacity = max(1, self.base_capacity // members)

    def start(self) -> None:
        """About to be counted among the key's users (call before taking the membership)."""
        self.joined_at = self.wall()

    def join(self, members: int) -> None:
        """We just became one of ``members`` users of the key: wait for the others' records."""
        members = self.latest = max(1, members)
        if self.joined_at is None:
            self.start()
        if members == 1 < self.members:  # alone now, not when we last used the key: grow late
            self.observe(members)  # (or at once, once the others' records show they left)
            return
        self._apply(members)  # a stale larger count would only delay the acknowledgements
        if members > 1:
            self.waiting = True
            for limiter in self.controller.limiters.values():
                limiter.hold(self.settle)

    def observe(self, members: int) -> None:
        """The latest count of users of the key (us included)."""
        members = self.latest = max(1, members)
        now = self.controller.clock.now()
        if members >= self.members:
            self._counts.clear()
            if members > self.members:
                self._apply(members)
            return
        # Grow late: to the largest count seen over the last settle period, once we have seen
        # all of it. A member that left at any moment of it may still own admissions in it.
        self._counts.append((now, members))
        while len(self._counts) > 1 and self._counts[1][0] <= now - self.settle:
            self._counts.popleft()
        if self._counts[0][0] <= now - self.settle:
            target = max(count for _, count in self._counts)
            if target < self.members:
                self._apply(target)
            if target == members:
                self._counts.clear()

    # -- records -------------------------------------------------------------------------
    @property
    def fits(self) -> bool:
        """Our predictions in flight fit our share (a record may promise it)."""
        return self.controller.slots.busy <= self.controller.slots.capacity

    @property
    def record_due(self) -> bool:
        """A record should go out: the count grew since our last one and our in-flight fits the
        new share (a newcomer waits for it), or the heartbeat is due (the others tell a live
        member from a dead one by it)."""
        return (self.members > self.published_members and self.fits) or \
            self.wall() - self.published_at >= self.heartbeat

    def record(self, *, left: bool = False) -> Record:
        """What the others need of us now: our excess over our share in every window (all our
        admissions when leaving) and, when leaving, how long what we may have running lasts."""
        now, wall = self.controller.clock.now(), self.wall()
        excess: dict[str, list[int]] = {}
        for name, limiter in self.controller.limiters.items():
            # Seeded admissions too: a member that took over a leaver's window answers for it.
            own = limiter.recent(now)
            keep = 0 if left else limiter.limit.count
            # Rounded down to the millisecond: a later time than the truth, so it expires later.
            excess[name] = [int((now - t) * 1000) for t in own[: max(0, len(own) - keep)]]
        record: Record = {"member": self.member, "members": 0 if left else self.members, "at": wall,
                          "left": left, "fits": self.fits and not left, "excess": excess}
        if left:
            record["in_flight"] = [round(self._remaining(slot, now), 3) for slot in self.controller.slots.held]
        return record

    def published(self, record: Record) -> None:
        """``record`` reached the others."""
        self.published_at = record["at"]
        if record["fits"] or record["left"]:
            self.published_members = record["members"]

    def _remaining(self, slot, now: float) -> float:
        if slot.expires_at is not None:
            return max(0.0, slot.expires_at - now)
        return self.controller.latency.expected_duration(("tryon-v1.6", "balanced"))

    def _seed(self, record: Record) -> None:
        now, age = self.controller.clock.now(), max(0.0, self.wall() - record["at"])
        for name, limiter in self.controller.limiters.items():
            limiter.seed([min(now, now - age - ms / 1000) for ms in record.get("excess", {}).get(name, [])])

    def on_records(self, records: Iterable[Record]) -> None:
        """The records of the key's members as read now: start a waiting newcomer once every
        other member has acknowledged it; take the whole key when alone and the others left."""
        others = [r for r in records if r.get("member") != self.member]
        if self.waiting and self.joined_at is not None:
            # Every member that may be alive must have acknowledged us, not just as many as the
            # count says: a dead member's acknowledgement must not stand in for a live one's.
            alive = [r for r in others if not r.get("left") and self._recent(r)]
            acks = [r for r in alive
                    if r.get("fits") and r.get("at", 0) >= self.joined_at and r.get("members", 0) >= self.members]
            if len(acks) == len(alive) and len(acks) >= self.members - 1:
                for record in acks:
                    self._seed(record)
                self.waiting = False
                for limiter in self.controller.limiters.values():
                    limiter.release_hold()
        if self.members > 1 and self.latest == 1:
            self._grow_if_the_others_left(others)

    def _recent(self, record: Record) -> bool:
        """Its member may still be alive, or died too recently for its admissions to have expired
        (a live member publishes at least every heartbeat)."""
        return self.wall() - record.get("at", 0) < self.heartbeat + self.settle

    def _grow_if_the_others_left(self, others: list[Record]) -> None:
        # Only when alone (the count fell to 1): no other member can be mid-way through a
        # shrink, so the leavers' admissions and phantoms are all there is to account for.
        wall = self.wall()
        gone = []
        for record in others:
            if record.get("left"):
                if wall - record.get("at", 0) < self.settle:
                    gone.append(record)
            elif self._recent(record):
                return  # alive, joining, or killed recently: grow late
        for record in gone:
            self._seed(record)
            for seconds in record.get("in_flight", []):
                self.controller.slots.hold_phantom(max(0.0, seconds - max(0.0, wall - record["at"])))
        self._counts.clear()
        self._apply(1)

    def __repr__(self) -> str:
        return f"KeyShare(1/{self.members} of the key, settle={self.settle:g}s)"
