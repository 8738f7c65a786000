"""The webhook endpoint: an ASGI app that checks a delivery's address and body, then hands it on.

Every answer is quick and says nothing to a stranger:
- a path token that is not the HMAC of its query (or a query missing a part) → 404, no detail;
- a body over ``max_body`` bytes → 413; not a JSON object with string ``id`` and ``status`` → 400;
- the handler's verdict: accepted, duplicate or published → 200; unexpected (a prediction we
  never started or no longer wait for) → 404; the handler failing → 503, so the provider retries.
Each outcome is counted in :class:`ReceiverStats`. The server (:func:`serve`) answers 503 past
``limit_concurrency`` connections at once, which bounds a flood, and logs no request line (the
URL carries the token).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext

import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tryon.webhooks.delivery import Delivery, token_matches
from tryon.webhooks.inbox import Verdict

logger = logging.getLogger(__name__)

Handler = Callable[[Delivery], "Verdict | Awaitable[Verdict]"]
MAX_BODY = 64 * 1024  # a terminal status body is well under 2 KiB; base64 outputs are not sent by webhook


class ReceiverStats(Counter):
    """Deliveries by outcome: the verdicts, and unknown_token, too_large, not_json, malformed, failed."""


def create_receiver(secret: SecretStr, handler: Handler, *, max_body: int = MAX_BODY) -> Starlette:
    """The ASGI app; ``app.state.stats`` counts outcomes. Any path prefix works (a proxy may add
    one): the token is the last segment."""
    stats = ReceiverStats()

    async def receive(request: Request) -> Response:
        outcome, response = await _handle(request, secret, handler, max_body)
        stats[outcome] += 1
        return response

    app = Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
    app.state.stats = stats
    return app


def _refused(code: int) -> Response:
    return Response(status_code=code)


async def _handle(request: Request, secret: SecretStr, handler: Handler, max_body: int) -> tuple[str, Response]:
    token = request.url.path.rstrip("/").rpartition("/")[2]
    query = request.query_params
    run, item, attempt = query.get("run", ""), query.get("item", ""), query.get("attempt", "")
    if not (token and run and item and attempt.isdigit() and token_matches(secret, token, run, item, int(attempt))):
        return "unknown_token", _refused(404)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            return "too_large", _refused(413)
    try:
        data = json.loads(body)
    except ValueError:
        return "not_json", _refused(400)
    if not (isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]
            and isinstance(data.get("status"), str) and data["status"]):
        return "malformed", _refused(400)
    delivery = Delivery(run, item, int(attempt), data["id"], data["status"])
    try:
        verdict = handler(delivery)
        if inspect.isawaitable(verdict):
            verdict = await verdict
    except Exception as exc:  # the provider retries a non-2xx answer
        logger.warning("a webhook for prediction %s could not be handled: %s", delivery.prediction_id, exc)
        return "failed", _refused(503)
    if verdict == "unexpected":
        return verdict, _refused(404)
    return verdict, JSONResponse({"ok": True})


class _Server(uvicorn.Server):
    # Signals stay with the host process (a flow run's Ctrl-C must not only stop the receiver).
    def capture_signals(self):  # type: ignore[override]
        return nullcontext()


@asynccontextmanager
async def serve(app: Starlette, host: str = "127.0.0.1", port: int = 0, *,
                limit_concurrency: int = 64) -> AsyncIterator[tuple[str, int]]:
    """Serve ``app`` on ``host:port`` (0: any free port) in this event loop while inside; yields the
    bound address. The socket is bound and listening before this yields, so no delivery is refused
    for arriving early."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                    limit_concurrency=limit_concurrency, timeout_keep_alive=5))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()
