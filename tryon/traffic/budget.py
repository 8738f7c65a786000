"""A spend limit that holds: the credits a run (or a backfill's runs together) may be charged.

The provider has no spending cap, and a prediction is charged when it completes, so the limit is
kept at submission: a prediction is sent only if what was charged so far, plus the worst case of
every prediction that may still be charged, plus its own worst case stays within the limit::

    charged + held + worst ≤ limit

A held reservation ends only when its prediction's end is known: settled with the credits it was
charged (``x-fashn-credits-used``; a failed prediction is charged nothing), or never, for the
phantom behind an ambiguous answer, which may have been created and charged without our knowing.
So the limit holds whatever the price, retries, resubmissions and ambiguous answers.

Before a run spends anything, its plan's worst case is checked against what the limit has left
(:meth:`Budget.shortfall`, :meth:`Budget.refusal`). A refused submission is not waited for: its
item is left for the budget (a later run with a larger limit takes it). One :class:`Budget` may be
shared by several runs of one event loop (a backfill's collections): pass the same object. Without
a limit it only keeps the ledger. Pure bookkeeping, no I/O: each call is atomic in the event loop.
"""

from __future__ import annotations

from tryon.errors import OverBudget
from tryon.models import Prediction


class Reservation:
    """The worst case of one submission, held against the budget until its prediction ends."""

    __slots__ = ("credits", "open")

    def __init__(self, credits: int) -> None:
        self.credits = credits
        self.open = True


class Budget:
    """The ledger of one spend limit, in credits."""

    __slots__ = ("limit", "charged", "held", "refused", "_by_prediction")

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"max_credits must be 0 or more, not {limit}")
        self.limit = limit
        self.charged = 0  # credits charged for predictions that ended
        self.held = 0  # worst cases of predictions that may still be charged (phantoms included)
        self.refused = 0  # submissions refused: the budget was reached
        self._by_prediction: dict[str, Reservation] = {}

    @property
    def reached(self) -> bool:
        return self.refused > 0

    @property
    def available(self) -> int | None:
        """Credits a new submission may still reserve (None: no limit)."""
        return None if self.limit is None else max(0, self.limit - self.charged - self.held)

    def shortfall(self, worst: int) -> int:
        """Credits ``worst`` is above what the limit has left (0: it fits)."""
        available = self.available
        return 0 if available is None else max(0, worst - available)

    def refusal(self, needed: int, what: str = "the plan") -> OverBudget:
        """The error refusing ``what``, whose worst case is ``needed`` credits, before anything is spent."""
        left = "" if self.available == self.limit else f" ({self.available} of it left)"
        return OverBudget(f"{what} needs up to {needed} credits, {self.shortfall(needed)} over the limit of "
                          f"{self.limit} credits{left}: nothing was submitted (raise max_credits, or run partial "
                          "to spend up to the limit)")

    def admit(self, worst: int) -> Reservation | None:
        """Reserve ``worst`` credits for a submission about to be sent, or None: it would not fit."""
        if self.shortfall(worst):
            self.refused += 1
            return None
        self.held += worst
        return Reservation(worst)

    def bind(self, reservation: Reservation, prediction_id: str) -> None:
        """The submission created ``prediction_id``: its end settles the reservation."""
        self._by_prediction[prediction_id] = reservation

    def release(self, reservation: Reservation) -> None:
        """The submission certainly created no prediction (it was refused, or never sent)."""
        self._close(reservation, 0)

    def settle(self, prediction: Prediction) -> None:
        """``prediction`` ended: its reservation becomes what it was charged. Unknown ids
        (predictions this budget did not admit, such as a resumed one) and repeats change nothing."""
        reservation = self._by_prediction.pop(prediction.id, None)
        if reservation is None:
            return
        charged = prediction.credits_used
        if charged is None:  # no header: a completed prediction counts at its worst case
            charged = reservation.credits if prediction.status == "completed" else 0
        self._close(reservation, charged)

    def _close(self, reservation: Reservation, charged: int) -> None:
        if reservation.open:
            reservation.open = False
            self.held -= reservation.credits
            self.charged += charged

    def line(self) -> str:
        limit = "no limit" if self.limit is None else f"limit {self.limit}"
        return f"{self.charged} credits charged, {self.held} held for predictions that may still be ({limit})"

    def __repr__(self) -> str:
        return f"Budget(limit={self.limit}, charged={self.charged}, held={self.held}, refused={self.refused})"
