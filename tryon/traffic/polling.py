"""One poll scheduler per key: spends the status budget where completions are likely.

The scheduler keeps a heap of (due time, prediction). A single loop sleeps until the
earliest due time, takes one admission from the status limiter, and launches that
status call as a task; so polls leave in due-time order and never exceed the budget.

Timing comes from a :class:`LatencyModel` per ``(model_name, mode)`` and from the budget
(status calls per second, shared by the predictions in flight). The first poll goes two
deviations before the expected completion when the budget affords several polls per
prediction, and later as it gets scarcer, down to one deviation after the mean (raised
in-flight limits, where the status budget binds). The predictions being re-polled share
``target_share`` of the status rate: closer together than the plain interval
(``max(min_interval, 10 % of the mean)``) while the budget is ample, so a completion is
noticed sooner and its slot reused; further apart when it is scarce, spread out rather than
queued behind the limiter. Once a prediction is overdue (past mean + 2 deviations) the
interval grows with the overdue time, up to ``max_interval``, so a stuck prediction does not
burn the budget. The limiter, not this policy, is what guarantees the budget is never exceeded.

Bound (the test proves it on random loads): a prediction is polled again at most
``max(max_interval, poll duration) + ceil(P / N) * W'`` after its previous poll,
with ``P`` predictions waiting and the status limit ``N`` per ``W'`` (window +
margin), because the loop serves due entries strictly in due order and each
prediction has at most one entry.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from tryon.errors import OutOfCredits, ServerError, TooManyRequests, TransportError
from tryon.models import Prediction
from tryon.traffic.clock import Clock, MonotonicClock, sleep_or_wake

Profile = tuple[str, str]  # (model_name, mode)
PollFn = Callable[[str], Awaitable[Prediction]]

DEFAULT_PRIORS: dict[str, float] = {"performance": 5.0, "balanced": 8.0, "quality": 14.0}
DEFAULT_MODE = "balanced"
TRANSIENT_POLL_ERRORS: tuple[type[BaseException], ...] = (TooManyRequests, ServerError, TransportError)


# -- pre-admission: a status call the scheduler already paid for ------------------------------
class _Preadmission:
    __slots__ = ("endpoint", "used")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.used = False


_PREADMITTED: ContextVar[_Preadmission | None] = ContextVar("tryon_traffic_preadmitted", default=None)


def consume_preadmission(endpoint: str) -> bool:
    """True once per poll task: the scheduler already took this call's admission.

    The client's gate calls ``acquire("status")`` before every HTTP attempt; inside a
    scheduled poll the first attempt is already admitted, retries are not.
    """
    token = _PREADMITTED.get()
    if token is None or token.used or token.endpoint != endpoint:
        return False
    token.used = True
    return True


# -- latency model --------------------------------------------------------------------------
@dataclass
class LatencyEstimate:
    mean: float
    dev: float  # mean absolute deviation
    samples: int = 0


class LatencyModel:
    """Per-profile EWMA of completion latency, starting from the provider's published times."""

    def __init__(self, latency_scale: float = 1.0, priors: dict[str, float] | None = None, *,
                 alpha: float = 0.2, prior_dev_ratio: float = 0.2, min_dev_ratio: float = 0.05) -> None:
        if latency_scale <= 0:
            raise ValueError("latency_scale must be > 0")
        self.latency_scale = latency_scale
        self.priors = dict(DEFAULT_PRIORS if priors is None else priors)
        self.alpha = alpha
        self.prior_dev_ratio = prior_dev_ratio
        self.min_dev_ratio = min_dev_ratio
        self._estimates: dict[Profile, LatencyEstimate] = {}

    def prior(self, profile: Profile) -> float:
        mode = profile[1] if len(profile) > 1 else DEFAULT_MODE
        base = self.priors.get(mode, self.priors.get(DEFAULT_MODE, 8.0))
        return base / self.latency_scale

    def estimate(self, profile: Profile) -> LatencyEstimate:
        est = self._estimates.get(profile)
        if est is None:
            mean = self.prior(profile)
            est = self._estimates[profile] = LatencyEstimate(mean, mean * self.prior_dev_ratio)
        return est

    def observe(self, profile: Profile, seconds: float, *, censored: bool = False) -> None:
        """Learn one latency. ``censored``: only an upper-side guess, so the spread is left alone."""
        est = self.estimate(profile)
        weight = max(self.alpha, 1.0 / (est.samples + 2))  # the prior counts as one sample
        if not censored:
            est.dev += weight * (abs(seconds - est.mean) - est.dev)
        est.mean = max(1e-3, est.mean + weight * (seconds - est.mean))
        est.dev = max(est.dev, self.min_dev_ratio * est.mean)
        est.samples += 1

    def first_poll_delay(self, profile: Profile, lead: float = 1.0) -> float:
        """``lead`` deviations before the mean (never before a quarter of it)."""
        est = self.estimate(profile)
        return max(0.25 * est.mean, est.mean - lead * est.dev)

    def expected_duration(self, profile: Profile) -> float:
        """A generous guess of how long a prediction of this profile occupies a slot."""
        est = self.estimate(profile)
        return est.mean + 4 * est.dev


