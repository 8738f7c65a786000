"""What one run of items works with (:class:`Runtime`): its key's traffic controller, a client
through it, the archive, its spend limit and, when configured, its webhooks; and the
:class:`~tryon.process.Process` whose shared state it uses."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import SecretStr

from tryon.archive import Archive
from tryon.client import FashnClient
from tryon.process import Process
from tryon.report import ItemReport
from tryon.settings import FashnSettings, WebhookSettings
from tryon.traffic import TrafficController
from tryon.traffic.budget import Budget
from tryon.webhooks import WebhookInbox, Webhooks, create_receiver, serve


class Runtime:
    """What one run needs to take items through their life on one key into one archive."""

    def __init__(self, client: FashnClient, traffic: TrafficController, archive: Archive, *, process: Process,
                 max_resubmits: int = 2, resubmit_ambiguous: bool = True, prediction_timeout: float = 600.0,
                 workers: int | None = None, webhooks: Webhooks | None = None, budget: Budget | None = None) -> None:
        self.client = client
        self.budget = budget if budget is not None else Budget()  # the spend limit its submissions keep to
        self.webhooks = webhooks
        self.traffic = traffic
        self.archive = archive
        self.process = process
        self.max_resubmits = max_resubmits
        self.resubmit_ambiguous = resubmit_ambiguous
        self.prediction_timeout = prediction_timeout
        # Enough items in progress to keep every slot busy while others download or archive.
        self.workers = workers or 2 * traffic.limits.in_flight + 2
        self.owner: str | None = None  # the run lease its pending records name (tryon.lease)
        #: By item state (tryon.item.ItemState), the lives begun before the run took them
        #: (tryon.batch.begin), until it does.
        self.begun: dict[object, asyncio.Future[ItemReport]] = {}

    def __repr__(self) -> str:
        return f"Runtime(archive={self.archive.url!r})"


@asynccontextmanager
async def open_runtime(process: Process, settings: FashnSettings, archive: Archive,
                       webhooks: WebhookSettings | None = None, budget: Budget | None = None) -> AsyncIterator[Runtime]:
    """The runtime of one run; ``webhooks`` default: ``TRYON_WEBHOOK_*`` from the environment;
    ``budget``: its spend limit (shared with other runs when they are given the same one)."""
    traffic = process.controller(settings)
    async with open_webhooks(process, webhooks or WebhookSettings()) as hooks, \
            FashnClient.from_settings(settings, gate=traffic) as client:
        yield Runtime(client, traffic, archive, process=process, max_resubmits=settings.max_resubmits,
                      resubmit_ambiguous=settings.resubmit_ambiguous,
                      prediction_timeout=settings.prediction_timeout, webhooks=hooks, budget=budget)


@asynccontextmanager
async def open_webhooks(process: Process, config: WebhookSettings) -> AsyncIterator[Webhooks | None]:
    """A run's webhooks, or None when none are configured. With ``listen``, the receiver runs in
    this process while any run uses it (one per address), under the configured secret or a random
    one (its URLs are made here, so no one else needs it)."""
    if not config.enabled:
        yield None
    elif config.address is None:  # a standalone receiver: it must share our secret
        yield Webhooks(process.inbox, config.base_url(), config.require_secret(), local=False)
    else:
        async with process.hold(("receiver", config.address), lambda: _receiver(process.inbox, config)) as served:
            bound, secret = served
            yield Webhooks(process.inbox, config.base_url(bound), secret, local=True)


@asynccontextmanager
async def _receiver(inbox: WebhookInbox, config: WebhookSettings) -> AsyncIterator[tuple[tuple[str, int], SecretStr]]:
    assert config.address is not None
    secret = config.secret or SecretStr(secrets.token_urlsafe(32))
    async with serve(create_receiver(secret, inbox.deliver), *config.address) as bound:
        yield bound, secret
