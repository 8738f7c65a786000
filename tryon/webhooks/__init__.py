"""Webhooks: the provider pushes each prediction's end to a receiver of ours instead of waiting
to be polled.

- :mod:`~tryon.webhooks.delivery`: what a webhook says (:class:`Delivery`) and the callback URL
  we hand the provider, whose path token proves we made it;
- :mod:`~tryon.webhooks.inbox`: what this process expects and how each delivery is judged
  (:class:`WebhookInbox`);
- :mod:`~tryon.webhooks.receiver`: the HTTP endpoint (an ASGI app) and a server to run it;
- :mod:`~tryon.webhooks.run`: one run's callback URLs and its side of the inbox (:class:`Webhooks`).

A webhook is unsigned: it is only ever a hint. A status call confirms the prediction before
anything is archived; its one power of its own is to name the prediction behind an ambiguous
answer to ``POST /v1/run``, which the item then polls (and confirms) instead of paying again.
"""

from tryon.webhooks.delivery import Delivery, callback_url, token_for
from tryon.webhooks.inbox import Verdict, WebhookInbox
from tryon.webhooks.receiver import ReceiverStats, create_receiver, serve
from tryon.webhooks.run import Webhooks

__all__ = ["Delivery", "ReceiverStats", "Verdict", "WebhookInbox", "Webhooks", "callback_url", "create_receiver",
           "serve", "token_for"]
