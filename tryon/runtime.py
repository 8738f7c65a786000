"""What a run of items works with: one traffic controller per API key per process, the client,
the archive and, when configured, the webhook inbox (:class:`Runtime`)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from pydantic import SecretStr

from tryon.archive import Archive
from tryon.client import FashnClient
from tryon.settings import FashnSettings, WebhookSettings
from tryon.traffic import TrafficController
from tryon.webhooks import Delivery, WebhookInbox, callback_url, create_receiver, serve
from tryon.webhooks.inbox import Listener


class Webhooks:
    """Where this process's submissions ask the provider to push their end, and the inbox that
    takes what comes back."""

    def __init__(self, inbox: WebhookInbox, base_url: str, secret: SecretStr, *, local: bool) -> None:
        self.run = secrets.token_hex(8)  # names this run's submissions in their URLs
        self.inbox = inbox
        self.base_url = base_url
        self.secret = secret
        self.local = local  # the receiver runs in this process (else deliveries come as Prefect events)

    def url_for(self, item: str, attempt: int) -> str:
        """The callback URL of one submission (it carries a token: never log it)."""
        return callback_url(self.base_url, self.secret, self.run, item, attempt)

    # This run's side of the inbox (see WebhookInbox): submissions named (self.run, item, attempt).
    def expect(self, item: str, attempt: int, listener: Listener | None = None) -> None:
        self.inbox.expect(self.run, item, attempt, listener)

    def bind(self, item: str, attempt: int, prediction_id: str) -> Delivery | None:
        return self.inbox.bind(self.run, item, attempt, prediction_id)

    def delivered(self, item: str, attempt: int) -> Delivery | None:
        return self.inbox.delivered(self.run, item, attempt)

    async def wait(self, item: str, attempt: int, timeout: float) -> Delivery | None:
        return await self.inbox.wait(self.run, item, attempt, timeout)

    def forget(self, item: str) -> None:
        self.inbox.forget(self.run, item)

    def __repr__(self) -> str:
        return f"Webhooks(base_url={self.base_url!r}, local={self.local})"


class Runtime:
    """What one run needs to take items through their life on one key into one archive."""

    def __init__(self, client: FashnClient, traffic: TrafficController, archive: Archive, *,
                 max_resubmits: int = 2, resubmit_ambiguous: bool = True, prediction_timeout: float = 600.0,
                 workers: int | None = None, webhooks: Webhooks | None = None) -> None:
        self.client = client
        self.webhooks = webhooks
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


class _Receiver:
    """This event loop's in-process receiver and its inbox, shared by every run in the process."""

    def __init__(self, inbox: WebhookInbox, secret: SecretStr) -> None:
        self.inbox, self.secret = inbox, secret
        self.users = 0
        self.bound: tuple[str, int] | None = None
        self.stack = AsyncExitStack()


_inboxes: dict[int, WebhookInbox] = {}
_receivers: dict[tuple[int, tuple[str, int]], _Receiver] = {}


def inbox_for_loop() -> WebhookInbox:
    """The inbox of this event loop (deliveries from Prefect events go here)."""
    return _inboxes.setdefault(id(asyncio.get_running_loop()), WebhookInbox())


@asynccontextmanager
async def open_webhooks(config: WebhookSettings) -> AsyncIterator[Webhooks | None]:
    """The runtime's webhooks, or None when none are configured. With ``listen``, the receiver
    runs in this process while any run uses it (one per address), under the configured secret or a
    random one (its URLs are made here, so no one else needs it)."""
    if not config.enabled:
        yield None
        return
    if config.address is None:  # a standalone receiver: it must share our secret
        yield Webhooks(inbox_for_loop(), config.base_url(), config.require_secret(), local=False)
        return
    where = (id(asyncio.get_running_loop()), config.address)
    receiver = _receivers.get(where)
    if receiver is None:
        secret = config.secret or SecretStr(secrets.token_urlsafe(32))
        receiver = _receivers[where] = _Receiver(inbox_for_loop(), secret)
        try:
            app = create_receiver(secret, receiver.inbox.deliver)
            receiver.bound = await receiver.stack.enter_async_context(serve(app, *config.address))
        except BaseException:
            del _receivers[where]
            raise
    receiver.users += 1
    try:
        yield Webhooks(receiver.inbox, config.base_url(receiver.bound), receiver.secret, local=True)
    finally:
        receiver.users -= 1
        if receiver.users == 0:
            del _receivers[where]
            await receiver.stack.aclose()


@asynccontextmanager
async def open_runtime(settings: FashnSettings, archive: Archive,
                       webhooks: WebhookSettings | None = None) -> AsyncIterator[Runtime]:
    """The runtime of one run; ``webhooks`` default: ``TRYON_WEBHOOK_*`` from the environment."""
    freeze_startup_objects()
    traffic = controller_for(settings)
    async with open_webhooks(webhooks or WebhookSettings()) as hooks, \
            FashnClient.from_settings(settings, gate=traffic) as client:
        yield Runtime(client, traffic, archive, max_resubmits=settings.max_resubmits,
                      resubmit_ambiguous=settings.resubmit_ambiguous,
                      prediction_timeout=settings.prediction_timeout, webhooks=hooks)
