"""Processes sharing one key, simulated on one fake clock: each runs the share protocol of
:class:`tryon.traffic.share.KeyShare` against an in-memory count and record store (what
:mod:`flows.coordination` keeps in Prefect) and submits greedily under its controller, while the
"server" logs every admission and what is in flight. Used by ``tests/test_share.py``."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from tryon.settings import Limit
from tryon.traffic import FakeClock, TrafficController
from tryon.traffic.share import KeyShare

RUN, IN_FLIGHT, TICK = Limit(50, 60), 6, 1.0


@dataclass
class Key:
    """The provider's view of the key, and what Prefect holds about its users."""

    clock: FakeClock
    members: set[str] = field(default_factory=set)
    records: dict[str, dict] = field(default_factory=dict)
    created: list[tuple[float, str]] = field(default_factory=list)  # (time, member) of each prediction
    history: list[tuple[float, int]] = field(default_factory=list)  # (time, count) at each change
    in_flight: int = 0
    most_in_flight: int = 0
    events: bool = False  # every record also reaches every member at once, even when its write is lost
    heard: dict[str, dict] = field(default_factory=dict)  # the latest record of each member by event

    def view(self) -> list[dict]:
        """The records a member knows: the stored ones, or newer ones heard by event."""
        newest = dict(self.records)
        for name, record in self.heard.items():
            if name not in newest or record["at"] > newest[name]["at"]:
                newest[name] = record
        return list(newest.values())

    def count(self, lag: float = 0.0) -> int:
        """The count as it was ``lag`` seconds ago (a member whose Prefect calls are slow)."""
        at = self.clock.now() - lag
        seen = [n for t, n in self.history if t <= at]
        return seen[-1] if seen else 1

    def changed(self) -> None:
        self.history.append((self.clock.now(), len(self.members)))

    def wall(self) -> float:
        return 1_000_000.0 + self.clock.now()

    def most_in_window(self, seconds: float = RUN.seconds) -> int:
        times = sorted(t for t, _ in self.created)
        most, start = 0, 0
        for end, t in enumerate(times):
            while times[start] <= t - seconds:
                start += 1
            most = max(most, end - start + 1)
        return most


class Member:
    def __init__(self, key: Key, name: str, seed: int, latency: tuple[float, float] = (6.0, 10.0),
                 lag: float = 0.0, writes_every: float = 0.0) -> None:
        # lag: sees the count that late; writes_every: its record writes get through only that often
        self.key, self.name, self.latency, self.lag, self.writes_every = key, name, latency, lag, writes_every
        self._last_write = -float("inf")
        self.controller = TrafficController(RUN, Limit(50, 10), Limit(30, 10), IN_FLIGHT, clock=key.clock)
        self.share = self.controller.share = KeyShare(self.controller, wall=key.wall, member=name)
        self.rng = random.Random(seed)
        self.alive = True
        self.joined_at: float | None = None
        self.first_created: float | None = None
        self._tasks: list[asyncio.Task] = []

    def _publish(self, record: dict) -> None:
        if self.key.events:  # sent: it reached the others, stored or not (flows.coordination._publish)
            self.key.heard[self.name] = record
        if record["left"] or self.key.clock.now() - self._last_write >= self.writes_every:
            self._last_write = self.key.clock.now()
            self.key.records[self.name] = record
        elif not self.key.events:
            return  # lost in a slow server; published() not called, so it is tried again
        self.share.published(record)

    async def run(self, until: float) -> None:
        """Join, follow the key (as flows.coordination does) and submit until ``until``, then leave."""
        share = self.share
        self.joined_at = self.key.clock.now()
        share.start()
        self._publish(share.record())
        self.key.members.add(self.name)
        self.key.changed()
        share.join(len(self.key.members))
        self._tasks = [asyncio.ensure_future(self._submit(until))]
        while self.alive and not self._tasks[0].done():  # followed until the work is done
            await self.key.clock.sleep(TICK / 10 if share.urgent else TICK)
            if not self.alive:
                break
            share.observe(self.key.count(self.lag))
            share.on_records(self.key.view())
            if share.record_due:
                self._publish(share.record())
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.alive:
            self._publish(share.record(left=True))
            self.key.members.discard(self.name)
            self.key.changed()

    def kill(self) -> None:
        """Dies without a word: its predictions run on, its count goes at once (the worst case)."""
        self.alive = False
        self.key.members.discard(self.name)
        self.key.changed()
        for task in self._tasks:
            task.cancel()

    async def _submit(self, until: float) -> None:
        running: list[asyncio.Task] = []
        while self.alive and self.key.clock.now() < until:
            slot = await self.controller.acquire_slot()
            (await self.controller.acquire("run")).answered()  # the "server" answers at once
            if self.key.clock.now() >= until:
                self.controller.release_slot(slot)
                break
            now = self.key.clock.now()
            self.first_created = now if self.first_created is None else self.first_created
            self.key.created.append((now, self.name))
            self.key.in_flight += 1
            self.key.most_in_flight = max(self.key.most_in_flight, self.key.in_flight)
            # Not cancelled with the submitter: a killed member's predictions run on at the provider.
            running.append(asyncio.ensure_future(self._predict(slot)))
        await asyncio.gather(*running)

    async def _predict(self, slot) -> None:
        await self.key.clock.sleep(self.rng.uniform(*self.latency))
        self.key.in_flight -= 1
        if self.alive:
            self.controller.release_slot(slot)
