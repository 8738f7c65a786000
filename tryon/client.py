"""Async client for the FASHN API: typed answers, one exception per error code, retries that never pay twice.

Example::

    async with FashnClient.from_settings(FashnSettings()) as client:
        prediction_id = await client.run("tryon-v1.6", {"model_image": url, "garment_image": url})
        prediction = await client.status(prediction_id)

Retry rules (see the "duplicate trap" in the API reference):

* ``GET`` requests are retried on transport errors, 5xx and ``RateLimitExceeded``.
* ``POST /v1/run`` is re-sent only when the answer proves nothing was created: a 429 other than
  ``OutOfCredits``, or a connection that never opened. A 5xx, a read timeout or a dropped
  connection after the body was sent raises :class:`AmbiguousSubmission`; the caller decides.

Every attempt first passes the optional ``gate`` (the traffic controller), so retries are
rate-limited like first attempts, and every 429 is reported back to it.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import httpx
from pydantic import SecretStr

from tryon.errors import (
    AmbiguousSubmission,
    ApiError,
    OutOfCredits,
    OutputExpired,
    ServerError,
    TooManyRequests,
    TransportError,
    api_error_from_response,
)
from tryon.models import (
    IMAGE_FIELDS,
    CreditBalance,
    CreditsResponse,
    Prediction,
    RunRequest,
    RunResponse,
    validate_inputs,
)
from tryon.settings import DEFAULT_BASE_URL, FashnSettings

#: The rate-limited endpoints, as the gate names them: POST /v1/run, GET /v1/status, GET /v1/credits.
Endpoint = Literal["run", "status", "credits"]
ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)


class _HideWebhookUrls(logging.Filter):
    """httpx logs each request's URL at INFO; a ``webhook_url`` parameter carries a callback token,
    so it is logged as ``[hidden]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(a.copy_set_param("webhook_url", "[hidden]")
                                if isinstance(a, httpx.URL) and "webhook_url" in a.params else a for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_HideWebhookUrls())


class Answerable(Protocol):
    def answered(self) -> None: ...


@runtime_checkable
class Gate(Protocol):
    """What the client asks of traffic control (``tryon.traffic.TrafficController`` satisfies it):
    wait before every HTTP attempt (and say when its answer, or its failure, is in: a limiter may
    count the request from then), report every 429."""

    async def acquire(self, endpoint: str) -> Answerable | None: ...

    def on_429(self, endpoint: str, code: str, retry_after: float | None) -> None: ...


# Errors that prove the request never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"message": response.text[:500]}


