"""The emulator's HTTP surface: ``/v1/run``, ``/v1/status/{id}``, ``/v1/credits``, its CDN,
test assets, and loopback-only admin endpoints (stats, config, reset)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tryon.emulator import render
from tryon.emulator.conf import WEBHOOK_RETRY_DELAYS, WEBHOOK_TIMEOUT, EmulatorConfig
from tryon.emulator.state import Account, Prediction, State
from tryon.models import LEGACY_MODEL_NAME, model_spec, validate_inputs


class DroppedOnPurpose(ConnectionAbortedError):
    """An injected fault, not an error of the emulator (its traceback is not logged)."""


class DroppedConnection(Response):
    """Starts an answer, then drops the connection: the client sees no HTTP status."""

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]})
        raise DroppedOnPurpose("emulator dropped the connection on purpose")


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class Emulator:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = State(config)
        self._tasks: set[asyncio.Task] = set()
        self._http: httpx.AsyncClient | None = None
        self._hooks: httpx.AsyncHTTPTransport | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0, follow_redirects=True)
        return self._http

    @property
    def hooks(self) -> httpx.AsyncHTTPTransport:
        """Webhooks go through a bare transport, not a client: httpx's client logs every request's
        URL at INFO, and a webhook URL carries the receiver's secret token."""
        if self._hooks is None:
            self._hooks = httpx.AsyncHTTPTransport()
        return self._hooks

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shared gates ---------------------------------------------------------------------

    def _authorize(self, request: Request, endpoint: str) -> tuple[str, Account] | Response:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        account = self.state.account(key) if key else None
        if account is None:
            self.state.requests[endpoint]["401"] += 1
            return error(401, "UnauthorizedAccess", "invalid or missing API key")
        now, limit = self.state.now(), self.config.limit(endpoint)
        window = account.windows[endpoint]
        seconds = self.config.scaled(limit.seconds)
        if window.count(now, seconds) >= limit.count:
            self.state.requests[endpoint]["429:RateLimitExceeded"] += 1
            if len(self.state.rejections) < 20:  # to tell where a 429 came from (the benchmark prints it)
                self.state.rejections.append({"endpoint": endpoint, "at": now, "window": list(window.times)})
            answer = error(429, "RateLimitExceeded", f"more than {limit.count} {endpoint} requests in {limit.seconds:g} s")
            if self.config.retry_after:  # seconds until the oldest request leaves the window (emulator time)
                answer.headers["Retry-After"] = f"{max(0.0, window.times[0] + seconds - now):.3f}"
            return answer
        window.add(now, seconds)
        return key, account

    async def _maybe_slow(self) -> None:
        faults = self.config.faults
        if faults.slow_rate and self.state.rng.random() < faults.slow_rate:
            self.state.injected["slow_answer"] += 1
            await asyncio.sleep(self.config.scaled(faults.slow_seconds))

    def _count(self, endpoint: str, response: Response) -> Response:
        code = str(response.status_code)
        if response.status_code >= 400 and isinstance(response, JSONResponse):
            code = f"{code}:{json.loads(response.body).get('error')}" if response.status_code == 429 else code
        self.state.requests[endpoint][code] += 1
        return response

    # -- API ------------------------------------------------------------------------------

    async def run(self, request: Request) -> Response:
        gate = self._authorize(request, "run")
        if isinstance(gate, Response):
            return gate
        key, account = gate
        try:
            body = await request.json()
        except ValueError:
            return self._count("run", error(400, "BadRequest", "the body is not JSON"))
        if not isinstance(body, dict):
            return self._count("run", error(400, "BadRequest", "the body must be a JSON object"))
        if "model_name" in body or "inputs" in body:
            model_name, inputs = body.get("model_name"), body.get("inputs")
        else:  # the legacy body: inputs at the top level
            model_name, inputs = LEGACY_MODEL_NAME, body
        if not isinstance(inputs, dict):
            return self._count("run", error(400, "BadRequest", "inputs must be an object"))
        try:
            validated = validate_inputs(str(model_name), inputs).model_dump(exclude_none=True)
        except KeyError as exc:
            return self._count("run", error(400, "BadRequest", str(exc.args[0])))
        except ValidationError as exc:
            problems = "; ".join(f"inputs.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {str(e.get('input'))[:60]!r})"
                                 for e in exc.errors())
            return self._count("run", error(400, "BadRequest", problems))
        now = self.state.now()
        in_flight = self.state.in_flight(account, now)
        needed = self.state.credits(str(model_name), validated)
        if account.total - account.reserved < needed:
            return self._count("run", error(429, "OutOfCredits", f"{needed} credits needed, "
                                                                 f"{account.total - account.reserved} available"))
        if in_flight >= self.config.max_in_flight:
            return self._count("run", error(429, "ConcurrencyLimitExceeded",
                                            f"{in_flight} predictions in flight (limit {self.config.max_in_flight})"))
        faults, rng = self.config.faults, self.state.rng
        if faults.server_error_before_rate and rng.random() < faults.server_error_before_rate:
            self.state.injected["500_before_create"] += 1
            return self._count("run", error(500, "InternalServerError", "injected before creating"))
        if faults.drop_before_rate and rng.random() < faults.drop_before_rate:
            self.state.requests["run"]["dropped_before"] += 1
            self.state.injected["dropped_before_create"] += 1
            return DroppedConnection()
        prediction = self.state.create(key, str(model_name), validated, request.query_params.get("webhook_url"))
        self._spawn(self._load_inputs(prediction))
        if prediction.webhook_url:
            self._spawn(self._deliver_webhook(prediction, str(request.base_url)))
        await self._maybe_slow()
        if faults.server_error_after_rate and rng.random() < faults.server_error_after_rate:
            self.state.requests["run"]["500_after_create"] += 1
            prediction.answer = "500_after_create"
            self.state.injected["500_after_create"] += 1
            return self._count("run", error(500, "InternalServerError", "injected after creating"))
        if faults.drop_after_rate and rng.random() < faults.drop_after_rate:
            self.state.requests["run"]["dropped_after_create"] += 1
            prediction.answer = "dropped_after_create"
            self.state.injected["dropped_after_create"] += 1
            return DroppedConnection()
        return self._count("run", JSONResponse({"id": prediction.id, "error": None}))

    async def _load_inputs(self, prediction: Prediction) -> None:
        spec, inputs = model_spec(prediction.model_name), prediction.inputs
        try:
            loaded = {f: await render.load_thumbnail(inputs[f], f, self.http) for f in spec.image_fields if inputs.get(f)}
        except render.ImageLoadError as exc:
            if prediction.failure is None:
                self.state.fail(prediction, "ImageLoadError", str(exc))
            return
        model = loaded.get(spec.model_field)  # product-to-model without a model photo: a generated person
        prediction.thumbs = (render.png_bytes(model) if model else render.PLACEHOLDER,
                             render.png_bytes(loaded[spec.garment_field]))

    def _payload(self, prediction: Prediction, base_url: str, now: float) -> tuple[dict[str, Any], dict[str, str]]:
        status = prediction.status(now)
        body: dict[str, Any] = {"id": prediction.id, "status": status, "output": None, "error": None}
        headers: dict[str, str] = {}
        if status == "failed":
            name, message = prediction.failure or ("PipelineError", "failed")
            body["error"] = {"name": name, "message": message}
            headers["x-fashn-credits-used"] = "0"
        elif status == "completed":
            headers["x-fashn-credits-used"] = str(prediction.credits)
            ext = "jpg" if prediction.output_format == "jpeg" else "png"
            if prediction.return_base64:
                expired = prediction.expired or now - prediction.ends > self.config.scaled(self.config.base64_retention)
                mime = "jpeg" if ext == "jpg" else "png"
                body["output"] = ["<base64>_expired" if expired else
                                  f"data:image/{mime};base64,{base64.b64encode(self._output(prediction, i)).decode()}"
                                  for i in range(prediction.num_samples)]
            else:
                body["output"] = [f"{base_url.rstrip('/')}/cdn/{prediction.id}/output_{i}.{ext}"
                                  for i in range(prediction.num_samples)]
        return body, headers

    def _output(self, prediction: Prediction, index: int) -> bytes:
        model_png, garment_png = prediction.thumbs or (render.PLACEHOLDER, render.PLACEHOLDER)
        seed = hashlib.sha256(f"{prediction.hash}:{index}".encode()).digest()
        if prediction.output_fault == "blank":
            data = render.blank_output(prediction.size, prediction.output_format)
        else:
            w, h = prediction.size
            size = (w // 2, h // 2) if prediction.output_fault == "wrong_size" else (w, h)
            data = render.render_output(seed, size, prediction.output_format, model_png, garment_png)
        digest = prediction.served_sha256[index] = hashlib.sha256(data).hexdigest()
        served = prediction.served_all.setdefault(index, [])
        if digest not in served:
            served.append(digest)
        return data

    async def status(self, request: Request) -> Response:
        gate = self._authorize(request, "status")
        if isinstance(gate, Response):
            return gate
        key, account = gate
        faults = self.config.faults
        if faults.status_error_rate and self.state.rng.random() < faults.status_error_rate:
            self.state.injected["status_500"] += 1
            return self._count("status", error(500, "InternalServerError", "injected status error"))
        prediction = self.state.predictions.get(request.path_params["id"])
        if prediction is None or prediction.key != key:
            return self._count("status", error(404, "NotFound", "prediction not found"))
        now = self.state.now()
        self.state.settle(account, now)
        prediction.status_calls += 1
        if prediction.noticed is None and now >= prediction.ends:
            prediction.noticed = now
        await self._maybe_slow()
        body, headers = self._payload(prediction, str(request.base_url), now)
        return self._count("status", JSONResponse(body, headers=headers))

    async def credits(self, request: Request) -> Response:
        gate = self._authorize(request, "credits")
        if isinstance(gate, Response):
            return gate
        _, account = gate
        self.state.settle(account, self.state.now())
        return self._count("credits", JSONResponse({"credits": {
            "total": account.total, "subscription": account.subscription, "on_demand": account.on_demand}}))

    async def cdn(self, request: Request) -> Response:
        prediction = self.state.predictions.get(request.path_params["id"])
        index = int(request.path_params["index"])
        now = self.state.now()
        if (prediction is None or prediction.status(now) != "completed" or index >= prediction.num_samples
                or prediction.expired or now - prediction.ends > self.config.scaled(self.config.cdn_retention)):
            return Response("not found", status_code=404)
        data = await asyncio.to_thread(self._output, prediction, index)
        media = "image/jpeg" if prediction.output_format == "jpeg" else "image/png"
        return Response(data, media_type=media)

    async def _deliver_webhook(self, prediction: Prediction, base_url: str) -> None:
        """POST the terminal payload to the exact webhook URL, with the provider's retries and
        the faults drawn for this prediction at creation (see ``FaultConfig``)."""
        if prediction.webhook == "lost":
            return
        await asyncio.sleep(max(0.0, prediction.ends - self.state.now()) + 0.001)  # just past its end
        await asyncio.sleep(prediction.webhook_delay)
        if "out_of_order" in prediction.webhook_faults:
            await self._hold_for_a_later_webhook(prediction)
        body, _ = self._payload(prediction, base_url, self.state.now())
        delivered = await self._try_webhook(prediction, body, first=True)
        for delay in WEBHOOK_RETRY_DELAYS:  # retried on any non-2xx answer or a transport error
            if delivered:
                break
            await asyncio.sleep(self.config.scaled(delay))
            delivered = await self._try_webhook(prediction, body)
        self._settle_webhook(prediction, "delivered" if delivered else "refused")

    async def _hold_for_a_later_webhook(self, prediction: Prediction) -> None:
        """Wait until a prediction created after this one has had its webhook sent, or at most
        ``webhook_delay_seconds`` (scaled)."""
        deadline = self.state.now() + self.config.scaled(self.config.faults.webhook_delay_seconds)
        while self.state.webhook_sent_seq <= prediction.seq and self.state.now() < deadline:
            await asyncio.sleep(0.005)

    async def _try_webhook(self, prediction: Prediction, body: dict[str, Any], first: bool = False) -> bool:
        """One try; True on a 2xx. The first try also sends an injected duplicate."""
        ok = await self._send_webhook(prediction, body)
        if first:
            self.state.webhook_sent_seq = max(self.state.webhook_sent_seq, prediction.seq)
            if "duplicated" in prediction.webhook_faults:
                await asyncio.sleep(prediction.webhook_copy_after)
                ok = await self._send_webhook(prediction, body) or ok
        return ok

    async def _send_webhook(self, prediction: Prediction, body: dict[str, Any]) -> bool:
        """One POST, recorded on the prediction; True on a 2xx (0 stands for a transport error)."""
        prediction.webhook_attempts += 1
        self.state.webhooks["sent"] += 1
        request = httpx.Request("POST", str(prediction.webhook_url), json=body,
                                extensions={"timeout": httpx.Timeout(WEBHOOK_TIMEOUT).as_dict()})
        try:
            response = await self.hooks.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            code = response.status_code
        except (httpx.HTTPError, OSError):
            code = 0
        prediction.webhook_answers.append(code)
        return 200 <= code < 300

    def _settle_webhook(self, prediction: Prediction, outcome: str) -> None:
        prediction.webhook = outcome
        self.state.webhooks[outcome] += 1

    # -- test assets and admin -------------------------------------------------------------

    async def assets(self, request: Request) -> Response:
        name, _, ext = request.path_params["name"].rpartition(".")
        if ext == "txt":
            return Response("not an image", media_type="text/plain")
        if ext not in ("png", "jpg", "jpeg") or not name:
            return Response("not found", status_code=404)
        fmt = "jpeg" if ext in ("jpg", "jpeg") else "png"
        return Response(render.asset(name, fmt), media_type=f"image/{fmt}")

    @staticmethod
    def _loopback(request: Request) -> bool:
        host = request.client.host if request.client else ""
        return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")

    async def admin(self, request: Request) -> Response:
        if not self._loopback(request):
            return Response("forbidden", status_code=403)
        action = request.path_params["action"]
        if action == "stats":
            return JSONResponse(self.state.stats())
        if action == "predictions":  # every prediction created since the last reset, oldest first
            now = self.state.now()
            return JSONResponse([self.state.record(p, now) for p in self.state.predictions.values()])
        if action == "reset" and request.method == "POST":
            self.state.reset()
            return JSONResponse({"ok": True})
        if action == "config" and request.method == "POST":
            patch = await request.json()
            faults = patch.pop("faults", None)
            data = self.config.model_dump()
            data.update(patch)
            if faults is not None:
                data["faults"] = {**self.config.faults.model_dump(), **faults}
            new = EmulatorConfig.model_validate(data)
            for name in EmulatorConfig.model_fields:
                setattr(self.config, name, getattr(new, name))
            if "keys" in patch:  # a key left out is revoked (401 from now on); a listed key gets that balance
                for key in set(self.state.accounts) - set(new.keys):
                    del self.state.accounts[key]
                for key, credits in new.keys.items():
                    account = self.state.accounts.setdefault(key, Account(credits))
                    account.subscription, account.on_demand = credits, 0
            return JSONResponse(self.config.model_dump(mode="json"))
        return Response("not found", status_code=404)

    async def prediction_detail(self, request: Request) -> Response:
        if not self._loopback(request):
            return Response("forbidden", status_code=403)
        prediction = self.state.predictions.get(request.path_params["id"])
        if prediction is None:
            return Response("not found", status_code=404)
        return JSONResponse(self.state.record(prediction, self.state.now()))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
        if self._hooks is not None:
            await self._hooks.aclose()


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    emulator = Emulator(config or EmulatorConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await emulator.aclose()

    app = Starlette(lifespan=lifespan, routes=[
        Route("/v1/run", emulator.run, methods=["POST"]),
        Route("/v1/status/{id}", emulator.status, methods=["GET"]),
        Route("/v1/credits", emulator.credits, methods=["GET"]),
        Route("/cdn/{id}/output_{index:int}.{ext}", emulator.cdn, methods=["GET"]),
        Route("/_assets/{name}", emulator.assets, methods=["GET"]),
        Route("/_admin/predictions/{id}", emulator.prediction_detail, methods=["GET"]),
        Route("/_admin/{action}", emulator.admin, methods=["GET", "POST"]),
    ])
    app.state.emulator = emulator
    return app
