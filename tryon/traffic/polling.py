"""One poll scheduler per key: a single loop spends the status budget on every prediction waited on.

Which prediction each status call goes to, and when each is due, is the
:class:`~tryon.traffic.poll_policy.PollPolicy`'s (its docstring has the numbers); the scheduler
runs the loop: it waits until one is due, takes an admission from the status limiter, launches
the call, and answers the waiter when the prediction ends. Calls are paced at the budget's rate
(``window / count`` apart): the sliding-window limiter alone would let a burst of ``count``
through and then nothing for the rest of the window, and during that gap completions go
unnoticed. The pace quickens while the window has room: a step shrinks with the share of the
window's count already spent, down to ``quickest`` (0.6) of it, so what a quiet spell left
unspent goes to the completions that cluster after it, and a busy spell settles back to the even
pace as the window fills. A webhook's confirmation (:meth:`PollScheduler.hint`) goes at once,
past the pacing (the limiter still holds the budget).

Bound (the test proves it on random loads): a prediction is polled again at most
``widest + ceil(P / N) * W' + W / N`` after its previous poll (``widest``: the longest of
those intervals so far, :attr:`PollPolicy.widest`), with ``P`` predictions
waiting and the status limit ``N`` per ``W`` (``W'``: window + margin). The limiter, not
this policy, is what guarantees the budget is never exceeded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from tryon.errors import OutOfCredits, ServerError, TooManyRequests, TransportError
from tryon.models import Prediction
from tryon.traffic.clock import Clock, MonotonicClock, sleep_or_wake
from tryon.traffic.latency import Profile
from tryon.traffic.limiter import Admission
from tryon.traffic.poll_policy import PollFn, PollPolicy, Waiting

TRANSIENT_POLL_ERRORS: tuple[type[BaseException], ...] = (TooManyRequests, ServerError, TransportError)


class PollScheduler:
    """Polls many predictions through one status budget, the most likely finished first."""

    def __init__(self, acquire: Callable[[], Awaitable[Admission]], clock: Clock | None = None,
                 policy: PollPolicy | None = None, *,
                 budget: Callable[[], float] | None = None, fill: Callable[[], float] | None = None,
                 quickest: float = 0.6, transient_errors: tuple[type[BaseException], ...] = TRANSIENT_POLL_ERRORS,
                 max_transient_errors: int = 8) -> None:
        self._acquire = acquire
        # Status calls per second this process may make (it changes when processes share a key);
        # None: no pacing, the limiter alone.
        self.budget = budget
        # The share of the current window's count already spent (None: always the even pace),
        # and the shortest step, as a share of the even one.
        self.fill = fill
        if not 0 < quickest <= 1:
            raise ValueError("quickest must be within (0, 1]")
        self.quickest = quickest
        self.clock: Clock = clock or MonotonicClock()
        self.policy = policy or PollPolicy()
        self.transient_errors = transient_errors
        self.max_transient_errors = max_transient_errors
        self._next_send = -math.inf
        self._wake: asyncio.Future[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[Waiting, None] = {}  # in arrival order: ties go to the oldest, every run alike
        self._by_id: dict[str, Waiting] = {}

    # -- public --------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._active)

    def first_poll_delay(self, profile: Profile) -> float:
        """When a prediction submitted now would be first polled (:meth:`PollPolicy.first_poll_delay`)."""
        return self.policy.first_poll_delay(profile, self._probing(profile))

    def _probing(self, profile: Profile) -> int:
        return sum(1 for entry in self._active if entry.profile == profile and entry.probe is not None)

    async def wait(self, prediction_id: str, *, profile: Profile, poll: PollFn,
                   submitted_at: float | None = None, timeout: float | None = None,
                   on_terminal: Callable[[Prediction], None] | None = None,
                   pushed: bool = False, hinted: bool = False) -> Prediction:
        """Poll ``prediction_id`` until it is terminal and return that answer.

        ``pushed``: a webhook will say when it ends (see :meth:`hint`); ``hinted``: one already did.

        ``poll`` errors propagate to this caller (``NotFound`` ...), except transient
        ones (429, 5xx, transport), which are retried with backoff up to
        ``max_transient_errors`` in a row. ``TimeoutError`` once ``timeout`` seconds
        have passed since ``submitted_at`` (default: now) without a terminal answer.
        ``on_terminal`` runs the moment the terminal answer arrives (to free a slot).
        """
        now = self.clock.now()
        t0 = now if submitted_at is None else submitted_at
        deadline = math.inf if timeout is None else t0 + timeout
        profile = (str(profile[0]), str(profile[1]))
        probe = None if pushed else self.policy.probe_age(profile, self._probing(profile))
        delay = self.policy.pushed_delay(profile) if pushed else self.first_poll_delay(profile)
        entry = Waiting(prediction_id, profile, poll, asyncio.get_running_loop().create_future(), t0, deadline,
                        min(t0 + delay, deadline), probe, on_terminal, pushed=pushed,
                        hinted_at=now if hinted else None)
        self._active[entry] = None
        self._by_id[prediction_id] = entry
        entry.future.add_done_callback(lambda _: self._forget(entry))
        self._kick()
        return await entry.future

    def _forget(self, entry: Waiting) -> None:
        self._active.pop(entry, None)
        if self._by_id.get(entry.prediction_id) is entry:
            del self._by_id[entry.prediction_id]

    def hint(self, prediction_id: str) -> bool:
        """A webhook said ``prediction_id`` ended: confirm it before any other poll. False if it is
        not waited on here (ended already, or never ours)."""
        entry = self._by_id.get(prediction_id)
        if entry is None or entry.future.done():
            return False
        if entry.hinted_at is None:
            entry.hinted_at = self.clock.now()
            entry.not_before = 0.0
        self._kick()
        return True

    async def aclose(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all(RuntimeError("poll scheduler closed"))

    # -- choosing ------------------------------------------------------------------------
    def _choose(self, now: float) -> tuple[Waiting | None, Waiting | None, float]:
        """(the most urgent ready entry, the most urgent idle one at all, when the next is ready)."""
        ready: tuple[float, Waiting] | None = None
        idle: tuple[float, Waiting] | None = None
        wake_at = math.inf
        for entry in self._active:
            if entry.busy or entry.future.done():
                continue
            score, at = self.policy.urgency(entry, now)
            if idle is None or score > idle[0]:
                idle = (score, entry)
            if score >= self.policy.likelihood or at <= now:  # (at <= now: the grid's rounding)
                if ready is None or score > ready[0]:
                    ready = (score, entry)
            else:
                wake_at = min(wake_at, at)
        return (ready[1] if ready else None), (idle[1] if idle else None), wake_at

    # -- the loop ------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._run())

    def _fail_all(self, exc: BaseException) -> None:
        for entry in list(self._active):
            if not entry.future.done():
                entry.future.set_exception(exc)

    async def _run(self) -> None:
        try:
            while self._active:
                now = self.clock.now()
                ready, _, wake_at = self._choose(now)
                if ready is None:
                    self._wake = asyncio.get_running_loop().create_future()
                    await sleep_or_wake(self.clock, min(wake_at - now, 3600.0), self._wake)
                    continue
                if now < self._next_send and now < ready.deadline and ready.hinted_at is None:
                    # paced (a deadline's last poll and a webhook's confirmation are not)
                    await self.clock.sleep(self._next_send - now)
                    continue
                admission = await self._acquire()
                now = self.clock.now()
                if self.budget is not None and (rate := self.budget()) > 0:
                    # A wake-up a little late (1-2 ms on a busy loop) counts as on time: counting
                    # the step from it stretched every gap (23 ms for a 22.4 ms step at a 10x
                    # time scale). Later than a quarter step, the count restarts from now, so no
                    # credit piles up while idle and no gap is shorter than 3/4 of a step.
                    step = 1.0 / rate
                    if self.fill is not None:
                        step *= min(1.0, max(self.quickest, self.fill()))
                    on_time = 0 <= now - self._next_send < step / 4
                    self._next_send = (self._next_send if on_time else now) + step
                # The best one now; if none is ready any more, the idle one closest to it
                # (polling it a little early is harmless, wasting the admission is not).
                ready, idle, _ = self._choose(now)
                if (chosen := ready or idle) is not None:
                    self._launch(chosen, admission)
                else:
                    admission.answered()  # nothing sent: it counts from now
        except asyncio.CancelledError:
            self._fail_all(RuntimeError("poll scheduler closed"))
            raise
        except Exception as exc:  # the status limiter failed: every waiter learns why
            self._fail_all(exc)

    def _launch(self, entry: Waiting, admission: Admission) -> None:
        sent = self.clock.now()
        entry.busy = True
        entry.last_sent = sent
        task = asyncio.ensure_future(self._poll_once(entry, sent, admission))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # The client answered it when the call's answer came; if the poll skipped the client, or
        # the task was cancelled before it ran, it counts from now (a limiter lives as long as
        # its process: one never answered would hold a place in its windows for good).
        task.add_done_callback(lambda _: admission.answered())

    async def _poll_once(self, entry: Waiting, sent: float, admission: Admission) -> None:
        try:
            answer = await entry.poll(entry.prediction_id, admission)
        except Exception as exc:
            entry.busy = False
            self._on_error(entry, exc)
            return
        entry.busy = False
        if entry.future.done():
            return
        entry.errors = 0
        now = self.clock.now()
        if answer.terminal:
            if answer.status == "completed":
                self.policy.completed(entry, sent)
            if entry.on_terminal is not None:
                try:
                    entry.on_terminal(answer)
                except Exception as exc:  # pragma: no cover - a broken hook must not hang the waiter
                    entry.future.set_exception(exc)
                    return
            entry.future.set_result(answer)
            return
        self.policy.seen_running(entry, sent)
        if now >= entry.deadline:
            entry.future.set_exception(TimeoutError(
                f"prediction {entry.prediction_id} still {answer.status!r} after {now - entry.t0:.1f}s"))
            return
        self._kick()

    def _on_error(self, entry: Waiting, exc: Exception) -> None:
        if entry.future.done():
            return
        now = self.clock.now()
        transient = isinstance(exc, self.transient_errors) and not isinstance(exc, OutOfCredits)
        if not transient or entry.errors >= self.max_transient_errors:
            entry.future.set_exception(exc)
            return
        if now >= entry.deadline:
            timeout = TimeoutError(f"prediction {entry.prediction_id}: no answer before the timeout")
            timeout.__cause__ = exc
            entry.future.set_exception(timeout)
            return
        entry.errors += 1
        retry_after = getattr(exc, "retry_after", None) or 0.0
        entry.not_before = min(now + max(self.policy.backoff(entry), retry_after), entry.deadline)
        self._kick()