class FashnClient:
    """One API key's connection to FASHN. Use it as an async context manager."""

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        gate: Gate | None = None,
        connect_timeout: float = 10.0,
        submit_timeout: float = 120.0,
        request_timeout: float = 30.0,
        max_attempts: int = 6,
        max_rate_limited: int = 40,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.base_url = base_url.rstrip("/")
        self.gate = gate
        self.max_attempts = max_attempts
        # 429s never create anything, and with a gate they are paced by it: they get their own,
        # larger budget, so a busy key delays an item instead of failing it.
        self.max_rate_limited = max_rate_limited
        self.backoff = backoff
        self._submit_timeout = httpx.Timeout(submit_timeout, connect=connect_timeout)
        self._request_timeout = httpx.Timeout(request_timeout, connect=connect_timeout)
        # The API client carries the key; downloads use a separate client that never does,
        # because output URLs point at a CDN host, not at the API.
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=self._request_timeout)
        self._cdn = httpx.AsyncClient(transport=transport, timeout=self._request_timeout, follow_redirects=True)

    @classmethod
    def from_settings(cls, settings: FashnSettings, *, gate: Gate | None = None,
                      transport: httpx.AsyncBaseTransport | None = None) -> "FashnClient":
        return cls(
            settings.require_api_key(), settings.base_url, gate=gate, transport=transport,
            connect_timeout=settings.connect_timeout, submit_timeout=settings.submit_timeout,
            request_timeout=settings.request_timeout,
        )

    async def __aenter__(self) -> "FashnClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._cdn.aclose()

    def __repr__(self) -> str:  # never show the key
        return f"FashnClient(base_url={self.base_url!r})"

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.get_secret_value()}"}

    # -- API calls ---------------------------------------------------------------------------

    async def run(self, model_name: str, inputs: dict[str, Any], *, base_dir: str | None = None,
                  webhook_url: str | None = None) -> str:
        """Start a prediction and return its id.

        Image inputs that are local paths or fsspec URLs are read and sent as data URIs
        (downscaled when over 2000 px); URLs, data URIs and ``saved:`` names pass through.
        Inputs are validated against the model's schema before anything is sent.
        """
        return await self.start(await self.prepare_run(model_name, inputs, base_dir=base_dir), webhook_url=webhook_url)

    async def prepare_run(self, model_name: str, inputs: dict[str, Any], *, base_dir: str | None = None) -> RunRequest:
        """Everything of :meth:`run` before the request: read, downscale and encode local images,
        validate. Done ahead of time, it keeps that work out of the moment a slot frees."""
        return RunRequest(model_name=model_name, inputs=await self._prepare_inputs(model_name, inputs, base_dir))

    async def start(self, request: RunRequest, *, webhook_url: str | None = None) -> str:
        """Send one prepared ``POST /v1/run`` and return the prediction id."""
        body = request.model_dump()
        params = {"webhook_url": webhook_url} if webhook_url else None
        response = await self._send("run", "POST", "/v1/run", json=body, params=params)
        answer = RunResponse.model_validate(_json(response))
        if answer.error or not answer.id:
            # A 200 with an error string: the prediction did not start.
            raise api_error_from_response(response.status_code, {"error": answer.error, "message": answer.error})
        return answer.id

    async def status(self, prediction_id: str, admitted: Answerable | None = None) -> Prediction:
        """The prediction's status; ``admitted``: the first attempt's admission, already taken from
        the gate by the caller (a scheduled poll, :data:`tryon.traffic.poll_policy.PollFn`)."""
        response = await self._send("status", "GET", f"/v1/status/{prediction_id}", admitted=admitted)
        prediction = Prediction.model_validate(_json(response))
        credits = response.headers.get("x-fashn-credits-used")
        if credits is not None and credits.strip().isdigit():
            prediction.credits_used = int(credits)
        return prediction

    async def credits(self) -> CreditBalance:
        response = await self._send("credits", "GET", "/v1/credits")
        return CreditsResponse.model_validate(_json(response)).credits

    async def download(self, output: str) -> bytes:
        """The bytes of one output: a CDN URL or a data URI."""
        if output.endswith("_expired") and not output.startswith(("http://", "https://")):
            # After 60 minutes the status answers the literal ``<base64>_expired`` in place of a data URI.
            raise OutputExpired("the base64 output expired (base64 outputs are kept 60 minutes)")
        if output.startswith("data:"):
            return base64.b64decode(output.split(",", 1)[1])
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await self._cdn.get(output)
            except httpx.TransportError as exc:
                if attempt == self.max_attempts:
                    raise TransportError(f"download failed: {exc!r}", request_sent=True) from exc
            else:
                if response.status_code in (403, 404, 410):
                    raise OutputExpired(f"output no longer available ({response.status_code}): {output}")
                if response.status_code < 500:
                    response.raise_for_status()
                    return response.content
                if attempt == self.max_attempts:
                    raise ServerError(f"download answered {response.status_code}", http_status=response.status_code)
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))

    # -- plumbing ----------------------------------------------------------------------------

    async def _prepare_inputs(self, model_name: str, inputs: dict[str, Any], base_dir: str | None) -> dict[str, Any]:
        from tryon.images import to_api_value

        prepared = dict(inputs)
        for field in IMAGE_FIELDS:
            if isinstance(prepared.get(field), str):
                prepared[field] = await to_api_value(prepared[field], base_dir)
        validate_inputs(model_name, prepared)  # KeyError / ValidationError before anything is sent
        return prepared

    async def _send(self, endpoint: Endpoint, method: str, path: str, *, admitted: Answerable | None = None,
                    **kwargs: Any) -> httpx.Response:
        submitting = endpoint == "run"
        timeout = self._submit_timeout if submitting else self._request_timeout
        attempt = rate_limited = 0
        while True:
            attempt += 1
            backoff = self.backoff * 2 ** (attempt - 1)
            if admitted is not None:  # taken by the caller for the first attempt
                admission, admitted = admitted, None
            else:
                admission = await self.gate.acquire(endpoint) if self.gate is not None else None
            try:
                response = await self._http.request(method, path, headers=self._auth, timeout=timeout, **kwargs)
            except _NOT_SENT as exc:
                failure: Exception = TransportError(f"could not connect to {self.base_url}: {exc!r}", request_sent=False)
                delay = backoff
            except httpx.TransportError as exc:
                if submitting:
                    raise AmbiguousSubmission(
                        f"POST /v1/run got no answer after the request was sent ({type(exc).__name__}); "
                        "a prediction may have been created", cause=exc) from exc
                failure, delay = TransportError(f"{method} {path} failed: {exc!r}", request_sent=True), backoff
            else:
                if response.status_code < 400:
                    return response
                failure = error = api_error_from_response(response.status_code, _json(response), _retry_after(response))
                if isinstance(error, TooManyRequests):
                    if self.gate is not None:
                        self.gate.on_429(endpoint, error.code, error.retry_after)
                    if isinstance(error, OutOfCredits):
                        raise error
                    # With a gate, the gate paces the next attempt; without one, honour Retry-After.
                    delay = 0.0 if self.gate is not None else (error.retry_after or backoff)
                    rate_limited += 1
                    if self.gate is not None and rate_limited < self.max_rate_limited:
                        attempt -= 1  # not a failure of the request: the key is busy, the gate paces us
                elif isinstance(error, ServerError):
                    if submitting:
                        raise AmbiguousSubmission(
                            f"POST /v1/run answered {response.status_code}; a prediction may have been created",
                            cause=error) from error
                    delay = backoff
                else:
                    raise error
            finally:
                if admission is not None:
                    admission.answered()  # the server stamped it by now: it counts from here
            if attempt >= self.max_attempts or rate_limited >= self.max_rate_limited:
                raise failure
            await asyncio.sleep(delay)


__all__ = ["ENDPOINTS", "FashnClient", "Gate", "ApiError"]
