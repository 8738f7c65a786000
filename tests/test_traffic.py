"""Traffic control of one key: limiters, slots, the poll scheduler, the controller.

Everything runs on a FakeClock (virtual time), so minutes of traffic take milliseconds.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections import defaultdict
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tryon.errors import NotFound, OutOfCredits, ServerError
from tryon.models import Prediction
from tryon.settings import FashnSettings, Limit
from tryon.traffic import (
    Admission,
    FakeClock,
    Gate,
    InFlightSlots,
    LatencyDistribution,
    LatencyModel,
    MonotonicClock,
    SlidingWindowLimiter,
    TrafficController,
    default_margin,
)

EPS = 1e-9
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_window(times: list[float], count: int, window: float) -> None:
    """No ``count + 1`` admissions inside any window of ``window`` seconds."""
    times = sorted(times)
    for i in range(len(times) - count):
        assert times[i + count] - times[i] >= window - EPS, (
            f"{count + 1} admissions within {times[i + count] - times[i]:.6f}s < {window}s at t={times[i]:.6f}")


# -- the clock ---------------------------------------------------------------------------------
async def test_fake_clock_fires_timers_in_order_and_detects_deadlock():
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    await clock.run(asyncio.gather(sleeper("b", 2.0), sleeper("a", 1.0), sleeper("c", 2.0)))
    assert woke == [("a", 1.0), ("b", 2.0), ("c", 2.0)]

    await clock.advance(0.5)
    assert clock.now() == 2.5

    with pytest.raises(RuntimeError, match="deadlock"):
        await clock.run(asyncio.get_running_loop().create_future())


# -- the limiter -------------------------------------------------------------------------------
def test_default_margin_scales_with_the_window():
    assert default_margin(60) == pytest.approx(1.3)
    assert default_margin(10) == pytest.approx(0.3)
    assert default_margin(1) == pytest.approx(0.12)
    assert default_margin(0.1) == pytest.approx(0.012)
    # Counted from answers, the delay to the server is covered exactly: what is left is the provider's clocks.
    assert default_margin(60, answers=True) == pytest.approx(0.61)
    assert default_margin(1, answers=True) == pytest.approx(0.02)


@PROPERTY
@given(
    count=st.integers(1, 8),
    seconds=st.floats(0.1, 20),
    requests=st.lists(st.tuples(st.floats(0, 60), st.floats(0, 30)), min_size=1, max_size=60),
)
def test_a_limiter_counting_from_answers_leaves_no_stamps_that_put_n_plus_1_in_a_window(count, seconds, requests):
    # The server stamps a request anywhere between its admission and its answer (``requests``:
    # arrival, then how long until the answer, as long as 30 s, longer than many windows). Whatever
    # the stamps, no N+1 may fit in one window: for every admission, the requests admitted before
    # it that were unanswered, or answered within a window of it, are fewer than N.
    async def scenario() -> list[tuple[float, float]]:
        clock = FakeClock()
        limiter = SlidingWindowLimiter(Limit(count, seconds), clock, answers=True)
        spans: list[tuple[float, float]] = []

        async def request(at: float, lasts: float) -> None:
            await clock.sleep(at)
            admission = await limiter.acquire()
            admitted = clock.now()
            await clock.sleep(lasts)
            admission.answered()
            spans.append((admitted, clock.now()))

        await clock.run(asyncio.gather(*(request(*r) for r in requests)))
        return spans

    spans = asyncio.run(scenario())
    assert len(spans) == len(requests)  # liveness: everyone got in and was answered
    window = seconds + default_margin(seconds, answers=True)
    for admitted, _ in spans:
        overlapping = [a for a, answer in spans if a <= admitted and answer > admitted - window + 1e-9]
        assert len(overlapping) <= count, (admitted, sorted(spans))


@PROPERTY
@given(
    count=st.integers(1, 8),
    seconds=st.floats(0.1, 20),
    margin=st.one_of(st.none(), st.floats(0, 1)),
    arrivals=st.lists(st.floats(0, 60), min_size=1, max_size=60),
)
def test_limiter_is_exact_fifo_and_live(count, seconds, margin, arrivals):
    async def scenario() -> tuple[SlidingWindowLimiter, list[tuple[float, int]]]:
        clock = FakeClock()
        limiter = SlidingWindowLimiter(Limit(count, seconds), clock, margin=margin)
        admitted: list[tuple[float, int]] = []

        async def waiter(i: int, at: float) -> None:
            await clock.sleep(at)
            await limiter.acquire()
            admitted.append((clock.now(), i))

        await clock.run(asyncio.gather(*(waiter(i, at) for i, at in enumerate(arrivals))))
        return limiter, admitted

    limiter, admitted = asyncio.run(scenario())
    assert len(admitted) == len(arrivals)                      # liveness: everyone got in
    times = [t for t, _ in admitted]
    assert_window(times, count, seconds)                      # the contract
    assert_window(times, count, limiter.window)               # ... with the safety margin
    # FIFO and work-conserving: the exact reference schedule of a sliding log.
    order = sorted(range(len(arrivals)), key=lambda i: (arrivals[i], i))
    assert [i for _, i in admitted] == order
    expected: list[float] = []
    for i in order:
        t = arrivals[i]
        if expected:
            t = max(t, expected[-1])
        if len(expected) >= count:
            t = max(t, expected[-count] + limiter.window)
        expected.append(t)
    assert times == pytest.approx(expected, abs=1e-7)


@PROPERTY
@given(
    count=st.integers(1, 6),
    seconds=st.floats(0.5, 10),
    arrivals=st.lists(st.floats(0, 40), min_size=1, max_size=40),
    penalties=st.lists(st.tuples(st.floats(0, 40), st.one_of(st.none(), st.floats(0, 5))), max_size=6),
)
def test_limiter_under_penalties_keeps_the_window_and_honours_pauses(count, seconds, arrivals, penalties):
    async def scenario():
        clock = FakeClock()
        limiter = SlidingWindowLimiter(Limit(count, seconds), clock)
        admitted: list[float] = []
        pauses: list[tuple[float, float, float | None]] = []

        async def waiter(at: float) -> None:
            await clock.sleep(at)
            await limiter.acquire()
            admitted.append(clock.now())

        async def penalizer(at: float, retry_after: float | None) -> None:
            await clock.sleep(at)
            pauses.append((clock.now(), limiter.penalize(retry_after), retry_after))

        await clock.run(asyncio.gather(*(waiter(a) for a in arrivals), *(penalizer(*p) for p in penalties)))
        return admitted, pauses

    admitted, pauses = asyncio.run(scenario())
    assert len(admitted) == len(arrivals)
    assert_window(admitted, count, seconds)
    assert len(pauses) == len(penalties)
    for start, length, retry_after in pauses:
        inside = [t for t in admitted if start + 1e-7 < t < start + length - 1e-7]
        assert not inside, f"admitted {inside} during the pause {start}+{length}"
        if retry_after is not None:
            assert length == pytest.approx(retry_after)               # Retry-After honoured exactly


async def test_limiter_backs_off_exponentially_slows_down_and_recovers():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(Limit(50, 60), clock)
    assert [limiter.penalize(None) for _ in range(3)] == pytest.approx([1.2, 2.4, 4.8])
    assert limiter.effective_count() == int(50 * 0.8 ** 3)
    await clock.advance(limiter.window * 3 + 1)
    assert limiter.strikes() == 0 and limiter.effective_count() == 50
    assert limiter.penalize(None) == pytest.approx(1.2)        # back to the first step


async def test_limiter_cancelled_waiter_does_not_block_the_queue():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(Limit(1, 10), clock, margin=0)
    await limiter.acquire()
    times: dict[str, float] = {}

    async def named(name: str) -> None:
        await limiter.acquire()
        times[name] = clock.now()

    a = asyncio.ensure_future(named("a"))
    b = asyncio.ensure_future(named("b"))
    await clock.advance(5)
    a.cancel()
    await clock.run(b)
    assert times == {"b": 10.0}
    assert a.cancelled()


async def test_limiter_on_the_real_clock():
    limiter = SlidingWindowLimiter(Limit(3, 0.05), MonotonicClock(), margin=0)
    start = time.monotonic()
    stamps = []
    for _ in range(7):
        await limiter.acquire()
        stamps.append(time.monotonic())
    assert_window(stamps, 3, 0.05)
    assert time.monotonic() - start >= 0.1 - 1e-3


# -- slots -------------------------------------------------------------------------------------
@PROPERTY
@given(
    capacity=st.integers(1, 6),
    jobs=st.lists(st.tuples(st.floats(0, 20), st.floats(0.01, 10)), min_size=1, max_size=40),
)
def test_slots_never_exceed_capacity_and_hand_over_at_once(capacity, jobs):
    async def scenario():
        clock = FakeClock()
        slots = InFlightSlots(capacity, clock)
        events: list[tuple[float, int, int]] = []  # (time, +1/-1, job)
        waited: list[tuple[float, float]] = []     # (requested at, granted at)
        held = 0
        peak = 0

        async def job(i: int, start: float, duration: float) -> None:
            nonlocal held, peak
            await clock.sleep(start)
            asked = clock.now()
            slot = await slots.acquire()
            held += 1
            peak = max(peak, held)
            waited.append((asked, clock.now()))
            events.append((clock.now(), +1, i))
            await clock.sleep(duration)
            held -= 1
            events.append((clock.now(), -1, i))
            assert slots.release(slot) is True
            assert slots.release(slot) is False                  # idempotent

        await clock.run(asyncio.gather(*(job(i, *j) for i, j in enumerate(jobs))))
        return slots, events, waited, peak

    slots, events, waited, peak = asyncio.run(scenario())
    assert peak <= capacity
    assert slots.busy == 0 and slots.releases == len(jobs)
    release_times = {t for t, d, _ in events if d < 0}
    for asked, granted in waited:
        # Either granted when asked, or exactly at a release: no slot ever sits idle.
        assert granted == asked or granted in release_times


async def test_slot_handover_capacity_change_and_phantoms():
    clock = FakeClock()
    slots = InFlightSlots(1, clock)
    first = await slots.acquire()
    waiters = [asyncio.ensure_future(slots.acquire()) for _ in range(3)]
    await clock.advance(5)
    assert not any(w.done() for w in waiters) and slots.waiting == 3
    slots.release(first)
    await clock.settle()
    assert waiters[0].done() and clock.now() == 5.0                     # at once
    slots.capacity = 3                                                 # grows at runtime
    await clock.settle()
    assert all(w.done() for w in waiters) and slots.busy == 3
    for w in waiters:
        slots.release(w.result())

    slots.capacity = 2
    phantom = slots.hold_phantom(7.0)
    mine = await slots.acquire()
    late = asyncio.ensure_future(slots.acquire())
    await clock.advance(6.9)
    assert not late.done() and phantom.phantom and not phantom.released
    await clock.advance(0.1)
    assert late.done() and clock.now() == pytest.approx(12.0)
    assert phantom.released and phantom.released_at == pytest.approx(12.0)

    # An ambiguous submission turns its own slot into a phantom; a phantom over capacity counts.
    slots.hold_phantom(3.0, slot=mine)
    extra = slots.hold_phantom(1.0)
    assert slots.busy == 3 > slots.capacity
    await clock.advance(3.0)
    assert mine.released and extra.released and slots.busy == 1
    await slots.aclose()


# -- the poll scheduler ------------------------------------------------------------------------
class FakeServer:
    """Predictions that complete at submitted + latency; polls go through the gate like the client."""

    def __init__(self, clock: FakeClock, gate: TrafficController | None = None) -> None:
        self.clock = clock
        self.gate = gate
        self.done_at: dict[str, float] = {}
        self.polls: dict[str, list[float]] = defaultdict(list)
        self.requests: list[float] = []

    def submit(self, pid: str, latency: float) -> None:
        self.done_at[pid] = self.clock.now() + latency

    async def poll(self, pid: str, admitted: Admission | None = None) -> Prediction:
        """One status call, like the client's: on the scheduler's admission when given, else
        through the gate."""
        admission = admitted or (await self.gate.acquire("status") if self.gate is not None else None)
        if admission is not None:
            admission.answered()  # the answer is immediate (answering twice is harmless)
        now = self.clock.now()
        self.requests.append(now)
        self.polls[pid].append(now)
        if pid not in self.done_at:
            raise NotFound("unknown prediction", http_status=404)
        if now >= self.done_at[pid]:
            return Prediction(id=pid, status="completed", output=[f"https://cdn/{pid}/output_0.png"])
        return Prediction(id=pid, status="processing")


MODES = ("performance", "balanced", "quality")


def teach(controller: TrafficController, profile: tuple[str, str], mean: float, n: int = 40) -> None:
    """Completions spread evenly within ±25 % of ``mean``, as if seen through narrow brackets:
    the estimate then holds what the prior only guessed, and the scheduler stops probing. In an
    order that spreads every stretch of them over the range (recent ones weigh most)."""
    for k in range(n):
        age = mean * (0.75 + 0.5 * ((k * 0.618034) % 1.0))
        controller.latency.observe(profile, age - 0.01 * mean, age + 0.01 * mean)


# More cases: TRYON_POLL_EXAMPLES=1000 (about half a minute).
@settings(max_examples=int(os.environ.get("TRYON_POLL_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(1, 10),
    seconds=st.floats(0.5, 5),
    jobs=st.lists(st.tuples(st.floats(0, 30), st.floats(0.1, 40), st.sampled_from(MODES)),
                  min_size=1, max_size=40),
)
def test_poll_scheduler_keeps_the_budget_and_polls_everyone_again_in_bounded_time(count, seconds, jobs):
    async def scenario():
        clock = FakeClock()
        controller = TrafficController(status_limit=Limit(count, seconds), clock=clock)
        server = FakeServer(clock, controller)
        noticed: dict[str, float] = {}
        first_due: dict[str, float] = {}

        async def job(i: int, start: float, latency: float, mode: str) -> None:
            await clock.sleep(start)
            pid = f"p{i}"
            server.submit(pid, latency)
            first_due[pid] = clock.now() + controller.scheduler.first_poll_delay(("tryon-v1.6", mode))
            answer = await controller.wait(pid, profile=("tryon-v1.6", mode), poll=server.poll)
            assert answer.terminal and answer.id == pid
            noticed[pid] = clock.now()

        await clock.run(asyncio.gather(*(job(i, *j) for i, j in enumerate(jobs))))
        return controller, server, noticed, first_due

    controller, server, noticed, first_due = asyncio.run(scenario())
    assert len(noticed) == len(jobs)                                        # liveness
    assert_window(server.requests, count, seconds)                          # the status budget
    window = controller.limiters["status"].window
    bound = controller.scheduler.policy.widest + math.ceil(len(jobs) / count) * window + seconds / count + 1e-6
    for pid, times in server.polls.items():
        gaps = [b - a for a, b in pairwise(times)]
        assert max(gaps, default=0.0) <= bound, f"{pid} waited {max(gaps)}s between polls (bound {bound}s)"
        assert times[0] <= first_due[pid] + bound                               # polled by its plan
        assert noticed[pid] - max(server.done_at[pid], first_due[pid]) <= bound  # completion noticed


async def test_poll_scheduler_learns_latency_in_both_directions():
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    server = FakeServer(clock, controller)
    rng = random.Random(7)
    fast, slow = ("tryon-v1.6", "balanced"), ("tryon-v1.6", "quality")
    # The prior, the published time ±25 %, is only a guess: until a completion is seen, the first
    # poll probes at a sixteenth of the age by which it has 5 % of predictions ended.
    assert controller.scheduler.first_poll_delay(fast) == pytest.approx(8 * 0.775 / 16, abs=0.01)
    assert controller.scheduler.first_poll_delay(slow) == pytest.approx(14 * 0.775 / 16, abs=0.01)
    spacing = controller.limiters["status"].window / 50  # the pacing of status calls
    learned = False

    async def batch(profile, n: int, lo: float, hi: float) -> list[float]:
        delays = []

        async def one(i: int) -> None:
            pid = f"{profile[1]}-{len(server.done_at)}-{i}"
            server.submit(pid, rng.uniform(lo, hi))
            start = clock.now()
            first = controller.scheduler.first_poll_delay(profile)  # planned at submission
            await controller.wait(pid, profile=profile, poll=server.poll)
            delays.append(clock.now() - server.done_at[pid])
            if learned:  # the estimate no longer moves: the plan holds
                assert first - EPS <= server.polls[pid][0] - start <= first + n * spacing + EPS

        await asyncio.gather(*(one(i) for i in range(n)))
        return delays

    for _ in range(8):
        await clock.run(batch(fast, 6, 3.8, 4.2))          # faster than the 8 s prior
        await clock.run(batch(slow, 6, 24.0, 26.0))        # slower than the 14 s prior
    assert controller.latency.mean(fast) == pytest.approx(4.0, abs=0.2)
    assert 3.6 <= controller.scheduler.first_poll_delay(fast) <= 4.0
    assert controller.latency.mean(slow) == pytest.approx(25.0, abs=1.0)
    assert 23.0 <= controller.scheduler.first_poll_delay(slow) <= 25.0

    learned = True
    polls_before = len(server.requests)
    delays = await clock.run(batch(fast, 6, 3.8, 4.2))
    # Six predictions ending within 0.4 s share the paced calls: each is noticed within six of them.
    assert max(delays) <= 6 * spacing + EPS, delays
    assert (len(server.requests) - polls_before) / 6 <= 4                   # few polls per completion


async def run_workers(clock: FakeClock, controller: TrafficController, server: FakeServer, latency, count: int,
                      *, workers: int = 6, profile=("tryon-v1.6", "balanced")) -> list[tuple[float, float, float]]:
    """``count`` predictions through ``workers`` loops (each submits when its last one is noticed);
    ``latency(k)`` draws the k-th one's. Returns (submitted, ended, noticed) per prediction."""
    seen: list[tuple[float, float, float]] = []
    started = 0

    async def worker() -> None:
        nonlocal started
        while started < count:
            pid = f"p{started}"
            server.submit(pid, latency(started))
            started += 1
            submitted = clock.now()
            await controller.wait(pid, profile=profile, poll=server.poll)
            seen.append((submitted, server.done_at[pid], clock.now()))

    await clock.run(asyncio.gather(*(worker() for _ in range(workers))))
    return seen


