"""Webhooks: the callback URL and its token, the inbox's verdicts, the receiver's answers to bad
deliveries (a real HTTP server on loopback for the flood), and the scheduler's confirmation
and fallback polls on a fake clock."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from pydantic import SecretStr

from tests.test_traffic import FakeServer, teach
from tryon.settings import WebhookSettings
from tryon.traffic import FakeClock, TrafficController
from tryon.webhooks import Delivery, WebhookInbox, callback_url, create_receiver, serve, token_for

SECRET = SecretStr("s3cret-canary-value")
PROFILE = ("tryon-v1.6", "balanced")


def test_the_callback_url_carries_a_token_of_its_query_and_never_the_secret():
    url = httpx.URL(callback_url("https://hooks.example.com/tryon/", SECRET, "r1", "key1", 2))
    assert url.path == f"/tryon/{token_for(SECRET, 'r1', 'key1', 2)}"
    assert dict(url.params) == {"run": "r1", "item": "key1", "attempt": "2"}
    assert SECRET.get_secret_value() not in str(url)
    assert token_for(SECRET, "r1", "key1", 2) != token_for(SECRET, "r1", "key1", 3)
    assert token_for(SECRET, "r1", "key1", 2) != token_for(SecretStr("other"), "r1", "key1", 2)


def test_a_delivery_round_trips_and_refuses_what_is_not_one():
    delivery = Delivery("r1", "key1", 2, "p1", "completed")
    assert Delivery.from_dict(delivery.as_dict()) == delivery
    for bad in ([], {"run": "r1"}, {**delivery.as_dict(), "attempt": "2"}, {**delivery.as_dict(), "attempt": True},
                {**delivery.as_dict(), "prediction_id": ""}):
        with pytest.raises(ValueError):
            Delivery.from_dict(bad)


def test_webhook_settings():
    assert not WebhookSettings().enabled
    listen = WebhookSettings(listen="127.0.0.1:0")
    assert listen.enabled and listen.address == ("127.0.0.1", 0)
    assert listen.base_url(("127.0.0.1", 4567)) == "http://127.0.0.1:4567"
    assert WebhookSettings(url="https://h.example/x/", listen="0.0.0.0:80").base_url() == "https://h.example/x"
    with pytest.raises(ValueError, match="HOST:PORT"):
        WebhookSettings(listen="nonsense")
    from tryon.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="TRYON_WEBHOOK_SECRET"):
        WebhookSettings(url="https://h.example").require_secret()


async def test_the_inbox_accepts_each_expected_submission_once():
    inbox, heard = WebhookInbox(), []
    inbox.expect("r1", "k", 1, heard.append)
    first = Delivery("r1", "k", 1, "p1", "completed")
    assert inbox.deliver(first) == "accepted" and heard == [first]
    assert inbox.deliver(first) == "duplicate"                                       # the provider's retry
    assert inbox.deliver(Delivery("r1", "k", 1, "p2", "completed")) == "unexpected"  # another prediction
    assert inbox.deliver(Delivery("r2", "k", 1, "p1", "completed")) == "unexpected"  # another run
    assert inbox.deliver(Delivery("r1", "k", 2, "p1", "completed")) == "unexpected"  # never submitted
    assert inbox.bind("r1", "k", 1, "p1") == first                                   # it beat the answer
    assert heard == [first]

    inbox.expect("r1", "k", 2)
    inbox.bind("r1", "k", 2, "p3")
    assert inbox.deliver(Delivery("r1", "k", 2, "p9", "completed")) == "unexpected"  # not the bound one
    assert inbox.delivered("r1", "k", 2) is None
    inbox.forget("r1", "k")
    assert inbox.deliver(Delivery("r1", "k", 2, "p3", "completed")) == "unexpected" and len(inbox) == 0
    assert inbox.verdicts == {"accepted": 1, "duplicate": 1, "unexpected": 5}


async def test_the_inbox_wait_returns_the_delivery_or_none_after_the_timeout():
    inbox = WebhookInbox()
    inbox.expect("r1", "k", 1)
    waiter = asyncio.ensure_future(inbox.wait("r1", "k", 1, timeout=30))
    await asyncio.sleep(0)
    inbox.deliver(Delivery("r1", "k", 1, "p1", "completed"))
    assert (await waiter).prediction_id == "p1"
    inbox.expect("r1", "k", 2)
    assert await inbox.wait("r1", "k", 2, timeout=0.01) is None


def hook_url(run="r1", item="k", attempt=1, *, token=None) -> str:
    token = token if token is not None else token_for(SECRET, run, item, attempt)
    return f"http://receiver/hooks/{token}?run={run}&item={item}&attempt={attempt}"


async def test_the_receiver_answers_each_bad_delivery_and_nothing_changes_state():
    inbox = WebhookInbox()
    inbox.expect("r1", "k", 1)
    inbox.bind("r1", "k", 1, "p1")
    app = create_receiver(SECRET, inbox.deliver, max_body=1024)
    body = {"id": "p1", "status": "completed", "output": ["https://cdn/x.png"]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        cases = [
            ("http://receiver/hooks/", body, 404),                              # no token
            (hook_url(token="0" * 32), body, 404),                              # a token we never made
            (hook_url().split("?")[0], body, 404),                              # no query
            (hook_url(attempt=2).replace("attempt=2", "attempt=1"), body, 404),  # a token of another query
            (hook_url(), b"x" * 2000, 413),
            (hook_url(), b"not json", 400),
            (hook_url(), ["a", "list"], 400),
            (hook_url(), {"id": "p1"}, 400),
            (hook_url(), {"id": "p2", "status": "completed"}, 404),             # a prediction we never started
            (hook_url(item="other"), body, 404),                                # an item we do not wait for
        ]
        for url, payload, code in cases:
            content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            response = await http.post(url, content=content)
            assert response.status_code == code, (url, payload)
            assert response.content == b"", "no detail for a refusal"
        assert inbox.delivered("r1", "k", 1) is None
        assert (await http.post(hook_url(), json=body)).status_code == 200
        assert (await http.post(hook_url(), json=body)).status_code == 200  # the retry of a delivery taken
    assert inbox.delivered("r1", "k", 1).prediction_id == "p1"
    assert app.state.stats == {"unknown_token": 4, "too_large": 1, "not_json": 1, "malformed": 2,
                               "unexpected": 2, "accepted": 1, "duplicate": 1}


async def test_a_handler_that_fails_gets_a_503_so_the_provider_retries():
    def broken(delivery):
        raise RuntimeError("the events server is down")

    app = create_receiver(SECRET, broken)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        response = await http.post(hook_url(), json={"id": "p1", "status": "completed"})
    assert response.status_code == 503 and app.state.stats == {"failed": 1}


async def test_the_served_receiver_is_bounded_under_a_flood():
    release = asyncio.Event()
    entered = 0

    async def slow(delivery):
        nonlocal entered
        entered += 1
        await release.wait()
        return "published"

    async with serve(create_receiver(SECRET, slow), "127.0.0.1", 0, limit_concurrency=4) as (host, port):
        url = hook_url().replace("http://receiver", f"http://{host}:{port}")
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(limits=limits, timeout=10) as http:
            flood = [asyncio.ensure_future(http.post(url, json={"id": "p1", "status": "completed"}))
                     for _ in range(30)]
            refused = [f for f in asyncio.as_completed(flood)]
            codes = []
            for future in refused[:26]:  # all but the (at most) four being handled answer at once
                codes.append((await future).status_code)
            release.set()
            codes += [(await f).status_code for f in refused[26:]]
            assert codes.count(503) >= 26 - 4 and entered <= 4
            assert (await http.post(url, json={"id": "p1", "status": "completed"})).status_code == 200


# -- the scheduler with webhooks (fake clock) -------------------------------------------------
async def test_a_pushed_prediction_is_confirmed_at_its_hint_and_polled_only_late_without_one():
    clock = FakeClock()
    controller = TrafficController(clock=clock)
    teach(controller, PROFILE, 8.0)
    server = FakeServer(clock, controller)
    tail = controller.latency.quantile(PROFILE, 0.98)

    async def hinted() -> None:
        server.submit("hinted", 8.0)
        waiting = asyncio.ensure_future(controller.wait("hinted", profile=PROFILE, poll=server.poll, pushed=True))
        await clock.sleep(8.0)
        assert not server.polls["hinted"], "a pushed prediction is not polled before its webhook"
        assert controller.hint("hinted")
        answer = await waiting
        assert answer.status == "completed" and server.polls["hinted"] == [8.0]

    async def lost() -> None:  # its webhook never comes: the fallback finds it past the tail
        server.submit("lost", 8.0)
        await controller.wait("lost", profile=PROFILE, poll=server.poll, pushed=True)
        assert len(server.polls["lost"]) == 1 and tail < server.polls["lost"][0] - 100.0 <= 1.3 * tail

    await clock.run(hinted())
    await clock.advance(100.0 - clock.now())
    await clock.run(lost())
    assert not controller.hint("lost"), "a hint for a prediction no longer waited on changes nothing"
