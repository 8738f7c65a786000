"""One run's webhooks (:class:`Webhooks`): the callback URL each of its submissions gives the
provider, and its side of the process's inbox."""

from __future__ import annotations

import secrets

from pydantic import SecretStr

from tryon.webhooks.delivery import Delivery, callback_url
from tryon.webhooks.inbox import Listener, WebhookInbox


class Webhooks:
    """Where this run's submissions ask the provider to push their end, and the inbox that takes
    what comes back."""

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
