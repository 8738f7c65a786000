"""Where Prefect's API is and how a request to it authenticates: settings read without Prefect (the
environment over the active profile), credentials as Prefect's client sends them, and its CSRF
token against a scripted server (httpx.MockTransport); over a real server in tests/test_share.py."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from flows.prefect_api import PrefectApi

API = "http://prefect.example:4200/api"


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    """A profiles file under a fresh PREFECT_HOME, and no PREFECT_* setting from the environment."""
    for name in ("PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_API_URL", "PREFECT_API_KEY",
                 "PREFECT_API_AUTH_STRING", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "PREFECT_API_SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    path = tmp_path / "profiles.toml"
    path.write_text(f'active = "work"\n[profiles.work]\nPREFECT_API_URL = "{API}"\nPREFECT_API_KEY = "pnu_work"\n'
                    'PREFECT_API_TLS_INSECURE_SKIP_VERIFY = "true"\n'
                    '[profiles.local]\n[profiles.other]\nPREFECT_API_URL = "http://other:4200/api"\n')
    return path


def test_the_active_profile_s_server_is_found_without_prefect(profiles, monkeypatch):
    api = PrefectApi.from_environment()
    assert api.url == API and api.key.get_secret_value() == "pnu_work" and api.verify() is False
    monkeypatch.setenv("PREFECT_PROFILE", "local")
    assert PrefectApi.from_environment() is None, "a profile without a server: the embedded one"
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    assert PrefectApi.from_environment().url == "http://other:4200/api"
    profiles.unlink()
    assert PrefectApi.from_environment() is None


def test_the_environment_wins_over_the_profile_and_an_auth_string_over_a_key(profiles, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "https://mine.example/api")
    monkeypatch.setenv("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "false")
    api = PrefectApi.from_environment()
    assert api.url == "https://mine.example/api" and api.verify() is True
    assert api.authorization() == "Bearer pnu_work", "the profile's key, where the environment sets none"
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:s3cret")
    api = PrefectApi.from_environment()
    assert api.authorization() == "Basic " + base64.b64encode(b"admin:s3cret").decode()
    assert "s3cret" not in repr(api) and "pnu_work" not in repr(api) and "s3cret" not in str(api)


class Server:
    """A Prefect API as far as its CSRF token goes: ``csrf`` "on", "off" (422) or "old" (404)."""

    def __init__(self, csrf: str = "on", lifetime: timedelta = timedelta(hours=1)) -> None:
        self.csrf, self.lifetime = csrf, lifetime
        self.tokens: dict[str, str] = {}  # client -> its valid token
        self.requests: list[httpx.Request] = []
        self.issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/api/csrf-token":
            if self.csrf == "old":
                return httpx.Response(404, json={"detail": "Not Found"})
            if self.csrf == "off":
                return httpx.Response(422, json={"detail": "CSRF protection is disabled."})
            self.issued += 1
            client = request.url.params["client"]
            self.tokens[client] = f"token-{self.issued}"
            expiration = datetime.now(timezone.utc) + self.lifetime
            return httpx.Response(200, json={"token": self.tokens[client], "client": client,
                                             "expiration": expiration.isoformat()})
        if self.csrf == "on" and request.method == "POST":
            token = request.headers.get("Prefect-Csrf-Token")
            if token is None or self.tokens.get(request.headers.get("Prefect-Csrf-Client")) != token:
                return httpx.Response(403, json={"detail": "Invalid CSRF token or client identifier."})
        return httpx.Response(200, json={"ok": True})

    def token_requests(self) -> int:
        return sum(1 for r in self.requests if r.url.path == "/api/csrf-token")


def client(server: Server) -> httpx.AsyncClient:
    api = PrefectApi(url=API, auth_string="admin:s3cret")
    return api.client(transport=httpx.MockTransport(server))


async def test_changes_carry_the_client_s_csrf_token_and_every_request_the_credentials():
    server = Server()
    async with client(server) as c:
        (await c.get("/v2/concurrency_limits/x")).raise_for_status()
        assert server.token_requests() == 0, "a read needs no token"
        for _ in range(2):
            (await c.post("/v2/concurrency_limits/", json={"name": "x", "limit": 1})).raise_for_status()
    assert server.token_requests() == 1, "fetched once, then reused"
    assert all(r.headers["Authorization"] == "Basic " + base64.b64encode(b"admin:s3cret").decode()
               for r in server.requests)
    first, second = [r for r in server.requests if r.method == "POST"]
    assert first.headers["Prefect-Csrf-Client"] == second.headers["Prefect-Csrf-Client"]
    assert json.loads(second.content) == {"name": "x", "limit": 1}


async def test_an_expired_or_refused_token_is_fetched_again():
    server = Server(lifetime=timedelta(seconds=-1))  # expired as soon as issued
    async with client(server) as c:
        for _ in range(2):
            (await c.post("/v2/concurrency_limits/", json={})).raise_for_status()
        assert server.token_requests() == 2, "an expired token is not sent"
        server.lifetime = timedelta(hours=1)
        (await c.post("/v2/concurrency_limits/", json={})).raise_for_status()
        server.tokens.clear()  # the server forgot it
        (await c.post("/v2/concurrency_limits/", json={})).raise_for_status()
    assert server.token_requests() == 4
    assert [r.url.path for r in server.requests[-3:]] == ["/api/v2/concurrency_limits/", "/api/csrf-token",
                                                          "/api/v2/concurrency_limits/"], "refused, then resent once"


@pytest.mark.parametrize("csrf", ["off", "old"])
async def test_a_server_without_csrf_protection_is_sent_no_token(csrf):
    server = Server(csrf)
    async with client(server) as c:
        for _ in range(2):
            (await c.post("/v2/concurrency_limits/", json={})).raise_for_status()
    assert server.token_requests() == 1, "asked once"
    assert not any("Prefect-Csrf-Token" in r.headers for r in server.requests)
