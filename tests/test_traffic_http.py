"""Each 429 code through the traffic controller, over real HTTP against the emulator.

The controller is told the documented limits while the emulator enforces lower ones (the
provider lowered them, or another client uses the key): it must slow down or wait, finish
every prediction, and draw a bounded number of 429s, never a storm.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.fixtures.emulator import TEST_KEY, TIME_SCALE
from tryon.client import FashnClient
from tryon.errors import OutOfCredits
from tryon.settings import Limit
from tryon.traffic import SlidingWindowLimiter, TrafficController


def inputs(emulator, seed: int) -> dict:
    return {"model_image": f"{emulator.url}/_assets/model.jpg", "garment_image": f"{emulator.url}/_assets/g{seed}.png",
            "mode": "performance"}


def documented_limits() -> TrafficController:
    return TrafficController(Limit(50, 60 / TIME_SCALE), Limit(50, 10 / TIME_SCALE), Limit(30, 10 / TIME_SCALE), 6)


async def try_on(client: FashnClient, traffic: TrafficController, emulator, seed: int) -> str:
    slot = await traffic.acquire_slot()
    try:
        prediction_id = await client.run("tryon-v1.6", inputs(emulator, seed))
    except BaseException:
        traffic.release_slot(slot)
        raise
    answer = await traffic.wait(prediction_id, poll=client.status, model_name="tryon-v1.6", mode="performance",
                                slot=slot, timeout=60)  # frees the slot
    return answer.status


@pytest.mark.parametrize("retry_after", [False, True])
async def test_rate_limit_exceeded_slows_down_and_every_prediction_still_runs(make_emulator, retry_after):
    emulator = make_emulator(run_limit="10/60", retry_after=retry_after)  # 10 per 3 s here; we believe 50
    traffic = documented_limits()
    async with FashnClient(TEST_KEY, emulator.url, gate=traffic) as client:
        statuses = await asyncio.gather(*(try_on(client, traffic, emulator, i) for i in range(30)))
    assert statuses == ["completed"] * 30
    stats = emulator.stats()
    rejected = stats["requests"]["run"].get("429:RateLimitExceeded", 0)
    assert 0 < rejected <= 12, f"backed off after the first 429s, no storm ({rejected})"
    assert stats["requests"]["run"]["200"] == 30


async def test_concurrency_limit_exceeded_waits_for_a_slot(make_emulator):
    emulator = make_emulator(max_in_flight=2)  # someone else holds 4 of the 6
    traffic = documented_limits()
    async with FashnClient(TEST_KEY, emulator.url, gate=traffic) as client:
        statuses = await asyncio.gather(*(try_on(client, traffic, emulator, i) for i in range(12)))
    assert statuses == ["completed"] * 12
    stats = emulator.stats()
    rejected = stats["requests"]["run"].get("429:ConcurrencyLimitExceeded", 0)
    assert 0 < rejected <= 24, f"held back until a slot came free ({rejected} rejections for 12 predictions)"
    assert stats["most_in_flight"] == 2 and stats["requests"]["run"]["200"] == 12


async def test_out_of_credits_stops_submitting_and_finishes_what_is_in_flight(make_emulator):
    emulator = make_emulator(keys={TEST_KEY: 3})
    traffic = documented_limits()
    async with FashnClient(TEST_KEY, emulator.url, gate=traffic) as client:
        results = await asyncio.gather(*(try_on(client, traffic, emulator, i) for i in range(8)),
                                       return_exceptions=True)
    assert sorted(r for r in results if isinstance(r, str)) == ["completed"] * 3, "in flight ones finished"
    assert sum(isinstance(r, OutOfCredits) for r in results) == 5
    with pytest.raises(OutOfCredits):
        await traffic.acquire("run")  # submissions stay stopped
    stats = emulator.stats()
    runs = stats["requests"]["run"]
    # The 3 other slots' requests may already be on the wire when the first 429 comes back;
    # after it nothing more is sent (8 items, 6 slots).
    assert runs["200"] == 3 and 1 <= runs["429:OutOfCredits"] <= 3, runs
    assert stats["credits_charged"] == 3


class StallingTransport(httpx.AsyncBaseTransport):
    """Holds the 2nd to 5th requests back before sending them: a busy event loop between a
    request's admission and its send, or a slow network."""

    def __init__(self, stall: float) -> None:
        self.inner, self.stall, self.sent = httpx.AsyncHTTPTransport(), stall, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if 2 <= self.sent <= 5:
            await asyncio.sleep(self.stall)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("answers", [True, False])
async def test_requests_sent_late_after_their_admission_draw_no_429_when_counted_from_their_answers(
        make_emulator, answers):
    # Five credits calls per window, the emulator's limit and ours. Four of the first five reach
    # the emulator half a window late: counted from their admissions, the next calls go as soon
    # as the first five are a window old and land in one window with the late four (the control:
    # 429s); counted from their answers, they wait until the late ones are a window old.
    window = 10 / TIME_SCALE
    emulator = make_emulator(credits_limit="5/10")
    traffic = TrafficController(credits_limit=Limit(5, window))
    if not answers:  # the same limiter counting from admissions, its margin as small
        limiter = traffic.limiters["credits"]
        traffic.limiters["credits"] = SlidingWindowLimiter(limiter.limit, traffic.clock, margin=limiter.margin)
    transport = StallingTransport(stall=window / 2)
    async with FashnClient(TEST_KEY, emulator.url, gate=traffic, transport=transport) as client:
        await asyncio.gather(*(client.credits() for _ in range(10)))
    rejected = emulator.stats()["requests"]["credits"].get("429:RateLimitExceeded", 0)
    assert (rejected == 0) is answers, rejected
