"""Traffic control of one key: limiters, slots, the poll scheduler, the controller.

Everything runs on a FakeClock (virtual time), so minutes of traffic take milliseconds.
"""

from __future__ import annotations

import asyncio
import math
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
    FakeClock,
    Gate,
    InFlightSlots,
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
    assert peak <= capacity and slots.peak <= capacity
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
    assert waiters[0].done() and waiters[0].result().acquired_at == 5.0   # at once
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
    assert not late.done() and slots.phantoms == 1
    await clock.advance(0.1)
    assert late.done() and late.result().acquired_at == pytest.approx(12.0)
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

    async def poll(self, pid: str) -> Prediction:
        if self.gate is not None:
            await self.gate.acquire("status")
        now = self.clock.now()
        self.requests.append(now)
        self.polls[pid].append(now)
        if pid not in self.done_at:
            raise NotFound("unknown prediction", http_status=404)
        if now >= self.done_at[pid]:
            return Prediction(id=pid, status="completed", output=[f"https://cdn/{pid}/output_0.png"])
        return Prediction(id=pid, status="processing")


MODES = ("performance", "balanced", "quality")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
    # The scheduler's own admission covers the client's first gate call: no double count.
    assert controller.stats().admitted["status"] == len(server.requests) == controller.scheduler.polls
    window = controller.limiters["status"].window
    bound = controller.scheduler.max_interval + math.ceil(len(jobs) / count) * window + 1e-6
    for pid, times in server.polls.items():
        gaps = [b - a for a, b in pairwise(times)]
        assert max(gaps, default=0.0) <= bound, f"{pid} waited {max(gaps)}s between polls (bound {bound}s)"
        queueing = bound - controller.scheduler.max_interval
        assert first_due[pid] - EPS <= times[0] <= first_due[pid] + queueing    # first poll as planned
        assert noticed[pid] - max(server.done_at[pid], first_due[pid]) <= bound  # completion noticed


async def test_poll_scheduler_learns_latency_in_both_directions():
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    server = FakeServer(clock, controller)
    rng = random.Random(7)
    fast, slow = ("tryon-v1.6", "balanced"), ("tryon-v1.6", "quality")
    assert controller.latency.first_poll_delay(fast) == pytest.approx(8 - 1.6)
    assert controller.latency.first_poll_delay(slow) == pytest.approx(14 - 2.8)

    async def batch(profile, n: int, lo: float, hi: float) -> list[float]:
        delays = []

        async def one(i: int) -> None:
            pid = f"{profile[1]}-{len(server.done_at)}-{i}"
            server.submit(pid, rng.uniform(lo, hi))
            start = clock.now()
            first = controller.scheduler.first_poll_delay(profile)  # depends on what is in flight
            await controller.wait(pid, profile=profile, poll=server.poll)
            delays.append(clock.now() - server.done_at[pid])
            assert server.polls[pid][0] - start == pytest.approx(first, abs=1e-6)

        await asyncio.gather(*(one(i) for i in range(n)))
        return delays

    for _ in range(8):
        await clock.run(batch(fast, 6, 3.8, 4.2))          # faster than the 8 s prior
        await clock.run(batch(slow, 6, 24.0, 26.0))        # slower than the 14 s prior
    est_fast, est_slow = controller.latency.estimate(fast), controller.latency.estimate(slow)
    assert est_fast.mean == pytest.approx(4.0, abs=0.4)
    assert 3.0 <= controller.latency.first_poll_delay(fast) <= 4.2
    assert est_slow.mean == pytest.approx(25.0, abs=1.5)
    assert 20.0 <= controller.latency.first_poll_delay(slow) <= 25.0

    polls_before = controller.scheduler.polls
    delays = await clock.run(batch(fast, 6, 3.8, 4.2))
    # Noticed within one re-poll: six predictions near their end share 85 % of 50 polls per 10 s.
    fair = 6 / (controller.scheduler.target_share * 50 / controller.limiters["status"].window)
    assert max(delays) <= max(controller.scheduler.interval(fast, 4.2), fair) + 1e-6
    assert (controller.scheduler.polls - polls_before) / 6 <= 4              # few polls per completion