# The 8 s prior ten times too long (the emulator at 10x: the limits' windows a tenth too, as
# configured), and five times too short (a slow model on a real key).
@pytest.mark.parametrize(("mean", "scale"), [(0.8, 10.0), (40.0, 1.0)])
async def test_a_cold_start_finds_a_latency_far_from_the_prior_within_the_first_round(mean, scale):
    clock = FakeClock()
    controller = TrafficController(Limit(50, 60 / scale), Limit(50, 10 / scale), clock=clock)
    server = FakeServer(clock, controller)
    rng = random.Random(11)
    seen = await run_workers(clock, controller, server, lambda _: rng.uniform(0.75, 1.25) * mean, 12)
    first_round, second_round = seen[:6], seen[6:]
    assert all(noticed - ended <= mean for _, ended, noticed in first_round), first_round
    # By the second round it knows: noticed within a tenth of the mean on average.
    assert sum(noticed - ended for _, ended, noticed in second_round) / 6 <= 0.1 * mean, second_round
    assert controller.latency.mean(("tryon-v1.6", "balanced")) == pytest.approx(mean, rel=0.2)


@pytest.mark.parametrize("factor", [2.0, 0.5])  # the provider's queue grows, or drains
async def test_the_estimate_follows_a_latency_step_within_50_completions(factor):
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    server = FakeServer(clock, controller)
    profile = ("tryon-v1.6", "balanced")
    rng = random.Random(5)
    before, after = 8.0, 8.0 * factor
    await run_workers(clock, controller, server, lambda _: rng.uniform(0.75, 1.25) * before, 60)
    assert controller.latency.mean(profile) == pytest.approx(before, rel=0.1)
    means = []
    original = controller.latency.observe

    def observe(*args) -> None:
        original(*args)
        means.append(controller.latency.mean(profile))

    controller.latency.observe = observe  # type: ignore[method-assign]
    await run_workers(clock, controller, server, lambda _: rng.uniform(0.75, 1.25) * after, 80)
    within = [abs(m - after) <= 0.1 * after for m in means]
    settled = next(k for k in range(len(within)) if all(within[k:]))  # within 10 % from then on
    assert settled < 50, (settled, means)


