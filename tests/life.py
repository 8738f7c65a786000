"""The item's life without Prefect and without sockets: the project's emulator served in this
process to the client through httpx's ASGI transport, a runtime over it, and a collection taken
through ``tryon.batch`` (plan, then run_items) as the flow takes it.

``runtime_over`` and ``run_spec`` also take the emulator on loopback (``EmulatorServer``), and
``python -m tests.life URL TIME_SCALE SPEC ARCHIVE`` runs one collection in a process of its own
(to be killed).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from tests.fixtures.emulator import TEST_KEY
from tryon import batch
from tryon.archive import Archive
from tryon.client import FashnClient
from tryon.emulator import EmulatorConfig, create_app
from tryon.emulator.service import DroppedOnPurpose
from tryon.process import joined
from tryon.report import RunReport
from tryon.runtime import Runtime
from tryon.settings import DEFAULT_CREDITS_LIMIT, DEFAULT_RUN_LIMIT, DEFAULT_STATUS_LIMIT, FashnSettings
from tryon.traffic import TrafficController

#: A performance prediction (5 API s) takes 25 ms: a whole life, resubmissions included, well under a second.
TIME_SCALE = 200.0


class _Wire(httpx.AsyncBaseTransport):
    """What a socket shows the client: a connection the emulator drops on purpose is a protocol
    error after the request was sent (an ASGI app can only raise)."""

    def __init__(self, app: Any) -> None:
        self.asgi = httpx.ASGITransport(app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.asgi.handle_async_request(request)
        except DroppedOnPurpose as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc


class LocalEmulator:
    """The emulator app in this process, read through its own admin endpoints."""

    url = "http://emulator.local"

    def __init__(self, **config: Any) -> None:
        config.setdefault("time_scale", TIME_SCALE)
        config.setdefault("keys", {TEST_KEY: 1_000_000})
        self.config = EmulatorConfig.model_validate(config)
        self.app = create_app(self.config)
        self.transport = _Wire(self.app)
        self._admin = httpx.AsyncClient(transport=self.transport, base_url=self.url)

    async def _get(self, path: str) -> Any:
        response = await self._admin.get(path)
        response.raise_for_status()
        return response.json()

    async def stats(self) -> dict:
        return await self._get("/_admin/stats")

    async def predictions(self) -> list[dict]:
        """Every prediction created, oldest first (see ``State.record``)."""
        return await self._get("/_admin/predictions")

    async def configure(self, **patch: Any) -> None:
        (await self._admin.post("/_admin/config", json=patch)).raise_for_status()

    async def reset(self) -> None:
        """Forget every prediction and counter (a provider that no longer knows the ids)."""
        (await self._admin.post("/_admin/reset")).raise_for_status()

    async def aclose(self) -> None:
        await self._admin.aclose()


@asynccontextmanager
async def local_emulator(**config: Any) -> AsyncIterator[LocalEmulator]:
    emulator = LocalEmulator(**config)
    async with emulator.app.router.lifespan_context(emulator.app):
        try:
            yield emulator
        finally:
            await emulator.aclose()


@asynccontextmanager
async def runtime_over(emulator: Any, archive: Archive, *, api_key: str = TEST_KEY, max_in_flight: int = 6,
                       **options: Any) -> AsyncIterator[Runtime]:
    """A runtime on ``emulator`` (in process, or on loopback) with the documented limits scaled to
    its time scale."""
    scale = emulator.config.time_scale
    settings = FashnSettings(api_key=api_key, base_url=emulator.url, max_in_flight=max_in_flight,
                             run_limit=DEFAULT_RUN_LIMIT.scaled(scale), status_limit=DEFAULT_STATUS_LIMIT.scaled(scale),
                             credits_limit=DEFAULT_CREDITS_LIMIT.scaled(scale))
    traffic = TrafficController.from_settings(settings)
    transport = getattr(emulator, "transport", None)
    try:
        async with joined() as process, \
                FashnClient.from_settings(settings, gate=traffic, transport=transport) as client:
            yield Runtime(client, traffic, archive, process=process, **options)
    finally:
        await traffic.aclose()


async def run_spec(emulator: Any, spec: Path, archive: Archive, *, model_name: str | None = None,
                   overrides: dict[str, Any] | None = None, **options: Any) -> tuple[batch.Plan, RunReport]:
    """Plan ``spec`` (its model and inputs overridden as a run may) from the archive and run every
    item to its end, as one run of the flow would; ``options`` go to the :class:`Runtime`."""
    collection = await batch.load_and_validate(str(spec), model_name, overrides)
    planned = await batch.plan(collection, archive, max_resubmits=options.get("max_resubmits", 2))
    report = RunReport.start(collection.name, collection.model_name)
    async with runtime_over(emulator, archive, **options) as runtime:
        async for entry in batch.run_items(runtime, planned):
            report.add(entry)
    return planned, report


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds, checked every few milliseconds (an emulator counter, a
    file in the archive)."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.002)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    url, time_scale, spec, root = sys.argv[1:]
    loopback = SimpleNamespace(url=url, config=EmulatorConfig(time_scale=float(time_scale)))
    asyncio.run(run_spec(loopback, Path(spec), Archive(root)))
