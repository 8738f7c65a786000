"""In-flight slots: how many predictions this key has running on the server right now."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass

from tryon.traffic.clock import Clock, MonotonicClock, sleep_or_wake


@dataclass(eq=False)
class Slot:
    """One prediction's place on the server, from submission until it ends."""

    id: int
    phantom: bool = False
    released_at: float | None = None

    @property
    def released(self) -> bool:
        return self.released_at is not None


class InFlightSlots:
    """A FIFO counting semaphore with handles, runtime capacity and phantom slots.

    - :meth:`acquire` waits (first come, first served) until fewer than ``capacity``
      slots are busy; :meth:`release` is idempotent and hands the slot to the next
      waiter in the same instant.
    - :meth:`hold_phantom` keeps a slot busy for a while without a caller: a prediction
      that may exist behind an ambiguous answer still occupies the key's slot on the
      server until it would have finished. A phantom may push ``busy`` above
      ``capacity``: the server counts it whether we like it or not.
    - :meth:`stop` makes waiting and later acquisitions raise (out of credits);
      releases and phantoms keep working so in-flight work can finish.
    """

    def __init__(self, capacity: int, clock: Clock | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = int(capacity)
        self.clock: Clock = clock or MonotonicClock()
        self._held: set[Slot] = set()
        self._waiters: deque[asyncio.Future[Slot]] = deque()
        self._ids = itertools.count(1)
        self._stopped: BaseException | None = None
        self._release_wake: asyncio.Future[None] | None = None
        self._expiry_tasks: set[asyncio.Task[None]] = set()
        self.releases = 0

    # -- state ---------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        """At runtime (a process's share of the key; 0 while it may admit nothing)."""
        if value < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = int(value)
        self._grant()

    @property
    def busy(self) -> int:
        return len(self._held)

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    # -- acquire / release ---------------------------------------------------------------
    def _take(self) -> Slot:
        slot = Slot(next(self._ids))
        self._held.add(slot)
        return slot

    def try_acquire(self) -> Slot | None:
        """A slot now, or None if one is not free (or others are queued first)."""
        if self._stopped is not None:
            raise self._stopped
        if self.waiting == 0 and len(self._held) < self._capacity:
            return self._take()
        return None

    async def acquire(self) -> Slot:
        slot = self.try_acquire()
        if slot is not None:
            return slot
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # granted in the same instant we were cancelled
            else:
                try:
                    self._waiters.remove(future)
                except ValueError:
                    pass
            raise

    def release(self, slot: Slot) -> bool:
        """Free ``slot`` now and hand it on; False if it was already free."""
        if slot.released or slot not in self._held:
            return False
        slot.released_at = self.clock.now()
        self._held.discard(slot)
        self.releases += 1
        if self._release_wake is not None and not self._release_wake.done():
            self._release_wake.set_result(None)
        self._grant()
        return True

    def _grant(self) -> None:
        while self._waiters and len(self._held) < self._capacity:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(self._take())

    async def wait_for_release(self, timeout: float | None = None) -> bool:
        """Wait until any slot is released (True) or ``timeout`` passes (False)."""
        if self._release_wake is None or self._release_wake.done():
            self._release_wake = asyncio.get_running_loop().create_future()
        wake = self._release_wake
        if timeout is None:
            await asyncio.shield(wake)
            return True
        return await sleep_or_wake(self.clock, timeout, wake)

    # -- phantoms ------------------------------------------------------------------------
    def hold_phantom(self, seconds: float, slot: Slot | None = None) -> Slot:
        """Keep a slot busy for ``seconds``, then free it.

        With ``slot`` (the slot of an ambiguous submission) that slot is kept; without,
        a new slot is taken at once, even over capacity.
        """
        if slot is None or slot.released or slot not in self._held:
            slot = self._take()
        slot.phantom = True
        if seconds <= 0:
            self.release(slot)
            return slot
        task = asyncio.ensure_future(self._expire(slot, seconds))
        self._expiry_tasks.add(task)
        task.add_done_callback(self._expiry_tasks.discard)
        return slot

    async def _expire(self, slot: Slot, seconds: float) -> None:
        await self.clock.sleep(seconds)
        self.release(slot)

    # -- stop / close --------------------------------------------------------------------
    def stop(self, exc: BaseException) -> None:
        """Fail every waiter and every later acquisition with ``exc``; releases still work."""
        self._stopped = exc
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(exc)
        if self._release_wake is not None and not self._release_wake.done():
            self._release_wake.set_result(None)  # let release waiters re-check

    def resume(self) -> None:
        """Acquisitions succeed again (after :meth:`stop`)."""
        self._stopped = None

    async def aclose(self) -> None:
        """Cancel phantom timers (their slots stay held: the object is being discarded)."""
        tasks = list(self._expiry_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