def test_the_priors_are_the_published_times():
    model = LatencyModel()
    assert model.prior(("tryon-v1.6", "performance")) == pytest.approx(5.0)
    assert model.prior(("tryon-v1.6", "quality")) == pytest.approx(14.0)
    assert model.prior(("tryon-v1.6", "unknown-mode")) == pytest.approx(8.0)


async def test_poll_errors_propagate_transient_ones_are_retried_and_timeouts_fire():
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    server = FakeServer(clock, controller)
    profile = ("tryon-v1.6", "performance")

    with pytest.raises(NotFound):
        await clock.run(controller.wait("ghost", profile=profile, poll=server.poll))

    server.submit("flaky", 1.0)
    failures = 2

    async def flaky(pid: str, admitted: Admission) -> Prediction:
        nonlocal failures
        if failures:
            failures -= 1
            admitted.answered()
            raise ServerError("boom", http_status=502)
        return await server.poll(pid, admitted)

    answer = await clock.run(controller.wait("flaky", profile=profile, poll=flaky))
    assert answer.status == "completed" and failures == 0

    server.submit("stuck", 1e9)
    start = clock.now()
    with pytest.raises(TimeoutError):
        await clock.run(controller.wait("stuck", profile=profile, poll=server.poll, timeout=30))
    assert clock.now() - start == pytest.approx(30, abs=1e-6)
    assert server.polls["stuck"][-1] == pytest.approx(start + 30)  # its last poll is not paced


