"""The client's retry rules, over httpx.MockTransport (fast); tests/test_emulator.py covers real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from PIL import Image

from tryon.client import FashnClient
from tryon.errors import (
    AmbiguousSubmission,
    BadRequest,
    ConcurrencyLimitExceeded,
    OutOfCredits,
    OutputExpired,
    RateLimitExceeded,
    ServerError,
    TransportError,
    UnauthorizedAccess,
)

INPUTS = {"model_image": "https://img.example/m.jpg", "garment_image": "https://img.example/g.jpg"}
KEY = "fa-test-secret-key"


class Script:
    """Answers requests from a list of responses/exceptions and records what was sent."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def runs(self) -> int:
        return sum(r.method == "POST" and r.url.path == "/v1/run" for r in self.requests)


def err(status: int, code: str, **headers) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": f"{code} happened"}, headers=headers)


def ok_run(pid: str = "p1") -> httpx.Response:
    return httpx.Response(200, json={"id": pid, "error": None})


class RecordingGate:
    def __init__(self):
        self.acquired: list[str] = []
        self.limited: list[tuple[str, str, float | None]] = []

    async def acquire(self, endpoint: str) -> None:
        self.acquired.append(endpoint)

    def on_429(self, endpoint: str, code: str, retry_after: float | None) -> None:
        self.limited.append((endpoint, code, retry_after))


def client_for(script: Script, gate=None) -> FashnClient:
    return FashnClient(KEY, "https://api.test", gate=gate, backoff=0.001, transport=httpx.MockTransport(script))


@pytest.mark.parametrize("answer", [
    httpx.Response(500, json={"error": "InternalServerError", "message": "boom"}),
    httpx.Response(502, text="bad gateway"),
    httpx.ReadTimeout("read timed out"),
    httpx.RemoteProtocolError("server disconnected"),
])
async def test_run_is_never_resent_when_a_prediction_may_exist(answer):
    script = Script(answer, ok_run())
    async with client_for(script) as client:
        with pytest.raises(AmbiguousSubmission):
            await client.run("tryon-v1.6", INPUTS)
    assert script.runs() == 1


@pytest.mark.parametrize("answer", [
    err(429, "RateLimitExceeded"),
    err(429, "ConcurrencyLimitExceeded"),
    httpx.ConnectError("connection refused"),
])
async def test_run_is_retried_when_the_answer_proves_nothing_was_created(answer):
    script = Script(answer, ok_run("p2"))
    gate = RecordingGate()
    async with client_for(script, gate) as client:
        assert await client.run("tryon-v1.6", INPUTS) == "p2"
    assert script.runs() == 2
    assert gate.acquired == ["run", "run"], "every attempt passes traffic control"


@pytest.mark.parametrize(("answer", "error"), [
    (err(429, "OutOfCredits"), OutOfCredits),
    (err(400, "BadRequest"), BadRequest),
    (err(401, "UnauthorizedAccess"), UnauthorizedAccess),
])
async def test_run_errors_that_retrying_cannot_fix_are_raised_at_once(answer, error):
    script = Script(answer, ok_run())
    async with client_for(script) as client:
        with pytest.raises(error):
            await client.run("tryon-v1.6", INPUTS)
    assert script.runs() == 1


async def test_run_reports_429_codes_and_retry_after_to_the_gate():
    script = Script(err(429, "RateLimitExceeded", **{"Retry-After": "3"}), ok_run())
    gate = RecordingGate()
    async with client_for(script, gate) as client:
        await client.run("tryon-v1.6", INPUTS)
    assert gate.limited == [("run", "RateLimitExceeded", 3.0)]


async def test_run_with_an_error_string_in_a_200_did_not_start():
    script = Script(httpx.Response(200, json={"id": None, "error": "OutOfCredits"}))
    async with client_for(script) as client:
        with pytest.raises(OutOfCredits):
            await client.run("tryon-v1.6", INPUTS)


async def test_run_validates_inputs_before_sending():
    script = Script()
    async with client_for(script) as client:
        with pytest.raises(Exception, match="mode"):
            await client.run("tryon-v1.6", {**INPUTS, "mode": "turbo"})
        with pytest.raises(KeyError, match="tryon-v9"):
            await client.run("tryon-v9", INPUTS)
    assert script.requests == []


async def test_status_retries_transport_errors_and_5xx_then_parses_defensively():
    done = httpx.Response(200, json={"id": "p1", "status": "completed", "output": {"images": ["https://cdn/x.png"]},
                                     "error": None}, headers={"x-fashn-credits-used": "2"})
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(503, text="busy"), done)
    async with client_for(script) as client:
        prediction = await client.status("p1")
    assert (prediction.status, prediction.output, prediction.credits_used) == ("completed", ["https://cdn/x.png"], 2)
    assert len(script.requests) == 3


async def test_status_gives_up_after_max_attempts():
    script = Script(*[httpx.Response(500, json={"error": "InternalServerError"})] * 6)
    async with client_for(script) as client:
        with pytest.raises(ServerError):
            await client.status("p1")
    assert len(script.requests) == 6


async def test_status_of_a_failed_prediction_carries_name_and_message():
    script = Script(httpx.Response(200, json={"id": "p1", "status": "failed", "output": None,
                                              "error": {"name": "PoseError", "message": "no pose"}}))
    async with client_for(script) as client:
        prediction = await client.status("p1")
    assert prediction.error is not None and (prediction.error.name, prediction.error.message) == ("PoseError", "no pose")


async def test_key_goes_to_the_api_only_never_to_the_cdn():
    script = Script(httpx.Response(200, content=b"PNG"))
    async with client_for(script) as client:
        assert await client.download("https://cdn.test/p1/output_0.png") == b"PNG"
        assert KEY not in repr(client)
    assert "authorization" not in {k.lower() for k in script.requests[0].headers}


async def test_expired_outputs_raise_output_expired():
    script = Script(httpx.Response(404, text="gone"))
    async with client_for(script) as client:
        with pytest.raises(OutputExpired):
            await client.download("<base64>_expired")  # what the API answers after 60 minutes
        with pytest.raises(OutputExpired):
            await client.download("data:image/png;base64,<base64>_expired")
        with pytest.raises(OutputExpired):
            await client.download("https://cdn.test/p1/output_0.png")


async def test_connection_never_opened_exhausts_into_transport_error():
    script = Script(*[httpx.ConnectError("refused")] * 6)
    async with client_for(script) as client:
        with pytest.raises(TransportError) as info:
            await client.credits()
    assert info.value.request_sent is False


def test_error_classes_follow_the_reference_table():
    assert RateLimitExceeded.retry_safe and ConcurrencyLimitExceeded.retry_safe and not OutOfCredits.retry_safe


async def test_a_prepared_run_sends_the_encoded_image_once_and_never_shows_it(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "g.png")
    script = Script(ok_run("p7"))
    async with client_for(script) as client:
        request = await client.prepare_run("tryon-v1.6", {**INPUTS, "garment_image": "g.png"}, base_dir=str(tmp_path))
        assert request.inputs["garment_image"].startswith("data:image/png;base64,")
        assert "base64" not in repr(request) and "base64" not in str(request)
        assert await client.start(request) == "p7"
    assert json.loads(script.requests[0].content) == {"model_name": "tryon-v1.6", "inputs": request.inputs}