# -- the scheduler --------------------------------------------------------------------------
@dataclass(eq=False)
class _Entry:
    prediction_id: str
    profile: Profile
    poll: PollFn
    future: asyncio.Future[Prediction]
    t0: float
    deadline: float
    first_delay: float
    on_terminal: Callable[[Prediction], None] | None = None
    last_pending: float | None = None  # send time of the latest non-terminal answer
    polls: int = 0
    errors: int = 0
    learnable: bool = True  # False when the first poll could not be on time (old submitted_at)
    poll_times: list[float] = field(default_factory=list)


class PollScheduler:
    """Polls many predictions through one status budget, in due-time order."""

    def __init__(self, acquire: Callable[[], Awaitable[None]], clock: Clock | None = None,
                 latency: LatencyModel | None = None, *, latency_scale: float = 1.0,
                 budget: Callable[[], float] | None = None, target_share: float = 0.85,
                 min_interval: float | None = None, max_interval: float | None = None,
                 transient_errors: tuple[type[BaseException], ...] = TRANSIENT_POLL_ERRORS,
                 max_transient_errors: int = 8, endpoint: str = "status") -> None:
        self._acquire = acquire
        # Status calls per second this process may make (it changes when processes share a key).
        self.budget = budget
        self.target_share = target_share
        self.clock: Clock = clock or MonotonicClock()
        self.latency = latency or LatencyModel(latency_scale)
        scale = self.latency.latency_scale
        self.min_interval = 0.2 / scale if min_interval is None else float(min_interval)
        self.max_interval = 5.0 / scale if max_interval is None else float(max_interval)
        if not 0 < self.min_interval <= self.max_interval:
            raise ValueError("need 0 < min_interval <= max_interval")
        self.transient_errors = transient_errors
        self.max_transient_errors = max_transient_errors
        self.endpoint = endpoint
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Future[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[_Entry] = set()
        self.polls = 0
        self.completions = 0
        self.polls_of_completed = 0

    # -- public --------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def polls_per_completion(self) -> float | None:
        return self.polls_of_completed / self.completions if self.completions else None

    def first_poll_delay(self, profile: Profile) -> float:
        """When to poll a prediction submitted now for the first time (after its submission)."""
        return self.latency.first_poll_delay(profile, self._lead(profile))

    def _lead(self, profile: Profile) -> float:
        """How many deviations before the mean the first poll goes, by polls per prediction the
        budget affords over one mean latency: early polls catch early completions, but each
        costs a call that a prediction closer to its end may need more."""
        if self.budget is None:
            return 1.0
        spare = self.budget() * self.latency.estimate(profile).mean / (len(self._active) + 1)
        # From one deviation after the mean (one poll each or fewer to spare) to two before it
        # (3.5 or more); chosen on a fake-clock simulation of 6, 15 and 30 in flight.
        return max(-1.0, min(2.0, spare - 1.5))

    def _repoll_interval(self, entry: _Entry, elapsed: float) -> float:
        """The re-polled predictions share ``target_share`` of the budget: closer than
        :meth:`interval` while it is ample, further apart when it is scarce (spread out rather
        than queued behind the limiter); never closer than :meth:`interval` once overdue."""
        base = self.interval(entry.profile, elapsed)
        if self.budget is None:
            return base
        fair = sum(1 for e in self._active if e.polls) / (self.target_share * self.budget())
        if self._overdue(entry.profile, elapsed) > 0:
            fair = max(fair, base)
        return max(self.min_interval, min(self.max_interval, fair))

    def _overdue(self, profile: Profile, elapsed: float) -> float:
        """Seconds past mean + 2 deviations (negative while not overdue)."""
        est = self.latency.estimate(profile)
        return elapsed - (est.mean + 2 * est.dev)

    def interval(self, profile: Profile, elapsed: float) -> float:
        """The plain re-poll interval ``elapsed`` seconds after submission: 10 % of the mean, growing
        once overdue (the budget-aware :meth:`_repoll_interval` starts from it)."""
        est = self.latency.estimate(profile)
        base = max(self.min_interval, 0.1 * est.mean)
        overdue = self._overdue(profile, elapsed)
        if overdue > 0:
            base *= 1 + overdue / est.mean
        return max(self.min_interval, min(self.max_interval, base))

    async def wait(self, prediction_id: str, *, profile: Profile, poll: PollFn,
                   submitted_at: float | None = None, timeout: float | None = None,
                   on_terminal: Callable[[Prediction], None] | None = None) -> Prediction:
        """Poll ``prediction_id`` until it is terminal and return that answer.

        ``poll`` errors propagate to this caller (``NotFound`` ...), except transient
        ones (429, 5xx, transport), which are retried with backoff up to
        ``max_transient_errors`` in a row. ``TimeoutError`` once ``timeout`` seconds
        have passed since ``submitted_at`` (default: now) without a terminal answer.
        ``on_terminal`` runs the moment the terminal answer arrives (to free a slot).
        """
        now = self.clock.now()
        t0 = now if submitted_at is None else submitted_at
        deadline = math.inf if timeout is None else t0 + timeout
        first = self.first_poll_delay(profile)
        entry = _Entry(prediction_id, tuple(profile), poll,  # type: ignore[arg-type]
                       asyncio.get_running_loop().create_future(), t0, deadline, first, on_terminal)
        entry.learnable = t0 + first >= now
        self._active.add(entry)
        entry.future.add_done_callback(lambda _: self._active.discard(entry))
        self._push(entry, min(t0 + first, deadline))
        return await entry.future

    async def aclose(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all(RuntimeError("poll scheduler closed"))

    # -- heap and loop -------------------------------------------------------------------
    def _push(self, entry: _Entry, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), entry))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._run())

    def _peek(self) -> tuple[float, _Entry] | None:
        while self._heap and self._heap[0][2].future.done():  # cancelled or failed waiters
            heapq.heappop(self._heap)
        return (self._heap[0][0], self._heap[0][2]) if self._heap else None

    def _fail_all(self, exc: BaseException) -> None:
        while self._heap:
            entry = heapq.heappop(self._heap)[2]
            if not entry.future.done():
                entry.future.set_exception(exc)

    async def _run(self) -> None:
        try:
            while (head := self._peek()) is not None:
                due = head[0]
                now = self.clock.now()
                if due > now:
                    if self._wake is None or self._wake.done():
                        self._wake = asyncio.get_running_loop().create_future()
                    await sleep_or_wake(self.clock, due - now, self._wake)
                    continue
                await self._acquire()
                # The earliest live entry now (the old head may have been cancelled meanwhile;
                # polling its successor a little early is harmless, holding the admission is not).
                if (head := self._peek()) is not None:
                    heapq.heappop(self._heap)
                    self._launch(head[1])
        except asyncio.CancelledError:
            self._fail_all(RuntimeError("poll scheduler closed"))
            raise
        except Exception as exc:  # the status limiter failed: every waiter learns why
            self._fail_all(exc)

    def _launch(self, entry: _Entry) -> None:
        sent = self.clock.now()
        entry.polls += 1
        entry.poll_times.append(sent)
        self.polls += 1
        task = asyncio.ensure_future(self._poll_once(entry, sent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll_once(self, entry: _Entry, sent: float) -> None:
        _PREADMITTED.set(_Preadmission(self.endpoint))  # this task's own context
        try:
            answer = await entry.poll(entry.prediction_id)
        except Exception as exc:
            self._on_error(entry, exc)
            return
        if entry.future.done():
            return
        entry.errors = 0
        now = self.clock.now()
        if answer.terminal:
            self.completions += 1
            self.polls_of_completed += entry.polls
            if answer.status == "completed" and entry.learnable:
                self._learn(entry, sent)
            if entry.on_terminal is not None:
                try:
                    entry.on_terminal(answer)
                except Exception as exc:  # pragma: no cover - a broken hook must not hang the waiter
                    entry.future.set_exception(exc)
                    return
            entry.future.set_result(answer)
            return
        entry.last_pending = sent
        if now >= entry.deadline:
            entry.future.set_exception(TimeoutError(
                f"prediction {entry.prediction_id} still {answer.status!r} after {now - entry.t0:.1f}s"))
            return
        due = max(now, sent + self._repoll_interval(entry, sent - entry.t0))
        self._push(entry, min(due, entry.deadline))

    def _on_error(self, entry: _Entry, exc: Exception) -> None:
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
        delay = min(self.max_interval, self.min_interval * 2 ** (entry.errors - 1))
        self._push(entry, min(now + max(delay, retry_after), entry.deadline))

    def _learn(self, entry: _Entry, sent: float) -> None:
        hi = sent - entry.t0
        if entry.last_pending is not None:  # completed between two polls: take the midpoint
            self.latency.observe(entry.profile, (entry.last_pending - entry.t0 + hi) / 2)
            return
        # Done at the first poll: we only know it took <= the planned first delay.
        # Guess one deviation earlier, so a too-late first poll moves earlier next time.
        bound = min(hi, entry.first_delay)
        est = self.latency.estimate(entry.profile)
        self.latency.observe(entry.profile, max(bound / 2, bound - est.dev), censored=True)
