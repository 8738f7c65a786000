"""The poll policy: when each waiting prediction is due, and which one a status call goes to.

A status call goes to the prediction most likely to have ended since it was last seen running:
``P(latency <= age | latency > last seen running)``, from the
:class:`~tryon.traffic.latency.LatencyModel` of its ``(model_name, mode)``. A prediction is not
polled before that chance reaches ``likelihood`` (5 %), so while the budget is ample every
prediction near its end is polled often, and when it is scarce (raised in-flight limits) each
call goes where it most likely finds a finished prediction and frees its slot.

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

**Pushed** predictions (their end comes by webhook) are only confirmed: a hint (the webhook's
arrival) makes one the most urgent of all; without a hint it is polled as a fallback only once
it is past the tail by ``widen`` of the tail's age, then as an overdue one, so a lost webhook
costs time and a few calls, never the image. The hint's age is taken as the latency (a webhook
leaves the provider as the prediction ends).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tryon.models import Prediction
from tryon.traffic.latency import LatencyModel, Profile
from tryon.traffic.limiter import Admission

#: One status call: the prediction id and the admission the scheduler took for it (the call's
#: first attempt goes out on it; a retry inside the call takes its own).
PollFn = Callable[[str, Admission], Awaitable[Prediction]]

STUCK_TAIL = 0.02  # below this chance of still running at the last poll, a prediction is overdue
SURPRISED = 0.1  # found done at its first poll although the estimate gave it at most this chance


@dataclass(eq=False)
class Waiting:
    """One prediction waited on: what the policy knows of it, and the waiter to answer."""

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


class PollPolicy:
    """Urgencies and intervals of waiting predictions, from what the latency model has learned."""

    def __init__(self, latency: LatencyModel | None = None, *, likelihood: float = 0.05, min_share: float = 0.04,
                 max_share: float = 1.0, widen: float = 0.2, probe: float = 1 / 16, probe_growth: float = 1.25,
                 probers: int = 3) -> None:
        if not 0 < likelihood < 1:
            raise ValueError("likelihood must be within (0, 1)")
        if not 0 < min_share <= max_share or widen <= 0 or not 0 < probe < 1:
            raise ValueError("need 0 < min_share <= max_share, widen > 0 and 0 < probe < 1")
        self.latency = latency or LatencyModel()
        self.likelihood = likelihood
        self.min_share, self.max_share, self.widen, self.probe = min_share, max_share, widen, probe
        self.probe_growth = probe_growth
        self.probers = probers  # predictions of one profile probing at once: a few find the scale
        # Per profile: the share of q at which new predictions are first probed (1: no probing),
        # and whether each of its latest completions was a surprise (see learn).
        self._probe: dict[Profile, float] = {}
        self._surprises: dict[Profile, deque[bool]] = {}
        self.widest = 0.0  # the longest a prediction was allowed to go unpolled (the bound's first term)

    def min_interval(self, profile: Profile) -> float:
        """How soon a prediction seen running may be polled again."""
        return self.min_share * self.latency.mean(profile)

    def max_interval(self, profile: Profile) -> float:
        """How long a prediction may go unpolled before it goes first."""
        return self.max_share * self.latency.mean(profile)

    def interval(self, profile: Profile, seen_running: float) -> float:
        """The re-poll interval of a prediction past what the model has seen, last seen running at
        age ``seen_running``: ``widen`` of the time by which that age is past the model's tail,
        at least the profile's min interval (a stuck one is polled ever less often)."""
        overdue = seen_running - self.latency.quantile(profile, 1.0 - STUCK_TAIL)
        return max(self.min_interval(profile), self.widen * overdue)

    def probe_age(self, profile: Profile, probing: int) -> float | None:
        """The first probe's age of a prediction submitted now while ``probing`` of its profile
        probe, or None if it would not probe."""
        share = self._probe_share(profile)
        if share >= 1.0 or probing >= self.probers:
            return None
        return share * self.latency.quantile(profile, self.likelihood)

    def first_poll_delay(self, profile: Profile, probing: int) -> float:
        """When a prediction submitted now would be first polled: as a probe while the profile is
        probed and fewer than ``probers`` of it probe, else once the chance that it has ended
        reaches ``likelihood`` (by the estimate at submission; a later one decides)."""
        return self.probe_age(profile, probing) or self.latency.quantile(profile, self.likelihood)

    def pushed_delay(self, profile: Profile) -> float:
        """When a pushed prediction without a hint is first polled: past the tail by ``widen``."""
        return (1 + self.widen) * self.latency.quantile(profile, 1.0 - STUCK_TAIL)

    def _probe_share(self, profile: Profile) -> float:
        if not self.latency.learned(profile):
            return self.probe
        return self._probe.get(profile, 1.0)

    def urgency(self, entry: Waiting, now: float) -> tuple[float, float]:
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

    def seen_running(self, entry: Waiting, sent: float) -> None:
        """A poll sent at ``sent`` found it still running: plan its next poll."""
        entry.last_pending = sent
        entry.hinted_at = None  # a webhook's word that the poll did not bear out
        if entry.probe is not None:  # probing: next at a wider age, until the estimate's own first poll
            entry.probe = self.probe_growth * entry.seen_running
            if entry.probe >= self.latency.quantile(entry.profile, self.likelihood):
                entry.probe = None
        # A probe's next age is its own (the mean it would be a share of is only the guess it tests).
        gap = 0.0 if entry.probe is not None else self.min_interval(entry.profile)
        entry.not_before = min(sent + gap, entry.deadline)

    def completed(self, entry: Waiting, sent: float) -> None:
        """A poll sent at ``sent`` found it completed: its bracket goes to the estimate."""
        if entry.pushed:
            lo = entry.seen_running if entry.hinted_at is None else entry.hinted_at - entry.t0
            self.latency.observe(entry.profile, lo, sent - entry.t0 if entry.hinted_at is None else lo)
        else:
            self._learn(entry, sent - entry.t0)

    def _learn(self, entry: Waiting, done_at: float) -> None:
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

    def backoff(self, entry: Waiting) -> float:
        """How long after its ``errors``-th transient error in a row it is polled again."""
        return min(self.max_interval(entry.profile), self.min_interval(entry.profile) * 2 ** (entry.errors - 1))