async def test_cancelled_wait_stops_polling_and_retries_inside_a_poll_pay_again():
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    server = FakeServer(clock, controller)
    server.submit("p", 100.0)
    waiter = asyncio.ensure_future(controller.wait("p", profile=("m", "balanced"), poll=server.poll))
    await clock.advance(10)
    polled = len(server.polls["p"])
    assert polled >= 2
    waiter.cancel()
    await clock.advance(50)
    assert len(server.polls["p"]) == polled and controller.scheduler.in_flight == 0

    async def retrying_client(pid: str, admitted: Admission) -> Prediction:
        admitted.answered()                  # first attempt: on the scheduler's admission
        await controller.acquire("status")   # a retry inside the client: a new admission
        return Prediction(id=pid, status="completed")

    # The scheduler's own admission covers the client's first gate call: no double count.
    assert controller.limiters["status"].recent() == []  # the cancelled one's polls are a window old
    await clock.run(controller.wait("q", profile=("m", "balanced"), poll=retrying_client))
    assert len(controller.limiters["status"].recent()) == 2


# -- the controller ----------------------------------------------------------------------------
def test_controller_is_a_gate_and_reads_settings():
    controller = TrafficController.from_settings(FashnSettings(_env_file=None, status_limit="40/10",
                                                               max_in_flight=4))
    assert isinstance(controller, Gate)
    assert controller.limiters["run"].limit == Limit(50, 60)
    assert controller.limiters["status"].limit == Limit(40, 10)
    assert controller.slots.capacity == 4
    assert controller.latency.prior(("tryon-v1.6", "balanced")) == pytest.approx(8.0)  # latencies are never told
    with pytest.raises(ValueError):
        asyncio.run(controller.acquire("upload"))


