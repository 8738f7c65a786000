"""A run asked to stop (a cancel, Ctrl-C) drains: it submits nothing more, at once, and goes on
polling, archiving and reporting what it has in flight, so nothing already paid for is left
behind. Items it never submitted end ``cancelled`` in the report, with nothing written to the
archive: a later run of the same spec picks them up.

The trigger comes from above (``flows.drain``: signals, the flow run's own state); this module is
what the run honours. A drain stops submissions on the key's controller of this process
(:class:`~tryon.process.Process`), so every run of the process drains with it: a cancel ends the
whole process. The stop is checked right after each submission's rate admission, with no wait
between the check and the request, so nothing is sent once the drain is requested.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tryon.errors import ApiError
from tryon.report import ItemReport
from tryon.traffic import TrafficController

if TYPE_CHECKING:
    from tryon.item import ItemState


class RunCancelled(ApiError):
    """The run is draining: this submission was not sent, and nothing was paid for it."""

    code = "RunCancelled"

    def __str__(self) -> str:
        return self.message or "the run was cancelled"


class Drain:
    """Whether the run was asked to stop, and why."""

    def __init__(self, traffic: TrafficController) -> None:
        self.traffic = traffic
        self.reason: str | None = None
        self.heard = asyncio.Event()  # set by the request

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> bool:
        """Stop submitting now (items waiting for a slot or a run token get :class:`RunCancelled`);
        polling and archiving go on. True the first time, False when already draining."""
        if self.reason is not None:
            return False
        self.reason = reason
        self.traffic.stop_submissions(self._stop_reason, RunCancelled)
        self.heard.set()
        return True

    @property
    def _stop_reason(self) -> str:
        return f"not submitted: {self.reason}"

    def release(self) -> None:
        """Allow submissions again on the controller (the drained run is over; the process may
        run others), unless something else stopped them first."""
        if self.requested and self.traffic.submissions_stopped == self._stop_reason:
            self.traffic.resume_submissions()

    def holds_back(self, state: ItemState) -> bool:
        """Whether an item is kept from (another) submission: active with no prediction to wait on."""
        return self.requested and state.active and state.submission is None

    def cancelled(self, state: ItemState) -> ItemReport:
        """The report entry of an item the drain kept from being submitted: nothing is written,
        and a later run goes on with it."""
        return ItemReport.cancelled(state.item, state.key, state.flags, attempts=state.attempt,
                                    why=self.reason or "the run was cancelled")
