"""What the runs of one process share (:class:`Process`): one traffic controller per API key, the
webhook inbox, the resources opened once for all of them (an in-process receiver per address), and
the keys an item is paying for.

Its lifetime is its event loop's: :func:`joined` gives every run on a loop the same one, made by
the first run to start and dropped with the loop. Runs one after another on a loop (a backfill's
subflows, a test session's flows) therefore share one controller per key, which knows every
request the earlier runs sent in the key's current windows.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from tryon.archive import IndexEntry
from tryon.settings import FashnSettings
from tryon.traffic import TrafficController
from tryon.webhooks import WebhookInbox

T = TypeVar("T")


class _Held:
    def __init__(self, value: Any, stack: AsyncExitStack) -> None:
        self.value, self.stack = value, stack
        self.users = 0


class Process:
    """The state every run on one event loop shares (a controller's locks and timers, a server's
    socket, a future belong to a loop)."""

    def __init__(self) -> None:
        self.runs = 0  # the runs inside :func:`joined` now
        self.controllers: dict[tuple[str, str], TrafficController] = {}  # by (base URL, key fingerprint)
        self.inbox = WebhookInbox()  # where every delivery to this process goes
        #: Keys an item is paying for, by (archive URL, key): the future ends with the index entry of
        #: the outputs it archived, or None. Runs in other processes are not seen: two of them
        #: needing the same new key at once may each pay for it once.
        self.paying: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._held: dict[Hashable, _Held] = {}
        self._opening = asyncio.Lock()

    def controller(self, settings: FashnSettings) -> TrafficController:
        """The controller every run of this process shares for this key."""
        key = (settings.base_url, settings.key_fingerprint())
        controller = self.controllers.get(key)
        if controller is None:
            controller = self.controllers[key] = TrafficController.from_settings(settings)
        return controller

    async def pay_or_wait(self, where: tuple[str, str]) -> tuple[asyncio.Future[Any] | None, IndexEntry | None]:
        """Take ``where`` (an archive URL and an item key) to pay for it: the future to end with
        :meth:`paid`; or wait for the item paying for it and return the index entry it archived.
        When that one ends without outputs, take it."""
        while (other := self.paying.get(where)) is not None:
            entry = await asyncio.shield(other)
            if entry is not None:
                return None, entry
        mine = self.paying[where] = asyncio.get_running_loop().create_future()
        return mine, None

    def paid(self, where: tuple[str, str], mine: asyncio.Future[Any], entry: IndexEntry | None) -> None:
        """The item that took ``where`` ended: ``entry``, the index entry of what it archived, or None."""
        if self.paying.get(where) is mine:
            del self.paying[where]
        if not mine.done():
            mine.set_result(entry)

    @asynccontextmanager
    async def hold(self, name: Hashable, open_: Callable[[], AbstractAsyncContextManager[T]]) -> AsyncIterator[T]:
        """What ``open_`` opens, shared by every holder of ``name``: opened by the first, closed
        when the last leaves."""
        async with self._opening:
            held = self._held.get(name)
            if held is None:
                stack = AsyncExitStack()
                held = _Held(await stack.enter_async_context(open_()), stack)
                self._held[name] = held
            held.users += 1
        try:
            yield held.value
        finally:
            held.users -= 1
            if held.users == 0:
                async with self._opening:
                    del self._held[name]
                    await held.stack.aclose()

    def __repr__(self) -> str:
        return f"Process(runs={self.runs}, keys={len(self.controllers)})"


_running: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Process] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def joined() -> AsyncIterator[Process]:
    """This event loop's :class:`Process`: made by the first run to start (after
    :func:`freeze_startup_objects`), kept while the loop lives."""
    loop = asyncio.get_running_loop()
    process = _running.get(loop)
    if process is None:
        freeze_startup_objects()
        process = _running[loop] = Process()
    process.runs += 1
    try:
        yield process
    finally:
        process.runs -= 1


def freeze_startup_objects() -> None:
    """Exempt what is already allocated (Prefect, its imports: ~140 000 objects) from the cyclic
    garbage collector, once per process (the interpreter's freeze count says whether it was).

    A full collection over them stops the event loop for a tenth of a second or more, holding back
    calls the limiter has already admitted; frozen, they are never scanned again. Objects alive now
    that later become cyclic garbage are never collected: a bounded cost, paid once.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