async def test_slot_is_freed_the_moment_the_prediction_ends():
    clock = FakeClock()
    controller = TrafficController(max_in_flight=1, clock=clock)
    server = FakeServer(clock, controller)
    slot = await controller.acquire_slot()
    await controller.acquire("run")
    server.submit("a", 4.3)
    teach(controller, ("m", "performance"), 5.0)
    first = controller.scheduler.first_poll_delay(("m", "performance"))
    assert first == pytest.approx(5 * 0.775, abs=0.1), "once 5 % of the predictions seen have ended"
    done = asyncio.ensure_future(controller.wait("a", model_name="m", mode="performance", poll=server.poll,
                                                 slot=slot))
    await clock.run(controller.acquire_slot())
    noticed = server.polls["a"][-1]
    assert server.polls["a"][0] == pytest.approx(first) and server.polls["a"][-2] < 4.3, "noticed at the first poll after"
    assert clock.now() == noticed and slot.released_at == noticed
    # Alone, it is polled as often as the pacing (window / count) and min_interval allow.
    spacing = max(controller.scheduler.policy.min_interval(("m", "performance")), controller.limiters["status"].window / 50)
    assert noticed - 4.3 <= spacing + EPS
    assert (await done).status == "completed"


async def test_out_of_credits_stops_submissions_but_polling_goes_on():
    clock = FakeClock()
    controller = TrafficController(run_limit=Limit(1, 60), max_in_flight=1, clock=clock)
    server = FakeServer(clock, controller)
    slot = await controller.acquire_slot()
    await controller.acquire("run")
    server.submit("a", 20.0)
    in_flight = asyncio.ensure_future(controller.wait("a", profile=("m", "balanced"), poll=server.poll, slot=slot))
    slot_waiter = asyncio.ensure_future(controller.acquire_slot())
    run_waiter = asyncio.ensure_future(controller.acquire("run"))   # blocked by the 1/60 limit
    await clock.advance(1.0)
    assert not slot_waiter.done() and not run_waiter.done()

    controller.on_429("run", "OutOfCredits", None)
    await clock.settle()
    assert clock.now() == 1.0
    assert isinstance(slot_waiter.exception(), OutOfCredits)      # waiters fail at once
    assert isinstance(run_waiter.exception(), OutOfCredits)
    with pytest.raises(OutOfCredits):
        await controller.acquire("run")
    with pytest.raises(OutOfCredits):
        await controller.acquire_slot()
    await controller.acquire("status")                              # status still admitted

    answer = await clock.run(in_flight)                             # in-flight work finishes
    assert answer.status == "completed" and slot.released
    with pytest.raises(OutOfCredits, match="OutOfCredits"):        # and submissions stay stopped
        await controller.acquire_slot()


