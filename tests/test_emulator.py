"""The emulator speaks the FASHN protocol (over real HTTP), and the client handles every answer
in the reference's error tables."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.fixtures.emulator import TEST_KEY
from tryon.client import FashnClient
from tryon.errors import (
    AmbiguousSubmission,
    ConcurrencyLimitExceeded,
    NotFound,
    OutOfCredits,
    OutputExpired,
    RateLimitExceeded,
    UnauthorizedAccess,
)


def inputs(emulator, **extra) -> dict:
    return {"model_image": f"{emulator.url}/_assets/model.jpg", "garment_image": f"{emulator.url}/_assets/shirt.png",
            "mode": "performance", **extra}


async def until_done(client: FashnClient, prediction_id: str, *, every: float = 0.05):
    for _ in range(400):
        prediction = await client.status(prediction_id)
        if prediction.terminal:
            return prediction
        await asyncio.sleep(every)
    raise AssertionError("prediction never ended")


def image_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


async def test_v16_completes_with_an_864x1296_image_and_charges_per_output(emulator):
    async with FashnClient(TEST_KEY, emulator.url) as client:
        before = (await client.credits()).total
        prediction = await until_done(client, await client.run("tryon-v1.6", inputs(emulator, num_samples=2)))
        assert prediction.status == "completed" and prediction.credits_used == 2
        assert [image_size(await client.download(url)) for url in prediction.output] == [(864, 1296)] * 2
        assert (await client.credits()).total == before - 2


async def test_statuses_progress_over_time(make_emulator):
    emulator = make_emulator(time_scale=2.0)
    async with FashnClient(TEST_KEY, emulator.url) as client:
        prediction_id = await client.run("tryon-v1.6", inputs(emulator))
        seen = [(await client.status(prediction_id)).status]
        while seen[-1] == "starting":  # polled until it moves on (a prediction takes ~2.5 s here)
            await asyncio.sleep(0.05)
            seen.append((await client.status(prediction_id)).status)
    assert set(seen) <= {"starting", "in_queue", "processing"} and seen[-1] != "starting"


async def test_latency_follows_its_mode_and_steps(make_emulator):
    # performance is 5 s; a slow model's mean by mode; from the 2nd creation x3, from the 3rd back.
    emulator = make_emulator(time_scale=1000.0, latency_jitter=0.0, latencies={"performance": 40.0},
                             latency_steps=[(1, 3.0), (2, 1.0)])
    async with FashnClient(TEST_KEY, emulator.url) as client:
        for _ in range(3):
            await client.run("tryon-v1.6", inputs(emulator))
    latencies = [record["latency"] * 1000.0 for record in emulator.predictions()]
    assert latencies == [pytest.approx(40.0), pytest.approx(120.0), pytest.approx(40.0)]


async def test_legacy_body_is_served_as_v15_at_576x864(emulator):
    async with httpx.AsyncClient(base_url=emulator.url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as http:
        answer = (await http.post("/v1/run", json=inputs(emulator, cover_feet=True))).json()
    assert answer["error"] is None
    async with FashnClient(TEST_KEY, emulator.url) as client:
        prediction = await until_done(client, answer["id"])
        assert emulator.prediction(answer["id"])["model_name"] == "tryon-v1.5"
        assert image_size(await client.download(prediction.output[0])) == (576, 864)


async def test_jpeg_and_base64_outputs(emulator):
    async with FashnClient(TEST_KEY, emulator.url) as client:
        prediction = await until_done(client, await client.run(
            "tryon-v1.6", inputs(emulator, output_format="jpeg", return_base64=True)))
        assert prediction.output[0].startswith("data:image/jpeg;base64,")
        data = await client.download(prediction.output[0])
        assert Image.open(io.BytesIO(data)).format == "JPEG"


async def test_outputs_expire(make_emulator):
    emulator = make_emulator(time_scale=20.0, cdn_retention=0.001, base64_retention=0.001)  # gone once ended
    async with FashnClient(TEST_KEY, emulator.url) as client:
        cdn = await until_done(client, await client.run("tryon-v1.6", inputs(emulator)))
        b64 = await until_done(client, await client.run("tryon-v1.6", inputs(emulator, return_base64=True, seed=1)))
        with pytest.raises(OutputExpired):
            await client.download(cdn.output[0])
        assert (await client.status(b64.id)).output == ["<base64>_expired"]


@pytest.mark.parametrize(("garment", "expected"), [
    ("/_assets/notes.txt", "Content-Type"),
    ("/_assets/missing", "answered 404"),
])
async def test_unloadable_url_fails_with_image_load_error(emulator, garment, expected):
    async with FashnClient(TEST_KEY, emulator.url) as client:
        values = inputs(emulator, garment_image=emulator.url + garment)
        prediction = await until_done(client, await client.run("tryon-v1.6", values))
    assert prediction.status == "failed" and prediction.error.name == "ImageLoadError"
    assert expected in prediction.error.message or "not a readable image" in prediction.error.message


async def test_bad_data_uri_fails_with_image_load_error(emulator):
    async with FashnClient(TEST_KEY, emulator.url) as client:
        values = inputs(emulator, garment_image="data:image/png;base64," + base64.b64encode(b"not a png").decode())
        prediction = await until_done(client, await client.run("tryon-v1.6", values))
    assert (prediction.status, prediction.error.name) == ("failed", "ImageLoadError")
    assert prediction.credits_used == 0


@pytest.mark.parametrize("name", ["ContentModerationError", "PoseError", "PipelineError", "ThirdPartyError"])
async def test_injected_failures_carry_their_name_and_retryability(make_emulator, name):
    emulator = make_emulator(faults={"fail_inputs": {"shirt": name}})
    async with FashnClient(TEST_KEY, emulator.url) as client:
        prediction = await until_done(client, await client.run("tryon-v1.6", inputs(emulator)))
    assert (prediction.status, prediction.error.name) == ("failed", name)
    assert emulator.stats()["credits_charged"] == 0


async def test_wrong_key_is_401(emulator):
    async with FashnClient("fa-wrong", emulator.url) as client:
        with pytest.raises(UnauthorizedAccess):
            await client.run("tryon-v1.6", inputs(emulator))
        with pytest.raises(UnauthorizedAccess):
            await client.credits()


async def test_invalid_inputs_are_400_naming_the_field(emulator):
    async with httpx.AsyncClient(base_url=emulator.url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as http:
        answer = await http.post("/v1/run", json={"model_name": "tryon-v1.6", "inputs": inputs(emulator, mode="turbo")})
        unknown = await http.post("/v1/run", json={"model_name": "tryon-v9", "inputs": inputs(emulator)})
    assert answer.status_code == 400 and answer.json()["error"] == "BadRequest"
    assert "mode" in answer.json()["message"] and "turbo" in answer.json()["message"]
    assert unknown.status_code == 400 and "tryon-v9" in unknown.json()["message"]
    # The client refuses the same inputs before sending anything.
    async with FashnClient(TEST_KEY, emulator.url) as client:
        with pytest.raises(Exception, match="mode"):
            await client.run("tryon-v1.6", inputs(emulator, mode="turbo"))


async def test_unknown_prediction_is_404(emulator):
    async with FashnClient(TEST_KEY, emulator.url) as client:
        with pytest.raises(NotFound):
            await client.status("no-such-prediction")


async def test_run_rate_limit_gives_rate_limit_exceeded(make_emulator):
    emulator = make_emulator(run_limit="3/60", time_scale=1.0)
    async with FashnClient(TEST_KEY, emulator.url, max_attempts=1) as client:
        for seed in range(3):
            await client.run("tryon-v1.6", inputs(emulator, seed=seed))
        with pytest.raises(RateLimitExceeded):
            await client.run("tryon-v1.6", inputs(emulator, seed=9))
    stats = emulator.stats()
    assert stats["requests"]["run"]["429:RateLimitExceeded"] == 1 and stats["most_in_window"]["run"] == 3


async def test_status_rate_limit_gives_rate_limit_exceeded(make_emulator):
    emulator = make_emulator(status_limit="2/60", time_scale=1.0)
    async with FashnClient(TEST_KEY, emulator.url, max_attempts=1) as client:
        prediction_id = await client.run("tryon-v1.6", inputs(emulator))
        await client.status(prediction_id)
        await client.status(prediction_id)
        with pytest.raises(RateLimitExceeded):
            await client.status(prediction_id)


async def test_seventh_in_flight_gives_concurrency_limit_exceeded(make_emulator):
    emulator = make_emulator(time_scale=1.0)
    async with FashnClient(TEST_KEY, emulator.url, max_attempts=1) as client:
        for seed in range(6):
            await client.run("tryon-v1.6", inputs(emulator, seed=seed))
        with pytest.raises(ConcurrencyLimitExceeded):
            await client.run("tryon-v1.6", inputs(emulator, seed=7))
    assert emulator.stats()["most_in_flight"] == 6


async def test_credits_run_out(make_emulator):
    emulator = make_emulator(keys={TEST_KEY: 3})
    async with FashnClient(TEST_KEY, emulator.url) as client:
        await client.run("tryon-v1.6", inputs(emulator, num_samples=2))
        with pytest.raises(OutOfCredits):
            await client.run("tryon-v1.6", inputs(emulator, num_samples=2, seed=1))
    assert emulator.stats()["requests"]["run"]["429:OutOfCredits"] == 1


@pytest.mark.parametrize("fault", ["server_error_after_rate", "drop_after_rate"])
async def test_client_never_resends_after_the_emulator_created_a_prediction(make_emulator, fault):
    emulator = make_emulator(faults={fault: 1.0})
    async with FashnClient(TEST_KEY, emulator.url, backoff=0.01) as client:
        with pytest.raises(AmbiguousSubmission):
            await client.run("tryon-v1.6", inputs(emulator))
    stats = emulator.stats()
    assert stats["predictions"] == 1, "the emulator did create the prediction"
    assert sum(v for k, v in stats["requests"]["run"].items() if not k.startswith(("500_", "dropped"))) <= 1
    assert list(stats["created_per_hash"].values()) == [1]


async def test_server_error_before_creating_is_still_ambiguous_to_the_client(make_emulator):
    emulator = make_emulator(faults={"server_error_before_rate": 1.0})
    async with FashnClient(TEST_KEY, emulator.url) as client:
        with pytest.raises(AmbiguousSubmission):
            await client.run("tryon-v1.6", inputs(emulator))
    assert emulator.stats()["predictions"] == 0


class WebhookReceiver:
    """A webhook endpoint on loopback (uvicorn in a thread): records every POST it gets, any path,
    and answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        from tryon.emulator.runner import _free_port

        self.statuses = list(statuses)
        self.received: list[dict] = []  # {"target": path and query as sent, "body": JSON, "at": monotonic}
        port = _free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{port}"
        app = Starlette(routes=[Route("/{path:path}", self._hook, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    async def _hook(self, request):
        from starlette.responses import JSONResponse

        query = request.scope["query_string"].decode()
        target = request.scope["raw_path"].decode() + (f"?{query}" if query else "")
        self.received.append({"target": target, "body": await request.json(), "at": time.monotonic()})
        status = self.statuses.pop(0) if self.statuses else 200
        return JSONResponse({"ok": status < 300}, status_code=status)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        """The deliveries once ``count`` have arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.received

    def __enter__(self) -> "WebhookReceiver":
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)


async def webhook_settled(emulator, prediction_id: str, timeout: float = 5.0) -> dict:
    """The prediction's record once its webhook is no longer pending."""
    deadline = time.monotonic() + timeout
    while (record := emulator.prediction(prediction_id))["webhook"] == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return record


async def test_webhook_receives_the_terminal_payload(emulator):
    with WebhookReceiver() as hooks:
        async with FashnClient(TEST_KEY, emulator.url) as client:
            prediction_id = await client.run("tryon-v1.6", inputs(emulator), webhook_url=f"{hooks.url}/hook")
            received = await hooks.wait_for(1)
        record = await webhook_settled(emulator, prediction_id)
    assert received and received[0]["body"]["id"] == prediction_id and received[0]["body"]["status"] == "completed"
    assert (record["webhook"], record["webhook_attempts"], record["webhook_answers"]) == ("delivered", 1, [200])


async def test_webhook_goes_to_the_exact_url_and_is_not_logged(emulator, caplog):
    caplog.set_level(logging.DEBUG)
    target = "/hooks/s3cr3t-T0KEN_x?item=abc&attempt=2&path=a%2Fb"
    with WebhookReceiver() as hooks:
        async with FashnClient(TEST_KEY, emulator.url) as client:
            prediction_id = await client.run("tryon-v1.6", inputs(emulator), webhook_url=hooks.url + target)
            received = await hooks.wait_for(1)
    assert [r["target"] for r in received] == [target]
    assert received[0]["body"]["id"] == prediction_id
    # The test's own client logs its /v1/run URL; the emulator must log no webhook URL.
    leaked = [r.getMessage() for r in caplog.records if r.threadName == "fashn-emulator" and "s3cr3t" in r.getMessage()]
    assert leaked == []


async def test_webhook_is_retried_on_non_2xx_until_a_2xx(make_emulator):
    emulator = make_emulator(time_scale=200.0)  # retries 20 and 40 API s apart: 0.1 s and 0.2 s
    with WebhookReceiver(statuses=(500, 500)) as hooks:
        async with FashnClient(TEST_KEY, emulator.url) as client:
            prediction_id = await client.run("tryon-v1.6", inputs(emulator), webhook_url=f"{hooks.url}/hook")
            received = await hooks.wait_for(3)
        record = await webhook_settled(emulator, prediction_id)  # delivered: no retry follows
    assert len(received) == 3 and all(r["body"] == received[0]["body"] for r in received)
    assert (record["webhook"], record["webhook_attempts"], record["webhook_answers"]) == ("delivered", 3, [500, 500, 200])
    gaps = [b["at"] - a["at"] for a, b in zip(received, received[1:])]
    assert gaps[0] > 0.05 and gaps[1] > gaps[0], gaps  # roughly the scaled schedule
    assert emulator.stats()["webhooks"] == {"sent": 3, "delivered": 1, "refused": 0, "lost": 0}


async def test_webhook_to_a_dead_receiver_is_tried_six_times_then_refused(make_emulator):
    from tryon.emulator.runner import _free_port

    emulator = make_emulator(time_scale=1000.0)  # the ~5 min schedule in 0.3 s
    async with FashnClient(TEST_KEY, emulator.url) as client:
        prediction_id = await client.run("tryon-v1.6", inputs(emulator),
                                         webhook_url=f"http://127.0.0.1:{_free_port('127.0.0.1')}/hook")
    record = await webhook_settled(emulator, prediction_id)
    assert (record["webhook"], record["webhook_answers"]) == ("refused", [0] * 6)
    assert emulator.stats()["webhooks"]["refused"] == 1


async def test_lost_webhook_is_never_sent(make_emulator):
    emulator = make_emulator(time_scale=200.0, faults={"webhook_lost_rate": 1.0})
    with WebhookReceiver() as hooks:
        async with FashnClient(TEST_KEY, emulator.url) as client:
            prediction_id = await client.run("tryon-v1.6", inputs(emulator), webhook_url=f"{hooks.url}/hook")
            await until_done(client, prediction_id, every=0.01)
            # A later prediction's webhook, sent: the lost one, due before it, would have come first.
            emulator.configure(faults={"webhook_lost_rate": 0.0})
            later = await client.run("tryon-v1.6", inputs(emulator, seed=1), webhook_url=f"{hooks.url}/later")
            received = await hooks.wait_for(1)
    record = emulator.prediction(prediction_id)
    assert [r["body"]["id"] for r in received] == [later]
    assert (record["webhook"], record["webhook_attempts"]) == ("lost", 0)
    stats = emulator.stats()
    assert stats["injected"]["webhook_lost"] == 1 and stats["webhooks"]["lost"] == 1


async def test_duplicated_webhook_arrives_twice(make_emulator):
    emulator = make_emulator(time_scale=200.0, faults={"webhook_duplicate_rate": 1.0})
    with WebhookReceiver() as hooks:
        async with FashnClient(TEST_KEY, emulator.url) as client:
            prediction_id = await client.run("tryon-v1.6", inputs(emulator), webhook_url=f"{hooks.url}/hook")
            received = await hooks.wait_for(2)
        record = await webhook_settled(emulator, prediction_id)  # both tries made: nothing follows
    assert len(received) == 2 and received[0]["body"] == received[1]["body"]
    assert received[0]["body"]["id"] == prediction_id
    assert (record["webhook"], record["webhook_attempts"], record["webhook_answers"]) == ("delivered", 2, [200, 200])
    assert emulator.stats()["injected"]["webhook_duplicated"] == 1


@pytest.mark.parametrize("fault", ["webhook_delay_rate", "webhook_out_of_order_rate"])
async def test_a_late_webhook_arrives_after_the_next_predictions(make_emulator, fault):
    # Only the first prediction gets the fault (drawn at creation); up to 200 API s late = 1 s.
    emulator = make_emulator(time_scale=200.0, latency_jitter=0.0, faults={fault: 1.0, "webhook_delay_seconds": 200.0})
    with WebhookReceiver() as hooks:
        async with FashnClient(TEST_KEY, emulator.url) as client:
            first = await client.run("tryon-v1.6", inputs(emulator), webhook_url=f"{hooks.url}/first")
            emulator.configure(faults={fault: 0.0})
            second = await client.run("tryon-v1.6", inputs(emulator, seed=1), webhook_url=f"{hooks.url}/second")
            received = await hooks.wait_for(2)
    if fault == "webhook_delay_rate":  # the seeded draw: late enough to land after the second
        assert emulator.prediction(first)["webhook_delay"] > 0.1
    assert [r["body"]["id"] for r in received] == [second, first]
    kind = {"webhook_delay_rate": "delayed", "webhook_out_of_order_rate": "out_of_order"}[fault]
    assert [emulator.prediction(p)["webhook_faults"] for p in (first, second)] == [[kind], []]
    assert emulator.stats()["injected"][f"webhook_{kind}"] == 1


def test_official_sdk_subscribe_runs_to_completed_against_the_emulator(emulator):
    from fashn import Fashn

    sdk = Fashn(api_key=TEST_KEY, base_url=emulator.url)
    result = sdk.predictions.subscribe(model_name="tryon-v1.6", inputs=inputs(emulator), poll_interval=100)  # milliseconds
    assert result.status == "completed"
    assert image_size(httpx.get(result.output[0]).content) == (864, 1296)


# -- the newer try-on models ---------------------------------------------------------------------

def product_inputs(emulator, **extra) -> dict:
    return {"product_image": f"{emulator.url}/_assets/shirt.png", "model_image": f"{emulator.url}/_assets/model.jpg",
            **extra}


def option_sets():
    """Every (model, inputs without images) the registry's option values make."""
    for resolution in ("1k", "2k", "4k"):
        for mode in ("fast", "balanced", "quality"):
            for num_images in (1, 3):
                yield "tryon-max", {"resolution": resolution, "generation_mode": mode, "num_images": num_images}
    for resolution in ("1k", "4k"):
        yield "product-to-model", {"resolution": resolution}
        yield "product-to-model", {"resolution": resolution, "aspect_ratio": "16:9"}
    for mode in ("performance", "balanced", "quality"):
        for num_samples in (1, 4):
            yield "tryon-v1.6", {"mode": mode, "num_samples": num_samples}
            yield "tryon-v1.5", {"mode": mode, "num_samples": num_samples}


def test_the_estimate_is_the_charge_or_its_stated_upper_bound():
    from tryon.emulator.conf import EmulatorConfig
    from tryon.emulator.state import State
    from tryon.models import MODELS, credits_for

    state = State(EmulatorConfig())
    for name, options in option_sets():
        charged, estimated = state.credits(name, options), credits_for(name, options)
        if MODELS[name].credits_exact:
            assert charged == estimated, (name, options)
        else:
            assert 0 < charged <= estimated, (name, options)
    assert state.credits("tryon-max", {"resolution": "1k", "generation_mode": "fast"}) == 2  # the range's ends
    assert state.credits("tryon-max", {"resolution": "4k", "generation_mode": "quality"}) == 5


async def test_tryon_max_outputs_at_the_asked_resolution_and_charges_by_options(emulator):
    async with FashnClient(TEST_KEY, emulator.url) as client:
        before = (await client.credits()).total
        prediction = await until_done(client, await client.run(
            "tryon-max", product_inputs(emulator, resolution="2k", generation_mode="fast", num_images=2)))
        assert prediction.status == "completed" and prediction.credits_used == 2 * 3
        assert [image_size(await client.download(url)) for url in prediction.output] == [(1664, 2496)] * 2
        assert (await client.credits()).total == before - 6


async def test_product_to_model_without_a_model_photo(emulator):
    async with FashnClient(TEST_KEY, emulator.url) as client:
        prediction = await until_done(client, await client.run(
            "product-to-model", {"product_image": f"{emulator.url}/_assets/shirt.png", "aspect_ratio": "1:1"}))
        assert prediction.status == "completed" and prediction.credits_used == 1
        assert [image_size(await client.download(url)) for url in prediction.output] == [(1024, 1024)]


@pytest.mark.parametrize("model_name, bad, field", [
    ("tryon-max", {"garment_image": "https://x/g.png"}, "garment_image"),  # v1.6's name for the garment
    ("tryon-max", {"resolution": "8k"}, "resolution"),
    ("tryon-max", {"mode": "quality"}, "mode"),
    ("product-to-model", {"image_prompt": "https://x/i.png"}, "image_prompt cannot be combined"),
    ("product-to-model", {"resolution": "2k"}, "resolution"),
])
async def test_new_models_answer_400_for_invalid_inputs(emulator, model_name, bad, field):
    async with httpx.AsyncClient(base_url=emulator.url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as http:
        response = await http.post("/v1/run", json={"model_name": model_name,
                                                     "inputs": product_inputs(emulator, **bad)})
    assert response.status_code == 400 and response.json()["error"] == "BadRequest"
    assert field in response.json()["message"]


async def test_new_models_fail_with_the_same_failure_names(make_emulator):
    emulator = make_emulator(faults={"fail_inputs": {"broken-shirt": "ContentModerationError"}})
    async with FashnClient(TEST_KEY, emulator.url) as client:
        bad = product_inputs(emulator, product_image=f"{emulator.url}/_assets/broken-shirt.png")
        prediction = await until_done(client, await client.run("tryon-max", bad))
        assert prediction.status == "failed" and prediction.error.name == "ContentModerationError"
        assert prediction.credits_used == 0


# -- output faults: completed and charged, but the image is bad ----------------------------------

async def test_output_faults_chosen_by_input_serve_a_blank_and_a_half_size_image(make_emulator):
    from tryon.checks import check_output

    emulator = make_emulator(time_scale=200.0,
                             faults={"output_faults": {"blank-shirt": "blank", "small-shirt": "wrong_size"}})
    async with FashnClient(TEST_KEY, emulator.url) as client:
        verdicts = {}
        for garment in ("shirt", "blank-shirt", "small-shirt"):
            values = inputs(emulator, garment_image=f"{emulator.url}/_assets/{garment}.png")
            prediction = await until_done(client, await client.run("tryon-v1.6", values))
            assert prediction.status == "completed" and prediction.credits_used == 1, "charged like any output"
            data = await client.download(prediction.output[0])
            record = emulator.prediction(prediction.id)
            assert record["output_sha256"] == [hashlib.sha256(data).hexdigest()]
            verdicts[garment] = (record["output_fault"], check_output(data, "tryon-v1.6", values))
    assert verdicts["shirt"][0] is None and verdicts["shirt"][1].ok
    fault, verdict = verdicts["blank-shirt"]
    assert fault == "blank" and [p.check for p in verdict.problems] == ["not_blank"] and verdict.size == (864, 1296)
    fault, verdict = verdicts["small-shirt"]
    assert fault == "wrong_size" and [p.check for p in verdict.problems] == ["size"] and verdict.size == (432, 648)
    assert emulator.stats()["injected"] == {"output_blank": 1, "output_wrong_size": 1}


async def test_output_fault_rates_are_seeded_and_flag_tier_sized_models_too(make_emulator):
    from tryon.checks import check_output

    def seen(emulator) -> list:
        return [record["output_fault"] for record in emulator.predictions()]

    runs = []
    for _ in range(2):  # two emulators with one seed draw the same faults
        emulator = make_emulator(seed=11, max_in_flight=12, time_scale=200.0,
                                 faults={"blank_output_rate": 0.3, "wrong_size_rate": 0.4})
        async with FashnClient(TEST_KEY, emulator.url) as client:
            ids = [await client.run("tryon-max", product_inputs(emulator, seed=n)) for n in range(12)]
            runs.append(seen(emulator))
            wrong = ids[runs[-1].index("wrong_size")]
            prediction = await until_done(client, wrong)
            data = await client.download(prediction.output[0])
    assert runs[0] == runs[1] and {"blank", "wrong_size", None} == set(runs[0]), runs[0]
    assert emulator.stats()["injected"] == {f"output_{k}": runs[0].count(k) for k in ("blank", "wrong_size")}
    verdict = check_output(data, "tryon-max", product_inputs(emulator))
    assert [p.check for p in verdict.problems] == ["size"] and verdict.size == (416, 624)