def test_latency_scale_divides_the_priors():
    model = LatencyModel(latency_scale=10)
    assert model.prior(("tryon-v1.6", "performance")) == pytest.approx(0.5)
    assert model.prior(("tryon-v1.6", "quality")) == pytest.approx(1.4)
    assert model.prior(("tryon-v1.6", "unknown-mode")) == pytest.approx(0.8)


async def test_poll_errors_propagate_transient_ones_are_retried_and_timeouts_fire():
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    server = FakeServer(clock, controller)
    profile = ("tryon-v1.6", "performance")

    with pytest.raises(NotFound):
        await clock.run(controller.wait("ghost", profile=profile, poll=server.poll))

    server.submit("flaky", 1.0)
    failures = 2

    async def flaky(pid: str) -> Prediction:
        nonlocal failures
        if failures:
            failures -= 1
            await controller.acquire("status")
            raise ServerError("boom", http_status=502)
        return await server.poll(pid)

    answer = await clock.run(controller.wait("flaky", profile=profile, poll=flaky))
    assert answer.status == "completed" and failures == 0

    server.submit("stuck", 1e9)
    start = clock.now()
    with pytest.raises(TimeoutError):
        await clock.run(controller.wait("stuck", profile=profile, poll=server.poll, timeout=30))
    assert clock.now() - start == pytest.approx(30, abs=1e-6)
    assert server.polls["stuck"][-1] == pytest.approx(start + 30)


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

    async def retrying_client(pid: str) -> Prediction:
        await controller.acquire("status")   # first attempt: pre-admitted by the scheduler
        await controller.acquire("status")   # a retry inside the client: a new admission
        return Prediction(id=pid, status="completed")

    before = controller.stats().admitted["status"]
    await clock.run(controller.wait("q", profile=("m", "balanced"), poll=retrying_client))
    assert controller.stats().admitted["status"] - before == 2


# -- the controller ----------------------------------------------------------------------------
def test_controller_is_a_gate_and_reads_settings():
    controller = TrafficController.from_settings(FashnSettings(_env_file=None, status_limit="40/10",
                                                               max_in_flight=4))
    assert isinstance(controller, Gate)
    assert controller.limiters["run"].limit == Limit(50, 60)
    assert controller.limiters["status"].limit == Limit(40, 10)
    assert controller.slots.capacity == 4
    fast = TrafficController.from_settings(FashnSettings(_env_file=None), time_scale=10)
    assert fast.limiters["run"].limit == Limit(50, 6) and fast.latency.latency_scale == 10
    scaled = TrafficController.from_settings(FashnSettings(_env_file=None, latency_scale=4))
    assert scaled.latency.prior(("tryon-v1.6", "balanced")) == pytest.approx(2.0)
    assert scaled.limiters["status"].limit == Limit(50, 10)
    with pytest.raises(ValueError):
        asyncio.run(controller.acquire("upload"))


async def test_slot_is_freed_the_moment_the_prediction_ends():
    clock = FakeClock()
    controller = TrafficController(max_in_flight=1, clock=clock)
    server = FakeServer(clock, controller)
    slot = await controller.acquire_slot()
    await controller.acquire("run")
    server.submit("a", 4.3)
    first = controller.scheduler.first_poll_delay(("m", "performance"))
    assert first == pytest.approx(5 - 2 * 1), "a budget this ample polls two deviations early"
    done = asyncio.ensure_future(controller.wait("a", model_name="m", mode="performance", poll=server.poll,
                                                 slot=slot))
    next_slot = await clock.run(controller.acquire_slot())
    noticed = server.polls["a"][-1]
    assert server.polls["a"][0] == pytest.approx(first) and server.polls["a"][-2] < 4.3, "noticed at the first poll after"
    assert next_slot.acquired_at == noticed and slot.released_at == noticed
    assert noticed - 4.3 <= controller.scheduler.interval(("m", "performance"), 4.0) + 1e-9
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
    assert "OutOfCredits" in controller.submissions_stopped
    await controller.acquire("status")                              # status still admitted

    answer = await clock.run(in_flight)                             # in-flight work finishes
    assert answer.status == "completed" and slot.released
    stats = controller.stats()
    assert stats.submissions_stopped and stats.rejected == {"run:OutOfCredits": 1}
    assert stats.completions == 1 and stats.polls_per_completion >= 1

    controller.resume_submissions()
    assert controller.submissions_stopped is None
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
    paused = controller.limiters["status"].paused_until - clock.now()
    assert paused == pytest.approx(10 / 50)
    assert controller.stats().rejected == {"run:RateLimitExceeded": 1, "status:RateLimitExceeded": 1}


