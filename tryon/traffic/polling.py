"""One poll scheduler per key: spends the status budget where completions are likely.

Every time the budget allows a status call, the scheduler polls the prediction most likely
to have ended since it was last seen running: ``P(latency <= age | latency > last seen
running)``, from the :class:`~tryon.traffic.latency.LatencyModel` of its ``(model_name,
mode)``. A prediction is not polled before that chance reaches ``likelihood`` (5 %), so
while the budget is ample every prediction near its end is polled often, and when it is
scarce (raised in-flight limits) each call goes where it most likely finds a finished
prediction and frees its slot. Calls are paced at the budget's rate (``window / count``
apart): the sliding-window limiter alone would let a burst of ``count`` through and then nothing
for the rest of the window, and during that gap completions go unnoticed. The pace quickens while
the window has room: a step shrinks with the share of the window's count already spent, down to
``quickest`` (0.6) of it, so what a quiet spell left unspent goes to the completions that cluster
after it, and a busy spell settles back to the even pace as the window fills.

Why greedy on that probability: a finished prediction nobody has noticed costs one slot for
as long as it stays unnoticed, whichever prediction it is; the poll that finds the most of
them per call frees the most slot time.

No interval is in absolute seconds: each is a share of the profile's current mean estimate
``m`` (which starts as the published time and follows what the polls see), so the same policy
holds for a 0.5 s emulated prediction and a 2-minute one:
- a prediction seen running is not polled again for ``min_share * m`` (4 %);
- **probing**: while a profile has no completion yet (the published time is only a guess) and
  after its first polls keep finding predictions already done (the latency fell), a new
  prediction is first polled at ``probe * q`` (1/16; ``q``: the age by which ``likelihood`` of
  them have ended, by the estimate) and again at 1.25 times the age it was last seen running,
  until ``q``; only ``probers`` (3) at once: a few find the scale, the others follow the
  estimate they move. The first completions bracket a latency far below the guess within one
  round;
- past what the model has seen (fewer than 2 % of predictions still running at the age it was
  last seen running: slower than the estimate, or stuck) it is polled again after ``widen`` (20 %)
  of the time by which that age is past the tail, and only after every likelier one, so a latency
  far above the guess, or one that doubled, is bracketed within a fifth of how far it is past;
- a prediction not polled for ``max_share * m`` (1×), or for its interval past the tail if
  longer, goes before every one that was (the longest unpolled first);
- at its deadline it is polled once more, then times out.

**Pushed** predictions (their end comes by webhook) are only confirmed: a hint (:meth:`hint`,
the webhook's arrival) makes one the most urgent of all, and it goes at once, past the pacing
(the limiter still holds the budget); without a hint it is polled as a fallback only once it is
past the tail by ``widen`` of the tail's age, then as an overdue one, so a lost webhook costs time
and a few calls, never the image. The hint's age is taken as the latency (a webhook leaves the
provider as the prediction ends).
Bound (the test proves it on random loads): a prediction is polled again at most
``widest + ceil(P / N) * W' + W / N`` after its previous poll (``widest``: the longest of
those intervals so far), with ``P`` predictions
waiting and the status limit ``N`` per ``W`` (``W'``: window + margin). The limiter, not
this policy, is what guarantees the budget is never exceeded.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tryon.errors import OutOfCredits, ServerError, TooManyRequests, TransportError
from tryon.models import Prediction
from tryon.traffic.clock import Clock, MonotonicClock, sleep_or_wake
from tryon.traffic.latency import LatencyModel, Profile
from tryon.traffic.limiter import Admission

#: One status call: the prediction id and the admission the scheduler took for it (the call's
#: first attempt goes out on it; a retry inside the call takes its own).
PollFn = Callable[[str, Admission], Awaitable[Prediction]]

TRANSIENT_POLL_ERRORS: tuple[type[BaseException], ...] = (TooManyRequests, ServerError, TransportError)
STUCK_TAIL = 0.02  # below this chance of still running at the last poll, a prediction is overdue
SURPRISED = 0.1  # found done at its first poll although the estimate gave it at most this chance


# -- the scheduler --------------------------------------------------------------------------
@dataclass(eq=False)
class _Entry:
    prediction_id: str
    profile: Profile
    poll: PollFn
    future: asyncio.Future[Prediction]
    t0: float
    deadline: float
    first_due: float  # planned at submission: its first probe, or when the chance it has ended reaches the likelihood
    # (the estimate may move before then: the chance, not this plan, decides the first poll)
    probe: float | None  # the age of its next probe (None: not probing)
    on_terminal: Callable[[Prediction], None] | None = None
    last_sent: float | None = None  # send time of the latest poll
    last_pending: float | None = None  # send time of the latest "still running" answer
    not_before: float = 0.0  # no poll before this (backoff after an error, min_interval)
    busy: bool = False  # a poll of it is on the wire
    errors: int = 0
    pushed: bool = False  # its end comes by webhook: polled to confirm a hint, or as a late fallback
    hinted_at: float | None = None  # when a webhook said it ended (None: no word yet)

    @property
    def seen_running(self) -> float:
        """The age at which it was last seen running (0 before any answer)."""
        return 0.0 if self.last_pending is None else self.last_pending - self.t0


class PollScheduler:
    """Polls many predictions through one status budget, the most likely finished first."""

    def __init__(self, acquire: Callable[[], Awaitable[Admission]], clock: Clock | None = None,
                 latency: LatencyModel | None = None, *,
                 budget: Callable[[], float] | None = None, fill: Callable[[], float] | None = None,
                 quickest: float = 0.6, likelihood: float = 0.05, min_share: float = 0.04,
                 max_share: float = 1.0, widen: float = 0.2, probe: float = 1 / 16, probe_growth: float = 1.25,
                 probers: int = 3,
                 transient_errors: tuple[type[BaseException], ...] = TRANSIENT_POLL_ERRORS,
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
        if not 0 < likelihood < 1:
            raise ValueError("likelihood must be within (0, 1)")
        self.likelihood = likelihood
        self.clock: Clock = clock or MonotonicClock()
        self.latency = latency or LatencyModel()
        if not 0 < min_share <= max_share or widen <= 0 or not 0 < probe < 1:
            raise ValueError("need 0 < min_share <= max_share, widen > 0 and 0 < probe < 1")
        self.min_share, self.max_share, self.widen, self.probe = min_share, max_share, widen, probe
        self.probe_growth = probe_growth
        self.probers = probers  # predictions of one profile probing at once: a few find the scale
        # Per profile: the share of q at which new predictions are first probed (1: no probing),
        # and whether each of its latest completions was a surprise (see _learn).
        self._probe: dict[Profile, float] = {}
        self._surprises: dict[Profile, deque[bool]] = {}
        self.widest = 0.0  # the longest a prediction was allowed to go unpolled (the bound's first term)
        self.transient_errors = transient_errors
        self.max_transient_errors = max_transient_errors
        self._next_send = -math.inf
        self._wake: asyncio.Future[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[_Entry, None] = {}  # in arrival order: ties go to the oldest, every run alike
        self._by_id: dict[str, _Entry] = {}

    # -- public --------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._active)

    def min_interval(self, profile: Profile) -> float:
        """How soon a prediction seen running may be polled again."""
        return self.min_share * self.latency.mean(profile)

    def max_interval(self, profile: Profile) -> float:
        """How long a prediction may go unpolled before it goes first."""
        return self.max_share * self.latency.mean(profile)

    def first_poll_delay(self, profile: Profile) -> float:
        """When a prediction submitted now would be first polled: as a probe while the profile is
        probed and fewer than ``probers`` of it probe, else once the chance that it has ended
        reaches ``likelihood`` (by the estimate at submission; a later one decides)."""
        return self._probe_age(profile) or self.latency.quantile(profile, self.likelihood)

    def _probe_age(self, profile: Profile) -> float | None:
        """The first probe's age of a prediction submitted now, or None if it would not probe."""
        share = self._probe_share(profile)
        if share >= 1.0 or self._probing(profile) >= self.probers:
            return None
        return share * self.latency.quantile(profile, self.likelihood)

    def _probe_share(self, profile: Profile) -> float:
        if not self.latency.learned(profile):
            return self.probe
        return self._probe.get(profile, 1.0)

    def _probing(self, profile: Profile) -> int:
        return sum(1 for entry in self._active if entry.profile == profile and entry.probe is not None)

    def interval(self, profile: Profile, seen_running: float) -> float:
        """The re-poll interval of a prediction past what the model has seen, last seen running at
        age ``seen_running``: ``widen`` of the time by which that age is past the model's tail,
        at least the profile's min interval (a stuck one is polled ever less often)."""
        overdue = seen_running - self.latency.quantile(profile, 1.0 - STUCK_TAIL)
        return max(self.min_interval(profile), self.widen * overdue)

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
        probe = None if pushed else self._probe_age(profile)
        if pushed:
            delay = (1 + self.widen) * self.latency.quantile(profile, 1.0 - STUCK_TAIL)
        else:
            delay = self.first_poll_delay(profile)
        entry = _Entry(prediction_id, profile, poll, asyncio.get_running_loop().create_future(), t0, deadline,
                       min(t0 + delay, deadline), probe, on_terminal, pushed=pushed,
                       hinted_at=now if hinted else None)
        self._active[entry] = None
        self._by_id[prediction_id] = entry
        entry.future.add_done_callback(lambda _: self._forget(entry))
        self._kick()
        return await entry.future

    def _forget(self, entry: _Entry) -> None:
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
    def _urgency(self, entry: _Entry, now: float) -> tuple[float, float]:
        """(score, when it is ready): ready ones score >= ``likelihood``; the highest goes next."""
        if now < entry.not_before:
            return -1.0, entry.not_before
        if now >= entry.deadline:
            return 3.0, now  # one last poll, then the timeout
        if entry.hinted_at is not None:
            return 4.0, now  # a webhook's confirmation: first of all
        since = entry.last_sent if entry.last_sent is not None else entry.first_due
        if entry.pushed:  # the fallback: past the tail, then ever wider
            due = entry.first_due if entry.last_sent is None else since + self.interval(entry.profile, entry.seen_running)
            return (self.likelihood, now) if now >= due else (-1.0, min(due, entry.deadline))
        ended_before = self.latency.cdf(entry.profile, entry.seen_running)  # share ended by then
        overdue = ended_before > 1.0 - STUCK_TAIL  # past what the model has seen
        longest = self.max_interval(entry.profile)
        if overdue:
            longest = max(longest, self.interval(entry.profile, entry.seen_running))
        self.widest = max(self.widest, longest)
        if now - since >= longest:
            return 2.0 + (now - since), now  # starved: the longest unpolled first
        ready_by = min(entry.deadline, since + longest)
        if entry.probe is not None and self._probe_share(entry.profile) >= 1.0:
            entry.probe = None  # the profile's scale is known again: no more probing
        if entry.probe is not None:
            probe_at = entry.t0 + entry.probe
            if now >= probe_at:
                return self.likelihood, now
            ready_by = min(ready_by, probe_at)
        if overdue:  # widen, after likelier ones
            due = since + self.interval(entry.profile, entry.seen_running)
            return (self.likelihood, now) if now >= due else (-1.0, min(due, ready_by))
        chance = (self.latency.cdf(entry.profile, now - entry.t0) - ended_before) / (1.0 - ended_before)
        if chance >= self.likelihood:
            return chance, now
        ready_at = entry.t0 + self.latency.quantile(entry.profile, ended_before + self.likelihood * (1 - ended_before))
        return chance, min(ready_by, ready_at)

    def _choose(self, now: float) -> tuple[_Entry | None, _Entry | None, float]:
        """(the most urgent ready entry, the most urgent idle one at all, when the next is ready)."""
        ready: tuple[float, _Entry] | None = None
        idle: tuple[float, _Entry] | None = None
        wake_at = math.inf
        for entry in self._active:
            if entry.busy or entry.future.done():
                continue
            score, at = self._urgency(entry, now)
            if idle is None or score > idle[0]:
                idle = (score, entry)
            if score >= self.likelihood or at <= now:  # (at <= now: the grid's rounding)
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

    def _launch(self, entry: _Entry, admission: Admission) -> None:
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

    async def _poll_once(self, entry: _Entry, sent: float, admission: Admission) -> None:
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
            if answer.status == "completed" and entry.pushed:
                lo = entry.seen_running if entry.hinted_at is None else entry.hinted_at - entry.t0
                self.latency.observe(entry.profile, lo, sent - entry.t0 if entry.hinted_at is None else lo)
            elif answer.status == "completed":
                self._learn(entry, sent - entry.t0)
            if entry.on_terminal is not None:
                try:
                    entry.on_terminal(answer)
                except Exception as exc:  # pragma: no cover - a broken hook must not hang the waiter
                    entry.future.set_exception(exc)
                    return
            entry.future.set_result(answer)
            return
        entry.last_pending = sent
        entry.hinted_at = None  # a webhook's word that the poll did not bear out
        if now >= entry.deadline:
            entry.future.set_exception(TimeoutError(
                f"prediction {entry.prediction_id} still {answer.status!r} after {now - entry.t0:.1f}s"))
            return
        if entry.probe is not None:  # probing: next at a wider age, until the estimate's own first poll
            entry.probe = self.probe_growth * entry.seen_running
            if entry.probe >= self.latency.quantile(entry.profile, self.likelihood):
                entry.probe = None
        # A probe's next age is its own (the mean it would be a share of is only the guess it tests).
        gap = 0.0 if entry.probe is not None else self.min_interval(entry.profile)
        entry.not_before = min(sent + gap, entry.deadline)
        self._kick()

    def _learn(self, entry: _Entry, done_at: float) -> None:
        """A completion's bracket goes to the estimate. Found done at its first poll although the
        estimate gave that at most ``SURPRISED``: the latency may have fallen below it. Three such
        surprises among the profile's last six completions: the estimate restarts from the latest
        brackets and new predictions are probed early (one surprise alone is the estimate's own
        5 % that end before its first poll). A completion seen running first moves the probe back
        towards the estimate's own first poll."""
        profile, lo = entry.profile, entry.seen_running
        surprised = entry.last_pending is None and self.latency.cdf(profile, done_at) <= SURPRISED
        learned = self.latency.learned(profile)
        self.latency.observe(profile, lo, done_at)
        recent = self._surprises.setdefault(profile, deque(maxlen=6))
        recent.append(surprised and learned)
        if sum(recent) >= 3:
            self.latency.distribution(profile).restart(len(recent))
            self._probe[profile] = self.probe
            recent.clear()
        elif entry.last_pending is not None:
            self._probe[profile] = min(1.0, 2 * self._probe.get(profile, 1.0))

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
        delay = min(self.max_interval(entry.profile), self.min_interval(entry.profile) * 2 ** (entry.errors - 1))
        entry.not_before = min(now + max(delay, retry_after), entry.deadline)
        self._kick()
