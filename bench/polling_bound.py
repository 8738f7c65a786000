"""The best any polling policy can do: the steady-state bound under a status budget.

    uv run --locked python bench/polling_bound.py

A poll tells about one prediction only, and latencies are independent, so what a policy can do
for a prediction depends on its own age and answers alone: a schedule of poll ages, the last one
past the longest latency. A schedule costs ``E[polls]`` status calls and keeps the slot for
``E[cycle]`` (the age of the poll that finds it done, plus the turn to the next submission); a
policy may mix schedules across predictions. Throughput is then at most
``min(run rate, in-flight / E[cycle], status rate / E[polls])``. This script finds the best
mixture for latencies uniform within ±25 % of the mean (the emulator's and the benchmark's) by
searching schedules of up to ``--max-polls`` ages, knowing the distribution exactly (no learning,
no cold start, no drain), and prints it as a share of the benchmark's ceiling, min(run rate,
in-flight / mean latency, status rate). Pure arithmetic: no emulator, no clock.

A collection also fills its slots and drains them: the api ratio (items over the span from the
first creation to the last end) is below the steady state even for a scheduler that sees every
end the instant it happens. ``fill+drain`` is that clairvoyant scheduler's api ratio for the
benchmark's item count (``--items`` overrides it), averaged over seeded latency draws; the
steady bound times it bounds the api ratio of any polling policy.
"""

from __future__ import annotations

import argparse
import heapq
import random

SETTINGS = {  # name: (in flight, runs per second, status calls per second, the benchmark's items)
    "default": (6, 50 / 60, 50 / 10, 300),
    "raised": (30, 250 / 60, 50 / 10, 900),
    "15 in flight": (15, 150 / 60, 50 / 10, 450),
}


def cost(ages: list[float], lo: float, hi: float, turn: float) -> tuple[float, float]:
    """(E[polls], E[cycle]) of polling at ``ages`` (sorted, within [lo, hi]) and last at ``hi``."""
    polls = cycle = 0.0
    alive, previous = 1.0, lo
    for age in [*ages, hi]:
        polls += alive  # sent only while the prediction is still running
        ended = (age - previous) / (hi - lo)
        cycle += ended * age
        alive -= ended
        previous = age
    return polls, cycle + turn


def frontier(lo: float, hi: float, turn: float, max_polls: int) -> list[tuple[float, float]]:
    """(E[polls], E[cycle]) of the schedules minimising E[cycle] + price * E[polls], for a range of
    prices: the points no schedule beats on both (coordinate descent on a fine grid of ages)."""
    points = []
    step = (hi - lo) / 400
    for price in [hi * 2 ** (k / 4 - 12) for k in range(60)]:
        best: tuple[float, float] | None = None
        for k in range(max_polls + 1):
            ages = [lo + (hi - lo) * (i + 1) / (k + 1) for i in range(k)]
            for _ in range(60):  # coordinate descent: move each age to its best place between its neighbours
                moved = False
                for i in range(k):
                    left = ages[i - 1] if i else lo
                    right = ages[i + 1] if i + 1 < k else hi
                    def objective(a: float, i: int = i) -> float:
                        polls, cycle = cost(ages[:i] + [a] + ages[i + 1:], lo, hi, turn)
                        return cycle + price * polls
                    candidates = [left + j * step for j in range(1, int((right - left) / step))] or [ages[i]]
                    a = min(candidates, key=objective)
                    if abs(a - ages[i]) > step / 2 and objective(a) < objective(ages[i]) - 1e-12:
                        ages[i], moved = a, True
                if not moved:
                    break
            point = cost(ages, lo, hi, turn)
            if best is None or point[1] + price * point[0] < best[1] + price * best[0]:
                best = point
        assert best is not None
        points.append(best)
    return points


def bound(in_flight: int, runs: float, status: float, mean: float, jitter: float, turn: float,
          max_polls: int) -> tuple[float, float, float]:
    """(the best throughput per second, its E[polls], its E[cycle]) over mixtures of two schedules."""
    points = frontier(mean * (1 - jitter), mean * (1 + jitter), turn, max_polls)
    best = (0.0, 0.0, 0.0)
    for a in points:
        for b in points:
            for w in (j / 50 for j in range(51)):
                polls = w * a[0] + (1 - w) * b[0]
                cycle = w * a[1] + (1 - w) * b[1]
                rate = min(runs, in_flight / cycle, status / polls)
                if rate > best[0]:
                    best = (rate, polls, cycle)
    return best


def fill_and_drain(items: int, in_flight: int, jitter: float, draws: int = 200) -> float:
    """The api ratio of a scheduler that notices every end at once (no turn): items over the span
    from the first creation to the last end, against in-flight / mean latency."""
    total = 0.0
    for seed in range(draws):
        rng = random.Random(seed)
        latencies = [rng.uniform(1 - jitter, 1 + jitter) for _ in range(items)]
        free = [0.0] * in_flight  # when each slot is next free
        last = 0.0
        for latency in latencies:
            end = heapq.heappop(free) + latency
            last = max(last, end)
            heapq.heappush(free, end)
        total += items / last / (in_flight * items / sum(latencies))
    return total / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mean", type=float, default=8.0, help="mean latency, seconds (the bound scales with it)")
    parser.add_argument("--jitter", type=float, default=0.25)
    parser.add_argument("--turn", type=float, default=0.0, help="seconds from a notice to the next submission")
    parser.add_argument("--max-polls", type=int, default=12)
    parser.add_argument("--items", type=int, default=None, help="items per collection (default: the benchmark's)")
    args = parser.parse_args()
    print(f"{'setting':<14} {'ceiling/min':>11} {'bound/min':>9} {'bound':>6} {'status/pred':>11} {'cycle/mean':>10} "
          f"{'items':>5} {'fill+drain':>10} {'api bound':>9}")
    for name, (in_flight, runs, status, items) in SETTINGS.items():
        items = args.items or items
        ceiling = min(runs, in_flight / args.mean, status)
        rate, polls, cycle = bound(in_flight, runs, status, args.mean, args.jitter, args.turn, args.max_polls)
        drain = fill_and_drain(items, in_flight, args.jitter)
        print(f"{name:<14} {60 * ceiling:>11.1f} {60 * rate:>9.1f} {rate / ceiling:>6.1%} {polls:>11.2f} "
              f"{cycle / args.mean:>10.3f} {items:>5} {drain:>10.1%} {rate / ceiling * drain:>9.1%}", flush=True)


if __name__ == "__main__":
    main()