async def test_rate_limit_exceeded_pauses_that_endpoint_for_retry_after():
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    await controller.acquire("run")
    controller.on_429("run", "RateLimitExceeded", 7.0)
    run = asyncio.ensure_future(controller.acquire("run"))
    await controller.acquire("status")                               # other endpoints unaffected
    assert clock.now() == 0.0
    await clock.advance(6.99)
    assert not run.done()
    await clock.advance(0.01)
    assert run.done() and clock.now() == pytest.approx(7.0)

    controller.on_429("status", "RateLimitExceeded", None)          # no Retry-After: backoff
    paused_at = clock.now()
    await clock.run(controller.acquire("status"))
    assert clock.now() - paused_at == pytest.approx(10 / 50)


async def test_concurrency_limit_exceeded_waits_for_a_release_or_the_backoff():
    clock = FakeClock()
    controller = TrafficController(max_in_flight=2, clock=clock)
    a = await controller.acquire_slot()
    b = await controller.acquire_slot()
    controller.on_429("run", "ConcurrencyLimitExceeded", None)
    assert controller.slots.busy == 3                                   # the unknown occupant
    retry = asyncio.ensure_future(controller.acquire("run"))
    await clock.advance(0.5)
    assert not retry.done()
    controller.release_slot(a)                                          # one of ours ends
    await clock.settle()
    assert retry.done() and clock.now() == 0.5

    await clock.advance(2.0)
    assert controller.slots.busy == 1                                   # the first phantom expired
    controller.on_429("run", "ConcurrencyLimitExceeded", None)         # nothing of ours ends now
    start = clock.now()
    await clock.run(controller.acquire("run"))
    # A second 429 within one mean latency of the first: the hold doubles.
    assert clock.now() - start == pytest.approx(2 * controller.concurrency_backoff) == pytest.approx(4.0)
    assert controller.slots.busy == 1                                   # b alone: that phantom ended with the hold
    controller.release_slot(b)