async def test_concurrency_limit_exceeded_waits_for_a_release_or_the_backoff():
    clock = FakeClock()
    controller = TrafficController(max_in_flight=2, clock=clock)
    a = await controller.acquire_slot()
    b = await controller.acquire_slot()
    controller.on_429("run", "ConcurrencyLimitExceeded", None)
    assert controller.slots.busy == 3 and controller.slots.phantoms == 1   # the unknown occupant
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
    assert controller.slots.busy == 1 and controller.slots.phantoms == 0
    controller.release_slot(b)
    assert controller.stats().rejected == {"run:ConcurrencyLimitExceeded": 2}


async def test_ambiguous_submission_keeps_a_phantom_slot():
    clock = FakeClock()
    controller = TrafficController(max_in_flight=1, clock=clock)
    async with controller.slot() as slot:
        controller.hold_phantom(profile=("m", "performance"), slot=slot)   # e.g. a 502 after sending
    assert not slot.released
    expected = controller.latency.expected_duration(("m", "performance"))
    late = await clock.run(controller.acquire_slot())
    assert late.acquired_at == pytest.approx(expected) == pytest.approx(5 + 4 * 1.0)

    # The step code's form: a phantom of its own for (model_name, mode), beside the caller's slot.
    start = clock.now()
    phantom = controller.hold_phantom("tryon-v1.6", "quality")
    assert controller.slots.busy == 2 > controller.slots.capacity
    controller.release_slot(late)
    after = await clock.run(controller.acquire_slot())
    assert after.acquired_at - start == pytest.approx(14 + 4 * 2.8) and phantom.released


async def test_an_ample_status_budget_buys_earlier_and_closer_polls_a_scarce_one_is_saved():
    profile = ("tryon-v1.6", "balanced")

    def first_poll(status_limit: Limit) -> float:
        return TrafficController(status_limit=status_limit, clock=FakeClock()).scheduler.first_poll_delay(profile)

    est = LatencyModel().estimate(profile)
    assert first_poll(Limit(50, 10)) == pytest.approx(est.mean - 2 * est.dev)  # ~40 polls per mean latency
    assert est.mean - 2 * est.dev < first_poll(Limit(3, 10)) < est.mean         # ~2.4
    assert first_poll(Limit(1, 20)) == pytest.approx(est.mean + est.dev)        # <1: when it is likely done

    async def repoll_gaps(status_limit: Limit) -> tuple[list[float], float]:
        clock = FakeClock()
        controller = TrafficController(status_limit=status_limit, clock=clock)
        server = FakeServer(clock, controller)
        cap = controller.scheduler.interval(profile, 7.0)  # before it learns from this prediction
        server.submit("slow", 12.0)  # overdue from 8 + 2 × 1.6 s: gaps grow after that
        await clock.run(controller.wait("slow", profile=profile, poll=server.poll))
        times = [t for t in server.polls["slow"] if t < 11.2]
        return [b - a for a, b in pairwise(times)], cap

    gaps, cap = await repoll_gaps(Limit(50, 10))
    assert gaps and max(gaps) < cap / 2, (gaps, cap)   # one prediction alone: polled often
    assert min(gaps) >= TrafficController().scheduler.min_interval - EPS
    gaps, cap = await repoll_gaps(Limit(4, 10))
    assert gaps and min(gaps) > cap, (gaps, cap)  # scarce: spread out rather than queued at the limiter
