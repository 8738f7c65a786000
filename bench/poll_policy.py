"""The traffic controller alone on a fake clock: how close its poll policy gets to the ceiling.

    uv run --locked python bench/poll_policy.py --items 300 --seeds 3

No HTTP, no Prefect, no CPU limits: each run submits ``--items`` predictions through one
:class:`TrafficController` (slots, run and status limiters, poll scheduler) against a fake
server whose latencies are uniform within ±25 % of the regime's mean, with a fixed round trip
per call. It isolates what the policy decides (when to poll, how often) from what the machine
costs, and runs in seconds, so policy changes can be compared on several limit settings,
latency regimes and seeds. The controller is never told the latency: its prior is the published
8 s, and the regimes put it ten times too long (the emulator at 10×, whose limits' windows are
divided too), five times too short (a slow model), or double the latency for the middle third of
the predictions. Prints, per setting and regime, the mean ratio to the ceiling min(run rate,
in-flight ÷ mean latency, status rate), status calls per prediction and the mean delay from an
end to its notice as a share of the mean latency, for the scheduler and, as the baseline of the
same run, for fixed-interval polling through the same controller (``--fixed``: every prediction
polled every second from its submission, the official SDK's default, scaled with the regime's
latency; its calls queued at the same status limiter, its slots freed the same way).
``--oracle`` gives the scheduler the true latency distribution in place of what it learns: not a
measurement of the product, a bound on its policy.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_traffic import FakeServer  # noqa: E402  (the same fake the unit tests use)
from tryon.settings import Limit  # noqa: E402
from tryon.traffic import FakeClock, TrafficController  # noqa: E402
from tryon.traffic.latency import LatencyModel  # noqa: E402


class KnownLatency(LatencyModel):
    """``--oracle``: the true distribution (uniform within ±25 % of ``mean()``, which follows the
    regime's steps), in place of what the scheduler would learn: what its policy reaches with
    nothing left to learn."""

    def __init__(self, mean: Callable[[], float]) -> None:
        super().__init__()
        self._mean = mean

    def mean(self, profile) -> float:
        return self._mean()

    def learned(self, profile) -> bool:
        return True

    def cdf(self, profile, age: float) -> float:
        return min(1.0, max(0.0, (age / self._mean() - 0.75) / 0.5))

    def quantile(self, profile, q: float) -> float:
        return self._mean() * (0.75 + 0.5 * q)


# API seconds each call takes, status and submission alike: the product's turn r, as
# throughput.py measures it at 10x.
ROUND_TRIP = 0.05
SETTINGS = {  # name: (in flight, run limit, status limit)
    "default": (6, Limit(50, 60), Limit(50, 10)),
    "15 in flight": (15, Limit(150, 60), Limit(50, 10)),
    "raised": (30, Limit(250, 60), Limit(50, 10)),
    "half a key": (3, Limit(25, 60), Limit(25, 10)),  # one of two processes sharing the default key
}
# Latency regimes the scheduler is never told about: name -> (time scale, mean latency of the
# balanced mode in API seconds, multipliers by share of the items submitted). The published time,
# the scheduler's prior, is 8 s. A time scale (the emulator's) divides latencies, the limits'
# windows and the round trip; the prior stays 8 s, as in a product run against the emulator.
REGIMES = {
    "as published": (1.0, 8.0, ()),
    "emulator 10x": (10.0, 8.0, ()),     # 0.8 s predictions, limits' windows a tenth
    "slow model": (1.0, 40.0, ()),       # five times the prior
    "slow model 10x": (10.0, 40.0, ()),
    "doubles then back": (1.0, 8.0, ((1 / 3, 2.0), (2 / 3, 1.0))),
    "doubles 10x": (10.0, 8.0, ((1 / 3, 2.0), (2 / 3, 1.0))),
}


def simulate(items: int, in_flight: int, run: Limit, status: Limit = Limit(50, 10), *, mean: float = 8.0,
             steps: tuple[tuple[float, float], ...] = (), seed: int = 1, round_trip: float = ROUND_TRIP,
             fixed: float | None = None, oracle: bool = False) -> tuple[float, float, float]:
    """(ratio to the ceiling, status calls per prediction, mean notice delay / mean latency) of one
    simulated run. ``steps``: (share of the items submitted, latency multiplier from then on);
    ``round_trip``: what each call, status or submission, takes."""
    latencies: list[float] = []
    delays: list[float] = []

    async def scenario() -> tuple[float, int]:
        clock = FakeClock()
        controller = TrafficController(run, status, Limit(30, 10), in_flight, clock=clock)  # no latency hint
        if oracle:
            controller.latency = controller.scheduler.policy.latency = KnownLatency(lambda: mean * factor_now())
        server = FakeServer(clock, controller)
        rng = random.Random(seed)
        queue = list(range(items))

        async def poll(pid: str, admitted=None):
            await clock.sleep(round_trip)
            return await server.poll(pid, admitted)

        def factor_now() -> float:
            factor = 1.0
            for share, multiplier in steps:
                if len(latencies) >= share * items:
                    factor = multiplier
            return factor

        def latency() -> float:
            latencies.append(rng.uniform(0.75, 1.25) * mean * factor_now())
            return latencies[-1]

        async def worker() -> None:
            while queue:
                pid = f"p{queue.pop()}"
                slot = await controller.acquire_slot()
                await clock.sleep(round_trip)
                admission = await controller.acquire("run")
                server.submit(pid, latency())
                if admission is not None:
                    admission.answered()
                if fixed is None:
                    await controller.wait(pid, profile=("tryon-v1.6", "balanced"), poll=poll, slot=slot)
                else:
                    while True:
                        await clock.sleep(fixed)
                        if (await poll(pid)).terminal:
                            break
                    controller.release_slot(slot)
                delays.append(clock.now() - server.done_at[pid])

        await clock.run(asyncio.gather(*(worker() for _ in range(2 * in_flight))))
        return clock.now(), len(server.requests)

    elapsed, polls = asyncio.run(scenario())
    observed = sum(latencies) / len(latencies)
    ceiling = min(run.count / run.seconds, in_flight / observed, status.count / status.seconds)
    return items / elapsed / ceiling, polls / items, sum(delays) / len(delays) / observed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fixed", type=float, default=1.0,
                        help="the baseline's poll interval, as a share of the regime's mean latency (1 s at 8 s)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="limit settings to run, comma-separated")
    parser.add_argument("--regimes", default=",".join(REGIMES), help="latency regimes to run, comma-separated")
    parser.add_argument("--oracle", action="store_true",
                        help="give the scheduler the true latency distribution (a bound on its policy, not a "
                             "measurement of the product)")
    args = parser.parse_args()
    print(f"{'setting':<14} {'regime':<19} {'ratio':>6} {'status/pred':>11} {'notice':>6} {'fixed ratio':>11} "
          f"{'status/pred':>11} {'gain':>6}")
    for name in args.settings.split(","):
        in_flight, run, status = SETTINGS[name]
        for regime in args.regimes.split(","):
            scale, mean, steps = REGIMES[regime]
            row = []
            for fixed in (None, args.fixed * mean / 8 / scale):
                runs = [simulate(args.items, in_flight, run.scaled(scale), status.scaled(scale), mean=mean / scale,
                                 steps=steps, seed=seed, round_trip=ROUND_TRIP / scale, fixed=fixed,
                                 oracle=args.oracle and fixed is None)
                        for seed in range(1, args.seeds + 1)]
                row += [sum(r[k] for r in runs) / len(runs) for k in range(3)]
            print(f"{name:<14} {regime:<19} {row[0]:>6.1%} {row[1]:>11.2f} {row[2]:>6.1%} {row[3]:>11.1%} "
                  f"{row[4]:>11.2f} {row[0] / row[3]:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