async def test_ambiguous_submission_keeps_a_phantom_slot():
    clock = FakeClock()
    controller = TrafficController(max_in_flight=1, clock=clock)
    slot = await controller.acquire_slot()
    controller.hold_phantom(profile=("m", "performance"), slot=slot)   # e.g. a 502 after sending
    assert not slot.released
    expected = controller.latency.expected_duration(("m", "performance"))
    late = await clock.run(controller.acquire_slot())
    # Mean + 4 mean deviations of the prior (5 s ±25 %): past the latest it expects (6.25 s).
    assert clock.now() == pytest.approx(expected) == pytest.approx(5 + 4 * 0.625, abs=1e-3)

    # The step code's form: a phantom of its own for (model_name, mode), beside the caller's slot.
    start = clock.now()
    phantom = controller.hold_phantom("tryon-v1.6", "quality")
    assert controller.slots.busy == 2 > controller.slots.capacity
    controller.release_slot(late)
    await clock.run(controller.acquire_slot())
    assert clock.now() - start == pytest.approx(14 + 4 * 1.75, abs=1e-3) and phantom.released


async def test_a_scarce_status_call_goes_to_the_prediction_most_likely_finished():
    # One call per 4 s. A (quality, 10.5-17.5 s as seen) is polled at its first due time,
    # ≈10.85 s, and is still running. B (balanced, 6-10 s) is submitted at 6.1 s: first due at
    # 12.3 s, after A's re-poll would be due in a deadline order (10.85 + 10 % of 14 s). At the
    # next call (~14.9 s) A has ended with chance 0.62 and B with 0.71, so B gets it.
    clock = FakeClock()
    controller = TrafficController(status_limit=Limit(1, 4), clock=clock)
    teach(controller, ("m", "quality"), 14.0)
    teach(controller, ("m", "balanced"), 8.0)
    server = FakeServer(clock, controller)
    server.submit("A", 100.0)
    a = asyncio.ensure_future(controller.wait("A", profile=("m", "quality"), poll=server.poll))
    await clock.advance(6.1)
    server.submit("B", 7.0)
    b = asyncio.ensure_future(controller.wait("B", profile=("m", "balanced"), poll=server.poll))
    await clock.run(b)
    assert server.polls["A"] == [pytest.approx(10.85, abs=0.15)]
    assert len(server.polls["B"]) == 1 and 14.7 <= server.polls["B"][0] <= 15.1
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)


async def test_status_calls_are_paced_not_burst_and_a_stuck_prediction_backs_off():
    clock = FakeClock()
    controller = TrafficController(status_limit=Limit(5, 1), clock=clock)
    server = FakeServer(clock, controller)
    profile = ("m", "balanced")
    teach(controller, profile, 8.0)
    for i in range(6):
        server.submit(f"p{i}", 8.0 + i)
    await clock.run(asyncio.gather(*(controller.wait(f"p{i}", profile=profile, poll=server.poll)
                                     for i in range(6))))
    gaps = [b - a for a, b in pairwise(server.requests)]
    quickest = controller.scheduler.quickest  # the pace quickens while the window has room
    assert min(gaps) >= 0.75 * quickest / 5 - EPS  # a burst of five, then a silent window, would not be

    clock = FakeClock()
    controller = TrafficController(clock=clock)
    teach(controller, profile, 8.0)  # has seen 6-10 s
    server = FakeServer(clock, controller)
    server.submit("stuck", 60.0)  # long past anything the model expects
    await clock.run(controller.wait("stuck", profile=profile, poll=server.poll))
    times = server.polls["stuck"]
    early = [b - a for a, b in pairwise(times) if 6.0 < b < 10.0]
    late = [b - a for a, b in pairwise(times) if a > 30.0]
    policy = controller.scheduler.policy
    assert early and max(early) <= policy.min_interval(profile) + 0.05, early  # near its expected end: often
    # Past the tail (10 s): after a fifth of how far past it the age it was last seen running is.
    assert late and min(late) >= policy.widen * (30 - 10.5) - EPS, late
    assert max(late) <= policy.widen * 60 + EPS, late


