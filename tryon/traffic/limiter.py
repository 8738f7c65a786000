"""An exact sliding-window limiter with 429 feedback (pause, back off, slow down, recover)."""

from __future__ import annotations

import asyncio
import math
from collections import deque

from tryon.settings import Limit
from tryon.traffic.clock import Clock, MonotonicClock, sleep_or_wake


def default_margin(window: float, *, answers: bool = False) -> float:
    """Safety added to a window.

    Counted from admission: 2 % of it plus 100 ms, the fixed part capped at 10 % for short
    windows. The server stamps a request when it arrives, a little after we admit it, and the
    delay varies (network, a busy event loop): the margin keeps N+1 requests from landing inside
    one of the server's windows. 60 s -> 1.3 s, 10 s -> 0.3 s, 1 s -> 0.12 s (a 10x time-scaled
    emulator), 0.1 s -> 12 ms.

    Counted from the answer (``answers``): the server stamped the request before it answered, so
    that delay is covered exactly, whatever it was; what is left is the provider's own clocks
    and how it rounds a window's edge: 1 % plus 10 ms (capped at 1 %). 60 s -> 0.61 s, 10 s ->
    0.11 s, 1 s -> 20 ms.
    """
    if answers:
        return 0.01 * window + min(0.010, 0.01 * window)
    return 0.02 * window + min(0.100, 0.1 * window)


