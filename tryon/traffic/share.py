"""One key used by several processes at once: each takes an equal share of it.

Counting the processes and carrying their records is someone else's job
(:mod:`flows.coordination` does both through Prefect: a lease-backed global concurrency limit
counts the members, one Prefect variable per member holds its record, and a Prefect event
carries each record to the others at once); this is the policy,
pure asyncio and testable on a fake clock. Every member takes ``1 / members`` of each limit and
of the in-flight slots, and:

- **shrinks at once** when more processes use the key: our sliding windows already hold our
  recent admissions, so a lower count just admits less from now on;
- **acknowledges** a newcomer: once its in-flight predictions fit its share, it publishes a
  :meth:`record` with its *excess*, the admissions of the current windows beyond ``s`` (``s``
  its share of that limit; seeded admissions it answers for included), and offers them: every
  later record of its repeats them while they may be in a window, so a newcomer that starts on any
  of those counts them, and they leave its windows once a newcomer's record says it started on one
  (until then both count them: dropped at once, an offer made after the newcomer had started on
  an earlier record would reach nobody's window). The excess is spread
  evenly over the window, not the oldest, so that both keep admissions expiring all through it
  at about their share's rate (handing over the oldest left the incumbent none expiring, and its
  slots idle, for a third of a window). From then on it admits only while its window holds fewer
  than ``s``. It publishes when the count grows, when a waiting newcomer's record is newer than
  its own (the count may not have changed: one left as another came), and every heartbeat;
- **a newcomer** holds every limiter until every member that may be alive (a record that is
  not a leave and is younger than heartbeat + settle and the lease) has acknowledged it with a record taken
  after it joined, fitting, and with shares that fit in the key together with its own. It then
  seeds their excess, and takes over members that left within a window (their admissions and
  phantoms), and starts: together the members stay within every limit in every window, and in
  flight. It then publishes which record of each member it started on. The settle period alone
  never ends the wait while such a member may be alive: one whose Prefect calls are slow may not
  have seen the newcomer yet (measured: 6.8 s late at a
  10x time scale, 429s followed), and a record proves its member dead only once it is older than
  heartbeat + settle and than the membership lease (its writes may be slow: 13 x 429 in CI at
  20x when a window-scaled age was enough). When the count shows members no record does
  (records unreadable, members that keep none) the hold ends after one settle period, the wait
  that needs no knowledge;
- **a member that leaves** publishes its admissions of the current windows and what it may
  still have running (phantoms) before its membership goes; the one left alone takes them over
  and the whole key at once, as soon as every other member counted has such a record (it need
  not wait for the count to fall: every member writes a record before it is counted).
  Otherwise (a member vanished without a record, or others remain) a larger share is taken
  only once the count has not changed for a settle period: a member that left during it may
  still own admissions in the window even if another took its place; and never for fewer
  members than the records show running (one whose lease lapsed is not counted, but runs).

Records are plain JSON (times as milliseconds before the record's wall-clock time, so they
fit a Prefect variable); clocks of the processes are assumed to agree within the limiter's
margin (1 % of a window plus 10 ms), as NTP keeps them.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable

from tryon.settings import Limit
from tryon.traffic.limiter import without

Record = dict  # JSON: member, members, at, left, fits, waiting, excess {endpoint: [ms before at]}, in_flight [s]


def _spread(times: list[float], n: int) -> list[float]:
    """``n`` of ``times`` (oldest first), evenly spread over them: the excess we hand over (why
    spread, not the oldest: see the module docstring)."""
    if n >= len(times):
        return list(times)
    return [t for i, t in enumerate(times) if (i + 1) * n // len(times) > i * n // len(times)]


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
        self._waiting_since = 0.0
        self._refresh = False  # a newcomer published after our latest record: it needs a newer one
        self.published_members = 0  # the count our latest record acknowledged
        # The count our hand-overs answer for: only a growth beyond it (or a newcomer waiting) makes
        # a record hand our excess over. A newcomer's own count needs none.
        self.acknowledged = 1
        self.published_at = -float("inf")  # wall time of our latest record
        self.heartbeat = self.settle  # a live member publishes at least this often
        self.lease = 60.0  # seconds a dead member may still be counted (the membership lease)
        self.latest = 1  # the latest count seen
        self._alive_others = 0  # other members whose records say they may be running
        self._taken: set[tuple[str, float]] = set()  # leave records taken over: (member, at)
        # Admissions handed over in an acknowledgement: offered first (still in our windows, and in
        # every record of ours), handed once a newcomer says it started on a record that carried
        # them (no longer in our windows: it answers for them; still in our records while they may
        # be in a window). Forgotten at once, a hand-over made after the newcomer had started on an
        # earlier record would reach nobody's window.
        self._handed: dict[str, list[float]] = {name: [] for name in controller.limiters}
        self._offered: list[tuple[float, dict[str, list[float]]]] = []  # (record time, times) not confirmed
        self._handing: tuple[float, dict[str, list[float]]] | None = None  # (record time, times)
        self.started_on: dict[str, float] = {}  # a newcomer's: the record of each member it seeded
        self._announce = False  # started: the others need a record saying on which of theirs
        self._steady: tuple[float, int] = (-math.inf, 1)  # since when the count has been what it is

    # -- counting ------------------------------------------------------------------------
    def _apply(self, members: int) -> None:
        self.members = members
        self.acknowledged = min(self.acknowledged, members)  # a growth back needs a hand-over again
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
        self._steady = (self.controller.clock.now(), members)
        if members == 1 < self.members:  # alone now, not when we last used the key: grow late
            self.observe(members)  # (or at once, once the others' records show they left)
            return
        self._apply(members)  # a stale larger count would only delay the acknowledgements
        self.acknowledged = members
        self._offered, self.started_on, self._announce = [], {}, False  # offers still in our windows
        if members > 1:
            self.waiting = True
            self._waiting_since = self.controller.clock.now()
            for limiter in self.controller.limiters.values():
                limiter.hold(math.inf)  # until on_records lifts it

    def observe(self, members: int) -> None:
        """The latest count of users of the key (us included)."""
        members = self.latest = max(1, members)
        now = self.controller.clock.now()
        if members != self._steady[1]:
            self._steady = (now, members)
        if members > self.members:
            self._apply(members)
        # Grow late: only once the count has not changed for a settle period. Any member that
        # left before then has no admissions in the window any more; one that left during it
        # may, even if another took its place (the largest count over the period is not enough).
        elif members < self.members and now - self._steady[0] >= self.settle:
            # Never below what the records show running: a member whose lease lapsed (its renewal
            # failed) is no longer counted but goes on at its share, and publishes.
            self._apply(min(self.members, max(members, 1 + self._alive_others)))

    # -- records -------------------------------------------------------------------------
    @property
    def fits(self) -> bool:
        """Our predictions in flight fit our share (a record may promise it)."""
        return self.controller.slots.busy <= self.controller.slots.capacity

    @property
    def urgent(self) -> bool:
        """Someone waits: we for acknowledgements, a newcomer for our record, or we are alone
        and the others' records may let us take the whole key."""
        return self.waiting or self.members > self.published_members or self._refresh or self._announce or \
            bool(self._offered) or (self.members > 1 and self.latest == 1)

    @property
    def record_due(self) -> bool:
        """A record should go out: the count grew since our last one and our in-flight fits the
        new share (a newcomer waits for it), or the heartbeat is due (the others tell a live
        member from a dead one by it)."""
        return ((self.members > self.published_members or self._refresh) and self.fits) or self._announce or \
            self.wall() - self.published_at >= self.heartbeat

    def record(self, *, left: bool = False) -> Record:
        """What the others need of us now: our excess over our share in every window (all our
        admissions when leaving) and, when leaving, how long what we may have running lasts."""
        now, wall = self.controller.clock.now(), self.wall()
        excess: dict[str, list[int]] = {}
        handing: dict[str, list[float]] = {}
        # Only a record a newcomer waits for hands anything over: it seeds what it starts on. Handed
        # in a heartbeat, the excess (a leaver's admissions taken over by two members, ...) would
        # leave our windows and reach nobody's.
        acknowledging = self.members > self.acknowledged or self._refresh
        self._offered = [offer for offer in self._offered if any(  # no longer in any window: nothing to offer
            t > now - self.controller.limiters[name].window for name, times in offer[1].items() for t in times)]
        for name, limiter in self.controller.limiters.items():
            # Seeded admissions too: a member that took over a leaver's window answers for it.
            own = limiter.recent(now)
            offered = [t for _, times in self._offered for t in times[name] if t > now - limiter.window]
            free = without(own, offered)  # offered already: not again (a confirmation forgets each once)
            keep = 0 if left else limiter.limit.count if acknowledging else len(free)
            handing[name] = _spread(free, max(0, len(free) - keep))
            self._handed[name] = [t for t in self._handed[name] if t > now - limiter.window]
            # Rounded down to the millisecond: a later time than the truth, so it expires later.
            excess[name] = [int((now - t) * 1000) for t in sorted(self._handed[name] + offered + handing[name])]
        record: Record = {"member": self.member, "members": 0 if left else self.members, "at": wall,
                          "left": left, "fits": self.fits and not left, "waiting": self.waiting and not left,
                          "excess": excess}
        if self.started_on:
            record["started_on"] = dict(self.started_on)
        self._handing = (wall, handing) if record["fits"] else None
        if left:
            record["in_flight"] = [round(self._remaining(slot, now), 3) for slot in self.controller.slots.held]
        return record

    def published(self, record: Record) -> None:
        """``record`` reached the others."""
        self.published_at = record["at"]
        if self._handing is not None and self._handing[0] == record["at"] and any(self._handing[1].values()):
            # An acknowledgement: we keep to our share from now on, and whoever starts on it seeds
            # our excess; our windows drop it once one says it did (until then both count it).
            self._offered.append(self._handing)
        self._handing = None
        if record.get("started_on"):
            self._announce = False
        if record["fits"] or record["left"]:
            self.published_members = record["members"]
            self.acknowledged = max(self.acknowledged, record["members"])
            self._refresh = False

    def _remaining(self, slot, now: float) -> float:
        if slot.expires_at is not None:
            return max(0.0, slot.expires_at - now)
        return self.controller.latency.expected_duration(("tryon-v1.6", "balanced"))

    def _seed(self, record: Record) -> None:
        now, age = self.controller.clock.now(), max(0.0, self.wall() - record["at"])
        for name, limiter in self.controller.limiters.items():
            limiter.seed([min(now, now - age - ms / 1000) for ms in record.get("excess", {}).get(name, [])])

    def _take_over(self, record: Record) -> None:
        """Answer for a leaver's admissions and what it may still have running (once per record:
        a second take-over would count them twice)."""
        taken = (str(record.get("member")), float(record.get("at", 0)))
        if taken in self._taken:
            return
        self._taken.add(taken)
        self._seed(record)
        age = max(0.0, self.wall() - record["at"])
        for seconds in record.get("in_flight", []):
            if seconds > age:
                self.controller.slots.hold_phantom(seconds - age)

    def on_records(self, records: Iterable[Record]) -> None:
        """The records of the key's members as read now: start a waiting newcomer once every
        other member has acknowledged it; take the whole key when alone and the others left."""
        others = [r for r in records if r.get("member") != self.member]
        self._confirm(others)
        alive = [r for r in others if not r.get("left") and self._recent(r)]
        self._alive_others = len(alive)
        if any(r.get("waiting") and self._recent(r) and r.get("at", 0) > self.published_at for r in others):
            self._refresh = True  # it accepts only records taken after it joined
        if self.waiting and self.joined_at is not None:
            # Every member that may be alive must have acknowledged us, not just as many as the
            # count says: a dead member's acknowledgement must not stand in for a live one's.
            # The settle period alone is not enough while one of them may be alive: a member whose
            # Prefect calls are slow may not have seen us yet, and still use its whole share.
            # A record's age proves its member dead only once it is older than the membership
            # lease too: a live member whose Prefect writes are slow publishes late (seconds, on a
            # loaded SQLite server) while it is still counted; a killed one is no longer counted,
            # or, if the server is slow to expire its lease, is outwaited after one lease.
            acks = [r for r in alive if r.get("fits") and r.get("at", 0) >= self.joined_at and r.get("members", 0) > 0]
            # Each keeps to its share from its record on, so the shares must fit in the key.
            shares = sum(1 / r["members"] for r in acks) + 1 / self.members
            # As many as the count says; or, with members the records do not show (records
            # unreadable, members that keep none), once every member has had a window to see us.
            counted = len(acks) >= self.latest - 1 or \
                self.controller.clock.now() - self._waiting_since >= self.settle
            if len(acks) == len(alive) and shares <= 1 + 1e-9 and counted:
                # A member that left within a window still has admissions in it, and nobody else
                # answers for them unless it took them over (then its excess holds them too).
                for record in acks:
                    self._seed(record)
                self.started_on = {str(r["member"]): r["at"] for r in acks}
                self._announce = bool(acks)
                for record in others:
                    if self._left_recently(record):
                        self._take_over(record)
                self.waiting = False
                for limiter in self.controller.limiters.values():
                    limiter.release_hold()
        if self.members > 1:
            self._grow_if_the_others_left(others, alive)

    def _confirm(self, others: list[Record]) -> None:
        """A newcomer started on a record of ours: it answers for what that record offered (and
        every earlier offer, which that record repeated), so our windows drop it."""
        seeded = max((r.get("started_on", {}).get(self.member, -math.inf) for r in others), default=-math.inf)
        while self._offered and self._offered[0][0] <= seeded:
            for name, times in self._offered.pop(0)[1].items():
                self.controller.limiters[name].forget(times)
                self._handed[name] += times

    def _left_recently(self, record: Record) -> bool:
        """A leave within a window: its admissions may still be in one."""
        return bool(record.get("left")) and self.wall() - record.get("at", 0) < self.settle

    def _recent(self, record: Record) -> bool:
        """Its member may still be alive, or died too recently for its admissions to have expired:
        a live member publishes every heartbeat unless its writes are slow, and a dead one may be
        counted for one membership lease."""
        return self.wall() - record.get("at", 0) < max(self.heartbeat + self.settle, self.lease)

    def _grow_if_the_others_left(self, others: list[Record], alive: list[Record]) -> None:
        # Only when alone: every other member counted left a record saying so (a leaver writes it
        # before its membership goes, so we need not wait for the count to fall; a newcomer writes
        # its first record before it is counted, and these records were read after the count).
        # No other member can then be mid-way through a shrink, so the leavers' admissions and
        # phantoms are all there is to account for.
        if alive:
            return  # alive, joining, or killed recently: grow late
        gone = [record for record in others if self._left_recently(record)]
        if self.latest - 1 > len(gone):
            return  # counted members we have no record of: grow late
        for record in gone:
            self._take_over(record)
        self._offered = []  # nobody started on them: they stay in our windows
        self._apply(1)

    def __repr__(self) -> str:
        return f"KeyShare(1/{self.members} of the key, settle={self.settle:g}s)"