class LateClock(FakeClock):
    """Every sleep ends ``late`` seconds after it was due, as on a busy event loop."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.late if seconds > 0 else seconds)


async def polled_while_busy(clock: FakeClock, controller: TrafficController, count: int) -> list[float]:
    """Status call times over 20 s of ``count`` predictions submitted at 0 that run 30 s."""
    server = FakeServer(clock, controller)
    teach(controller, ("m", "balanced"), 8.0)
    waits = []
    for i in range(count):
        server.submit(f"p{i}", 30.0)
        waits.append(asyncio.ensure_future(controller.wait(f"p{i}", profile=("m", "balanced"), poll=server.poll)))
    await clock.advance(20.0)
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    return server.requests


async def test_late_wake_ups_do_not_stretch_the_pace():
    # 30 predictions near their end keep the scheduler busy; 5 calls/s, every sleep 10 ms late.
    # Counting each step from the wake-up gave one call per 0.21 s: 48 in the 10 s measured.
    clock = LateClock(0.01)
    controller = TrafficController(status_limit=Limit(5, 1), clock=clock, margin=0)
    controller.scheduler.fill = None  # the even pace alone (a quicker one would hide a stretched step)
    requests = await polled_while_busy(clock, controller, 30)
    busy = [t for t in requests if 8.0 <= t < 18.0]
    assert len(busy) >= 49, len(busy)
    assert_window(requests, 5, 1.0)  # the limit holds


async def test_the_pace_quickens_after_a_quiet_spell_and_the_limit_still_holds():
    # 20 predictions submitted together: nothing to poll for 6 s, then all of them at once.
    # The even pace (0.2 s steps: 10 per 2 s) would make at most 6 calls in the first second.
    clock = FakeClock()
    controller = TrafficController(status_limit=Limit(10, 2), clock=clock, margin=0)
    requests = await polled_while_busy(clock, controller, 20)
    first = min(requests)
    assert 5.5 < first < 7.0
    assert sum(1 for t in requests if t < first + 1.0) >= 7
    assert_window(requests, 10, 2.0)
    busy = [t for t in requests if 10.0 <= t < 20.0]  # a busy spell: back to the even pace
    assert 48 <= len(busy) <= 50, len(busy)


def test_latency_estimate_from_wide_brackets_is_unbiased_where_midpoints_are_not():
    # Scarce polls: the first at 5.5-8.5 s, then every 2.5 s; 6-10 s true latencies. Many
    # completions are only known to lie in (0, first poll]: their midpoints average 7.5 s.
    rng = random.Random(3)
    estimate = LatencyDistribution(8.0)
    midpoints = []
    for _ in range(600):
        latency, lo, hi = rng.uniform(6, 10), 0.0, rng.uniform(5.5, 8.5)
        while hi < latency:
            lo, hi = hi, hi + 2.5
        estimate.observe(lo, hi)
        midpoints.append((lo + hi) / 2)
    assert abs(sum(midpoints) / len(midpoints) - 8) > 0.4           # the naive guess is off
    assert estimate.mean == pytest.approx(8.0, abs=0.15)
    assert 5.9 <= estimate.quantile(0.05) <= 6.6 and 9.4 <= estimate.quantile(0.95) <= 10.1
    assert estimate.cdf(5.5) < 0.03 and estimate.cdf(10.3) > 0.97


def test_latency_estimate_follows_a_provider_far_from_its_published_time():
    for true_range in ((1.8, 2.2), (36.0, 44.0)):  # a quarter of the 8 s prior, five times it
        estimate = LatencyDistribution(8.0)
        rng = random.Random(5)
        for _ in range(300):
            latency = rng.uniform(*true_range)
            estimate.observe(latency - 0.05 * latency, latency + 0.05 * latency)
        low, high = true_range
        assert estimate.mean == pytest.approx((low + high) / 2, rel=0.05)
        assert low * 0.9 <= estimate.quantile(0.05) and estimate.quantile(0.95) <= high * 1.1
        assert estimate.width * estimate.bins >= 2 * estimate.mean  # the grid moved to cover it


def test_the_latency_docstring_example_runs():
    import doctest

    import tryon.traffic.latency as module

    result = doctest.testmod(module)
    assert result.attempted >= 3 and result.failed == 0


def test_a_flow_process_freezes_its_startup_objects_once():
    # Full collections over Prefect's ~140 000 startup objects stalled the loop longer than the
    # limiter's margin at a 10x time scale; frozen objects are skipped by every collection.
    import gc

    from tryon.process import freeze_startup_objects

    gc.unfreeze()
    freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000, frozen
    _later = [[] for _ in range(10_000)]  # a run's objects: a second call must not freeze them
    freeze_startup_objects()
    # At most what was frozen (frozen objects that refcounting frees leave the count); a second
    # freeze would add the 10 000 lists.
    assert gc.get_freeze_count() <= frozen