class Admission:
    """One admitted request. With a limiter that counts from answers, it counts against every
    window as if just sent until :meth:`answered` (then from that moment on): call it once the
    answer, or the failure, is in."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: SlidingWindowLimiter | None) -> None:
        self._limiter = limiter

    def answered(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._answered(self)


class SlidingWindowLimiter:
    """Never admits more than ``limit.count`` in any window of ``limit.seconds`` (+ margin).

    It keeps the log of the last ``count`` admission times: one more may be admitted at
    ``t`` only if the ``count``-th latest admission is at least one window older than
    ``t``. Waiters queue on a FIFO lock; only the head sleeps, exactly until the next
    admission is possible (or until a pause/penalty/failure wakes it to re-check), so
    there is no polling loop and nobody overtakes.

    With ``answers``, a request counts from when its answer came back (:class:`Admission`), not
    from its admission: the server stamped it in between, so a stall between admission and send
    (a busy event loop, a full garbage collection) or a slow request cannot put N+1 in one of
    its windows, and the margin is left only the provider's clocks to cover.

    After a ``RateLimitExceeded``, :meth:`penalize` pauses admission (``Retry-After`` when
    the server sends one, else an exponential backoff starting at one slot interval) and
    slows down: each strike lowers the effective count by ``slowdown`` (never below 1);
    one strike is forgiven per quiet window, so the limiter recovers by itself.

    When processes share a key (:mod:`tryon.traffic.share`), :meth:`set_limit` gives this process
    its share: a smaller count (0 admits nothing), valid until a time after which nothing is admitted
    until the next :meth:`set_limit`.
    """

    def __init__(self, limit: Limit | tuple[int, float] | str, clock: Clock | None = None, *,
                 margin: float | None = None, name: str = "", slowdown: float = 0.8,
                 max_backoff: float | None = None, answers: bool = False) -> None:
        self.limit = Limit.parse(limit)
        self.clock: Clock = clock or MonotonicClock()
        self.answers = answers
        self.margin = default_margin(self.limit.seconds, answers=answers) if margin is None else float(margin)
        if self.margin < 0 or not 0 < slowdown <= 1:
            raise ValueError("margin must be >= 0 and slowdown in (0, 1]")
        self.window = self.limit.seconds + self.margin
        self.name = name
        self.slowdown = slowdown
        self.max_backoff = self.window if max_backoff is None else float(max_backoff)
        self._log: deque[float] = deque(maxlen=self.limit.count)  # the latest ``count`` admissions, in order
        self._unanswered: set[Admission] = set()  # with answers: counted as just sent until answered
        self._until = math.inf  # the current limit holds until then; nothing is admitted after it
        self._lock = asyncio.Lock()
        self._wake: asyncio.Future[None] | None = None
        self._paused_until = -math.inf
        self._strikes = 0
        self._strike_at = -math.inf
        self._epoch = 0
        self._failure: BaseException | None = None
        self.admitted = 0  # requests admitted so far (a member that admitted any is counted after it leaves)

    # -- state ---------------------------------------------------------------------------
    def strikes(self, now: float | None = None) -> int:
        """Penalties still in force (one is forgiven per window without a new one)."""
        if self._strikes == 0:
            return 0
        now = self.clock.now() if now is None else now
        return max(0, self._strikes - int((now - self._strike_at) // self.window))

    def effective_count(self, now: float | None = None) -> int:
        return max(min(1, self.limit.count), int(self.limit.count * self.slowdown ** self.strikes(now)))

    def next_admission(self, now: float | None = None) -> float:
        """The earliest time >= now at which one more request may be admitted."""
        now = self.clock.now() if now is None else now
        at = max(now, self._paused_until)
        n = self.effective_count(now)
        k = len(self._log) + len(self._unanswered)  # the unanswered are the newest of all
        if k >= n:
            at = max(at, self._log[k - n] + self.window) if k - n < len(self._log) else math.inf
        return at if at <= self._until else math.inf  # past it: only a new set_limit admits more

    @property
    def waiting(self) -> int:
        return len(getattr(self._lock, "_waiters", None) or ()) + (1 if self._lock.locked() else 0)

    # -- admission -----------------------------------------------------------------------
    async def acquire(self) -> Admission:
        """Wait for this request's turn; returns at the instant it is admitted."""
        epoch = self._epoch
        async with self._lock:
            while True:
                if self._epoch != epoch and self._failure is not None:
                    raise self._failure
                now = self.clock.now()
                at = self.next_admission(now)
                if at <= now:
                    self.admitted += 1
                    if not self.answers:
                        self._log.append(now)
                        return Admission(None)
                    admission = Admission(self)
                    self._unanswered.add(admission)
                    return admission
                # Unanswered ones in the way: an answer wakes us (a window at most, to check again).
                await sleep_or_wake(self.clock, min(at - now, self.window), self._wake_future())

    def _answered(self, admission: Admission) -> None:
        if admission in self._unanswered:
            self._unanswered.discard(admission)
            self._log.append(self.clock.now())  # answers come in time order
            self._notify()

    def _wake_future(self) -> asyncio.Future[None]:
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        return self._wake

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def set_limit(self, limit: Limit, until: float = math.inf) -> None:
        """Change the count (a process's share of the key; 0 admits nothing) until ``until`` (on this
        limiter's clock), after which nothing is admitted until the next call; the window stays.
        Lowering is safe at once: the log still holds this process's admissions of the current window."""
        if limit.seconds != self.limit.seconds or not 0 <= limit.count <= (self._log.maxlen or limit.count):
            raise ValueError(f"{limit} must keep the window {self.limit.seconds}s and a count in 0..{self._log.maxlen}")
        self.limit, self._until = limit, until
        self._notify()

    def recent(self, now: float | None = None) -> list[float]:
        """Admission times inside one window of ``now`` (an unanswered request as at ``now``)."""
        now = self.clock.now() if now is None else now
        return [t for t in self._log if t > now - self.window] + [now] * len(self._unanswered)

    # -- feedback ------------------------------------------------------------------------
    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` from now (extends, never shortens, a pause)."""
        self._paused_until = max(self._paused_until, self.clock.now() + max(0.0, seconds))
        self._notify()

    def penalize(self, retry_after: float | None = None) -> float:
        """Record a ``RateLimitExceeded``: pause and slow down; returns the pause applied."""
        now = self.clock.now()
        self._strikes = self.strikes(now) + 1
        self._strike_at = now
        if retry_after is not None and retry_after >= 0:
            delay = float(retry_after)
        else:
            base = self.limit.seconds / self.limit.count
            delay = min(self.max_backoff, base * 2 ** (self._strikes - 1))
        self.pause(delay)
        return delay

    def fail_waiters(self, exc: BaseException) -> None:
        """Make everyone waiting now raise ``exc``; later callers are unaffected."""
        self._epoch += 1
        self._failure = exc
        self._notify()

    def __repr__(self) -> str:
        return f"SlidingWindowLimiter({self.name or '?'} {self.limit}, margin={self.margin:.3f})"
