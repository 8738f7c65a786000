"""Webhooks through Prefect: one standalone receiver publishes each delivery as a Prefect event,
and every flow process, on any worker, feeds the events into its own inbox.

For deployments: the provider reaches one public address (``tryon webhooks serve``), while flow
runs happen on workers anywhere (``TRYON_WEBHOOK_URL`` set, ``TRYON_WEBHOOK_LISTEN`` not). The
event carries the :class:`~tryon.webhooks.Delivery` (run, item label, attempt, prediction id, status),
never the secret or a token. A flow process believes an event no more than a webhook: its inbox
takes only what it expects, and the prediction is confirmed by a status call before anything is
archived (anyone who may write events to the Prefect server could send one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from pydantic import SecretStr

from tryon.runtime import Runtime
from tryon.webhooks import Delivery, Verdict, WebhookInbox, create_receiver, serve

logger = logging.getLogger(__name__)

EVENT = "tryon.webhook.delivered"


async def serve_receiver(host: str, port: int, secret: SecretStr, *,
                         ready: asyncio.Future[tuple[str, int]] | None = None) -> None:
    """Receive the provider's webhooks on ``host:port`` until cancelled; each delivery becomes one
    ``tryon.webhook.delivered`` event before it is answered 2xx, so a delivery the Prefect server
    did not take is answered 5xx and the provider sends it again."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    # checkpoint_every=1: emit returns once the server has acknowledged the event.
    async with get_events_client(checkpoint_every=1) as events:
        lock = asyncio.Lock()  # one websocket: one event on the wire at a time

        async def publish(delivery: Delivery) -> Verdict:
            event = Event(event=EVENT, payload=delivery.as_dict(),
                          resource={"prefect.resource.id": f"tryon.item.{delivery.item}",
                                    "prefect.resource.name": delivery.prediction_id})
            async with lock:
                await events.emit(event)
            return "published"

        async with serve(create_receiver(secret, publish), host, port) as bound:
            logger.warning("webhook receiver listening on http://%s:%s", *bound)
            if ready is not None and not ready.done():
                ready.set_result(bound)
            await asyncio.Event().wait()


def webhook_events(runtime: Runtime) -> AbstractAsyncContextManager[None]:
    """Deliveries reach the run's inbox as Prefect events when its receiver is standalone (a
    receiver in this process hands them over itself): one subscription for every run of the
    process (:meth:`tryon.process.Process.hold`)."""
    if runtime.webhooks is None or runtime.webhooks.local:
        return nullcontext()
    inbox = runtime.process.inbox
    return runtime.process.hold(EVENT, lambda: deliveries_from_events(inbox))


@asynccontextmanager
async def deliveries_from_events(inbox: WebhookInbox) -> AsyncIterator[None]:
    """While inside, ``tryon.webhook.delivered`` events reach ``inbox``, connected before this
    returns, so no delivery of a prediction submitted inside is missed (the subscription also
    replays the last minute)."""
    task = asyncio.get_running_loop().create_task(_pump(inbox, connected := asyncio.Event()))
    waiting = asyncio.ensure_future(connected.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()  # the subscription failed: say why, before anything is submitted
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _pump(inbox: WebhookInbox, connected: asyncio.Event) -> None:
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    subscriber = get_events_subscriber(EventFilter(event=EventNameFilter(name=[EVENT])),
                                       reconnect_on_clean_close=True)
    async with subscriber:
        connected.set()
        async for event in subscriber:
            try:
                delivery = Delivery.from_dict(event.payload)
            except ValueError:
                logger.warning("ignored a malformed %s event (%s)", EVENT, event.id)
                continue
            inbox.deliver(delivery)
