"""What this process expects from webhooks, and how each delivery is judged.

Submissions are named ``(run, item, attempt)``: ``run`` is the random name of one run's
:class:`~tryon.webhooks.Webhooks` (two runs of a process, or of two processes sharing one receiver,
may submit the same item), ``item`` the item's label, unique in its run. An item registers each
submission before sending it (:meth:`WebhookInbox.expect`), binds the prediction id when the answer
names it (:meth:`~WebhookInbox.bind`), and forgets the item when it ends. A delivery is *accepted*
only for a submission registered here, and only once, so the provider's retries, duplicates and
deliveries out of order change nothing; one naming another prediction than the bound one is
*unexpected*. An accepted delivery is passed to the submission's listener (the scheduler's
confirmation poll) and wakes :meth:`~WebhookInbox.wait` (an ambiguous answer's recovery). Memory:
one entry per active submission.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Literal

from tryon.webhooks.delivery import Delivery

# published: a standalone receiver handed it on (to Prefect events) without judging it.
Verdict = Literal["accepted", "duplicate", "unexpected", "published"]
Listener = Callable[[Delivery], None]


class _Expected:
    __slots__ = ("prediction_id", "delivery", "arrived", "listener")

    def __init__(self, listener: Listener | None) -> None:
        self.prediction_id: str | None = None
        self.delivery: Delivery | None = None
        self.arrived = asyncio.Event()
        self.listener = listener


Where = tuple[str, str, int]  # (run, item, attempt)


class WebhookInbox:
    """The webhooks the runs of one process wait for."""

    def __init__(self) -> None:
        self._expected: dict[Where, _Expected] = {}
        self.verdicts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._expected)

    def expect(self, run: str, item: str, attempt: int, listener: Listener | None = None) -> None:
        """Submission ``attempt`` of ``item`` is about to be sent (its webhook may beat the answer)."""
        self._expected[(run, item, attempt)] = _Expected(listener)

    def bind(self, run: str, item: str, attempt: int, prediction_id: str) -> Delivery | None:
        """The answer named the prediction: only deliveries naming it count from now. Returns the
        delivery already in for it, if one came first."""
        expected = self._expected.get((run, item, attempt))
        if expected is None:
            return None
        expected.prediction_id = prediction_id
        if expected.delivery is not None and expected.delivery.prediction_id != prediction_id:
            expected.delivery = None  # it named another prediction: not ours after all
            expected.arrived.clear()
            self.verdicts["unexpected"] += 1
        return expected.delivery

    def delivered(self, run: str, item: str, attempt: int) -> Delivery | None:
        expected = self._expected.get((run, item, attempt))
        return expected.delivery if expected is not None else None

    def forget(self, run: str, item: str) -> None:
        """The item ended: its submissions' deliveries are unexpected from now on."""
        for where in [w for w in self._expected if w[:2] == (run, item)]:
            del self._expected[where]

    def deliver(self, delivery: Delivery) -> Verdict:
        verdict = self._judge(delivery)
        self.verdicts[verdict] += 1
        return verdict

    def _judge(self, delivery: Delivery) -> Verdict:
        expected = self._expected.get((delivery.run, delivery.item, delivery.attempt))
        if expected is None or expected.prediction_id not in (None, delivery.prediction_id):
            return "unexpected"
        if expected.delivery is not None:
            return "duplicate" if expected.delivery.prediction_id == delivery.prediction_id else "unexpected"
        expected.delivery = delivery
        expected.arrived.set()
        if expected.listener is not None:
            expected.listener(delivery)
        return "accepted"

    async def wait(self, run: str, item: str, attempt: int, timeout: float) -> Delivery | None:
        """The delivery for that submission, waiting up to ``timeout`` seconds (None if none came)."""
        expected = self._expected.get((run, item, attempt))
        if expected is None:
            return None
        try:
            await asyncio.wait_for(expected.arrived.wait(), timeout)
        except TimeoutError:
            return None
        return expected.delivery
