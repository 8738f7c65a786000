"""The state the runs of one process share: one object per event loop, for every run on it."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from tryon.process import joined
from tryon.settings import FashnSettings


async def test_runs_on_one_loop_share_one_process_and_its_controllers():
    settings = FashnSettings(_env_file=None, api_key="fa-one-key")
    async with joined() as first:
        async with joined() as second:
            assert second is first and first.runs == 2
            controller = first.controller(settings)
            assert second.controller(settings) is controller
            assert first.controller(FashnSettings(_env_file=None, api_key="fa-other")) is not controller
        assert first.runs == 1 and first.controllers
    async with joined() as later:  # a later run knows what the earlier ones sent in the key's windows
        assert later is first and later.controller(settings) is controller


async def test_a_held_resource_is_opened_once_for_every_holder_and_closed_after_the_last():
    events: list[str] = []

    @asynccontextmanager
    async def resource():
        events.append("open")
        await asyncio.sleep(0)  # a second holder arriving while it opens waits for it
        yield len(events)
        events.append("close")

    async with joined() as process:
        async def holder(inside: asyncio.Event, leave: asyncio.Event) -> int:
            async with process.hold("it", resource) as value:
                inside.set()
                await leave.wait()
                return value

        inside, leave = [asyncio.Event(), asyncio.Event()], [asyncio.Event(), asyncio.Event()]
        holders = [asyncio.ensure_future(holder(i, e)) for i, e in zip(inside, leave, strict=True)]
        await asyncio.gather(*(i.wait() for i in inside))
        leave[0].set()
        assert await holders[0] == 1 and events == ["open"]
        leave[1].set()
        assert await holders[1] == 1 and events == ["open", "close"]
