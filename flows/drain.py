"""How a flow run hears it should drain (:mod:`tryon.drain`), from each way Prefect 3.8 and a
terminal deliver a cancel:

- a process worker or ``flow.serve`` (a runner) cancels a flow run by sending SIGTERM to its
  process group, then SIGKILL after 30 s. Prefect's own SIGTERM handler would end the run at once
  (Cancelled, in-flight predictions left pending); while runs work, this module takes SIGTERM
  instead: the first starts the drain (or joins it: the watcher below often sees the Cancelling
  state first), a second goes to Prefect's handler;
- a flow run started in-process (``tryon run``: no runner) gets no signal when cancelled through
  the API or UI: a watcher reads the run's own state every :data:`WATCH_EVERY` seconds and drains
  on Cancelling (or Cancelled);
- Ctrl-C (SIGINT) starts the drain; a second Ctrl-C goes to the handler that was there before
  (asyncio's: the run stops at once, its pending records kept for the reconciler).

One drain per key's controller of the process, shared by its runs (a backfill's subflows): a cancel
ends the whole process, so every run in it drains. Signals are taken from the moment a run opens
(:func:`drain_on_signals`; for ``tryon run``, before Prefect is imported), the state is watched
from the flow run's start (:func:`watching_own_state`). Signal handlers can only be set from the
main thread: elsewhere the watcher alone drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

from tryon.drain import Drain
from tryon.process import Process
from tryon.traffic import TrafficController

logger = logging.getLogger(__name__)

WATCH_EVERY = 1.0  # seconds between reads of the run's own state
SIGNALS = {signal.SIGTERM: "the flow run was cancelled (SIGTERM)", signal.SIGINT: "interrupted (Ctrl-C)"}


class _Signals:
    """SIGTERM and SIGINT routed to every open drain of the process while there is one; the
    handlers that were there before are put back when the last closes."""

    def __init__(self) -> None:
        self.drains: set[Drain] = set()
        self.previous: dict[int, Any] = {}
        self.received: set[int] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, drain: Drain) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if not self.drains:
            self.loop, self.received = asyncio.get_running_loop(), set()
            self.previous = {signum: signal.signal(signum, self.on_signal) for signum in SIGNALS}
        self.drains.add(drain)

    def discard(self, drain: Drain) -> None:
        self.drains.discard(drain)
        if not self.drains:
            self.restore()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            if signal.getsignal(signum) == self.on_signal:
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def on_signal(self, signum: int, frame: Any) -> None:
        if signum not in self.received and self.loop is not None:  # the first: drain (maybe joining the watcher)
            self.received.add(signum)
            for drain in list(self.drains):
                self.loop.call_soon_threadsafe(drain.request, SIGNALS[signal.Signals(signum)])
            return
        handler = self.previous.get(signum, signal.SIG_DFL)
        self.restore()  # the same signal twice: what was there before (Prefect's, asyncio's) takes over
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:
            os.kill(os.getpid(), signum)


_signals = _Signals()


@asynccontextmanager
async def _shared_drain(traffic: TrafficController) -> AsyncIterator[Drain]:
    drain = Drain(traffic)
    _signals.add(drain)
    try:
        yield drain
    finally:
        _signals.discard(drain)
        drain.release()


async def _watch(drain: Drain) -> None:
    """Drain on the run's own Cancelling (or Cancelled) state; say so in the run's log, whoever
    asked."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    run_logger = get_run_logger()
    context = FlowRunContext.get()
    run_id = context.flow_run.id if context is not None and context.flow_run is not None else None
    async with get_client() as client:
        while not drain.requested:
            with suppress(TimeoutError):
                await asyncio.wait_for(drain.heard.wait(), WATCH_EVERY)
            if drain.requested or run_id is None:
                continue
            try:
                state = (await client.read_flow_run(run_id)).state
            except Exception as exc:  # the API may be briefly unreachable: read again
                logger.debug("could not read the flow run's state: %s", exc)
                continue
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                drain.request("the flow run was cancelled")
    run_logger.warning("draining (%s): nothing more is submitted; what is in flight is archived, then the run ends "
                       "Cancelled. Ask again to stop at once (the reconciler finishes the rest).", drain.reason)


def drain_on_signals(process: Process, traffic: TrafficController) -> AbstractAsyncContextManager[Drain]:
    """The drain of the process's runs on ``traffic``, requested by a signal while the block runs."""
    return process.hold(("drain", traffic), lambda: _shared_drain(traffic))


@asynccontextmanager
async def watching_own_state(drain: Drain) -> AsyncIterator[None]:
    """``drain`` also requested by this flow run's own Cancelling state while the block runs."""
    watcher = asyncio.create_task(_watch(drain), name="drain watcher")
    try:
        yield
    finally:
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher


def cancelled_state(drain: Drain, summary: str) -> Any:
    """The state a drained run ends in."""
    from prefect.states import Cancelled

    return Cancelled(message=f"{drain.reason}; {summary}")
