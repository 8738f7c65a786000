"""Clocks: the one seam through which the traffic controller reads and spends time.

Production code uses :class:`MonotonicClock`. Tests use :class:`FakeClock`, whose time
only moves when a driver (``advance`` / ``run``) moves it, so a test of minutes of
traffic runs in milliseconds and every admission time is exact.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic seconds and a way to wait for them to pass."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time: ``time.monotonic`` (the default event loop's clock) and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def sleep_or_wake(clock: Clock, seconds: float, wake: asyncio.Future[None]) -> bool:
    """Sleep ``seconds`` on ``clock`` unless ``wake`` completes first; True if woken.

    ``wake`` is never cancelled here, so one future can wake many sleepers.
    """
    if wake.done():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({sleeper, wake}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not sleeper.done():
            sleeper.cancel()
    return wake.done()


class FakeClock:
    """Virtual time for tests.

    ``sleep`` registers a timer and waits; time moves only when a driver calls
    :meth:`advance` (move by a fixed amount, firing timers on the way) or :meth:`run`
    (run an awaitable to completion, jumping to the next timer whenever every task is
    blocked). Before each jump the driver lets the event loop run until nothing is
    ready, so "all tasks are waiting" is checked, not guessed.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._now + seconds, next(self._seq), future))
        await future

    def next_deadline(self) -> float | None:
        while self._timers and self._timers[0][2].done():  # cancelled sleepers
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    @staticmethod
    async def settle(max_rounds: int = 100_000) -> None:
        """Yield to the event loop until no callback is ready (every task is blocked)."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # CPython's queue of runnable callbacks
        rounds = max_rounds if ready is not None else 200
        for _ in range(rounds):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                return

    def _fire_due(self) -> None:
        while self._timers and self._timers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._timers)
            if not future.done():
                future.set_result(None)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer due on the way, in order."""
        target = self._now + seconds
        while True:
            await self.settle()
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            self._now = max(self._now, deadline)
            self._fire_due()
        self._now = max(self._now, target)
        await self.settle()

    async def run(self, awaitable: Awaitable[T], *, limit: float = 1e7) -> T:
        """Await ``awaitable`` while jumping virtual time from timer to timer.

        Raises ``RuntimeError`` if everything is blocked with no timer left (a deadlock:
        a liveness failure) and ``TimeoutError`` past ``limit`` virtual seconds.
        """
        task = asyncio.ensure_future(awaitable)
        start = self._now
        try:
            while True:
                await self.settle()
                if task.done():
                    return task.result()
                deadline = self.next_deadline()
                if deadline is None:
                    raise RuntimeError(f"deadlock at t={self._now:.6f}: tasks wait but no timer is pending")
                if deadline - start > limit:
                    raise TimeoutError(f"not done after {limit} virtual seconds")
                self._now = max(self._now, deadline)
                self._fire_due()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
