"""One traffic controller per API key per process, and the runtime a flow run works with."""

from __future__ import annotations

import asyncio
import gc
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tryon.archive import Archive
from tryon.client import FashnClient
from tryon.settings import FashnSettings
from tryon.steps import Runtime
from tryon.traffic import TrafficController

_controllers: dict[tuple[int, str, str], TrafficController] = {}
_frozen = False


def freeze_startup_objects() -> None:
    """Exempt what is already allocated (Prefect, its imports: ~140 000 objects) from the cyclic
    garbage collector, once per process.

    Its full collections stopped a flow process's event loop for up to 133 ms (300 items, 6 in
    flight) and 167 ms (900 items, 30 in flight); after this, for at most 29 and 85 ms. A stall
    holds back a status call the limiter has already admitted, and one longer than the limiter's
    margin can put N + 1 calls in one of the provider's windows. Objects alive now that later
    become cyclic garbage are never collected: a bounded cost, paid once.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def key_fingerprint(settings: FashnSettings) -> str:
    """A short, non-reversible name for the key (safe for logs and limit names)."""
    return hashlib.sha256(settings.require_api_key().get_secret_value().encode()).hexdigest()[:12]


def controller_for(settings: FashnSettings) -> TrafficController:
    """The controller every task of this process shares for this key (one per event loop,
    since its locks and timers belong to a loop)."""
    loop = id(asyncio.get_running_loop())
    key = (loop, settings.base_url, key_fingerprint(settings))
    controller = _controllers.get(key)
    if controller is None:
        controller = _controllers[key] = TrafficController.from_settings(settings, latency_scale=settings.latency_scale)
    return controller


@asynccontextmanager
async def open_runtime(settings: FashnSettings, archive: Archive) -> AsyncIterator[Runtime]:
    freeze_startup_objects()
    traffic = controller_for(settings)
    async with FashnClient.from_settings(settings, gate=traffic) as client:
        yield Runtime(client, traffic, archive, max_resubmits=settings.max_resubmits,
                      resubmit_ambiguous=settings.resubmit_ambiguous,
                      prediction_timeout=settings.prediction_timeout)
