"""Not a benchmark: the poll policy ``poll_policy.py --price`` runs in place of the greedy one.

Each prediction follows the schedule that minimises its expected slot time plus ``price`` mean
latencies per status call (the schedules on ``polling_bound.py``'s frontier), computed by dynamic
programming from the scheduler's own latency estimate: seen running at age ``s``, it is next
polled at ``x(s)``. Polls that are due go most likely finished first, through the same pacing and
limiter. It tests whether the greedy choice leaves throughput that per-prediction optimal
schedules would take; everything but the choice of the next poll (probing, overdue, deadlines,
webhooks) is the shipped scheduler's.
"""

from __future__ import annotations

import math

from tryon.traffic.polling import STUCK_TAIL, PollScheduler, _Entry

CELLS = 120  # ages between the 0 and 99 % quantiles


class FrontierScheduler(PollScheduler):
    price: float  # mean latencies per status call
    _plans: dict  # profile -> (the estimate it was computed from, the plan)

    @classmethod
    def adopt(cls, scheduler: PollScheduler, price: float) -> None:
        """Turn a controller's own scheduler into this one (the controller builds its scheduler,
        with no seam to pass another), keeping every setting it was built with."""
        scheduler.__class__ = cls
        assert isinstance(scheduler, cls)
        scheduler.price, scheduler._plans = price, {}

    def _plan(self, profile) -> tuple[float, float, list[float]]:
        """(lo, hi, next poll age for each of CELLS + 1 ages seen running), recomputed when the
        estimate has moved: every fifth completion, or the mean by 1 % (the oracle's moves alone)."""
        mean = self.latency.mean(profile)
        key = (self.latency.estimate(profile).samples // 5, round(math.log(mean), 2))
        cache = self._plans
        if cache.get(profile, (None,))[0] != key:
            lo, hi = self.latency.quantile(profile, 0.0), self.latency.quantile(profile, 1.0 - STUCK_TAIL / 2)
            ages = [lo + (hi - lo) * i / CELLS for i in range(CELLS + 1)]
            ended = [self.latency.cdf(profile, a) for a in ages]
            area = [0.0]  # the integral of the cdf: expected unnoticed time between two ages
            for i in range(1, CELLS + 1):
                area.append(area[-1] + (ended[i] + ended[i - 1]) / 2 * (ages[i] - ages[i - 1]))
            price = self.price * mean
            cost, nxt = [0.0] * (CELLS + 1), list(ages)
            for i in range(CELLS - 1, -1, -1):
                alive = 1.0 - ended[i]
                if alive <= 1e-9:
                    continue
                best = math.inf
                for j in range(i + 1, CELLS + 1):
                    late = area[j] - area[i] - ended[i] * (ages[j] - ages[i])
                    c = price + (late + (1.0 - ended[j]) * cost[j]) / alive
                    if c < best:
                        best, nxt[i] = c, ages[j]
                cost[i] = best
            cache[profile] = (key, (lo, hi, nxt))
        return cache[profile][1]

    def _urgency(self, entry: _Entry, now: float) -> tuple[float, float]:
        if (now < entry.not_before or now >= entry.deadline or entry.hinted_at is not None or entry.pushed
                or entry.probe is not None or not self.latency.learned(entry.profile)):
            return super()._urgency(entry, now)
        seen, profile = entry.seen_running, entry.profile
        lo, hi, nxt = self._plan(profile)
        ended_before = self.latency.cdf(profile, seen)
        if seen >= hi or ended_before > 1.0 - STUCK_TAIL:
            return super()._urgency(entry, now)  # past the tail: the shipped widening
        due = entry.t0 + nxt[max(0, min(CELLS, int((seen - lo) / (hi - lo) * CELLS)))]
        if now < due:
            return 0.0, due
        chance = (self.latency.cdf(profile, now - entry.t0) - ended_before) / (1.0 - ended_before)
        return min(1.9, self.likelihood + chance), now
