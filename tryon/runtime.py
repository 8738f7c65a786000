"""What a run of items works with: one traffic controller per API key per process, the client
and the archive (:class:`Runtime`)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tryon.archive import Archive
from tryon.client import FashnClient
from tryon.settings import FashnSettings
from tryon.traffic import TrafficController


class Runtime:
    """What one run needs to take items through their life on one key into one archive."""

    def __init__(self, client: FashnClient, traffic: TrafficController, archive: Archive, *,
                 max_resubmits: int = 2, resubmit_ambiguous: bool = True, prediction_timeout: float = 600.0,
                 workers: int | None = None) -> None:
        self.client = client
        self.traffic = traffic
        self.archive = archive
        self.max_resubmits = max_resubmits
        self.resubmit_ambiguous = resubmit_ambiguous
        self.prediction_timeout = prediction_timeout
        # Enough items in progress to keep every slot busy while others download or archive.
        self.workers = workers or 2 * traffic.limits.in_flight + 2

    def __repr__(self) -> str:
        return f"Runtime(archive={self.archive.url!r})"


_controllers: dict[tuple[int, str, str], TrafficController] = {}
_frozen = False


def freeze_startup_objects() -> None:
    """Exempt what is already allocated (Prefect, its imports: ~140 000 objects) from the cyclic
    garbage collector, once per process.

    A full collection over them stops the event loop for a tenth of a second or more, holding back
    calls the limiter has already admitted; frozen, they are never scanned again. Objects alive now
    that later become cyclic garbage are never collected: a bounded cost, paid once.
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
        controller = _controllers[key] = TrafficController.from_settings(settings)
    return controller


@asynccontextmanager
async def open_runtime(settings: FashnSettings, archive: Archive) -> AsyncIterator[Runtime]:
    freeze_startup_objects()
    traffic = controller_for(settings)
    async with FashnClient.from_settings(settings, gate=traffic) as client:
        yield Runtime(client, traffic, archive, max_resubmits=settings.max_resubmits,
                      resubmit_ambiguous=settings.resubmit_ambiguous,
                      prediction_timeout=settings.prediction_timeout)
