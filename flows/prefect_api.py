"""Where a Prefect server's REST API is and how to authenticate to it (:class:`PrefectApi`), and an
httpx client to it that authenticates as Prefect's own client does (:class:`PrefectAuth`).

The key's membership (:mod:`flows.coordination`) needs a few calls and nothing else of Prefect:
made with httpx, they need no import of Prefect's client, which costs a terminal run more than a
second before its first submission. The settings are Prefect's: read from its settings where
Prefect is loaded anyway, else from the environment and the active profile without importing it.
"""

from __future__ import annotations

import base64
import os
import ssl
import tomllib
import uuid
from collections.abc import Generator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, SecretStr

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # the requests a CSRF token guards


class PrefectApi(BaseModel, frozen=True):
    """A Prefect server's API: its URL, credentials and TLS settings (``PREFECT_API_*``)."""

    url: str
    auth_string: SecretStr | None = None  # basic auth (a self-hosted server's); used over ``key``
    key: SecretStr | None = None  # a bearer token (Prefect Cloud's API key)
    tls_insecure_skip_verify: bool = False
    ssl_cert_file: str | None = None  # else httpx's default (certifi, or SSL_CERT_FILE as Prefect)

    @classmethod
    def from_settings(cls) -> PrefectApi | None:
        """From Prefect's settings; None without an API URL (the server embedded in the process)."""
        from prefect.settings import get_current_settings

        api = get_current_settings().api
        return cls.model_validate(api.model_dump(include=set(cls.model_fields))) if api.url else None

    @classmethod
    def from_environment(cls) -> PrefectApi | None:
        """From ``PREFECT_API_*`` in the environment, else in the active profile, read without importing
        Prefect (before its settings are fixed); None without an API URL."""
        profile = active_profile()
        values = {field: os.environ.get(f"PREFECT_API_{field.upper()}") or profile.get(f"PREFECT_API_{field.upper()}")
                  for field in cls.model_fields}
        return cls.model_validate({k: v for k, v in values.items() if v is not None}) if values["url"] else None

    def authorization(self) -> str | None:
        """The ``Authorization`` header Prefect's client sends: basic with the auth string, else bearer."""
        if self.auth_string is not None:
            return "Basic " + base64.b64encode(self.auth_string.get_secret_value().encode()).decode()
        return f"Bearer {self.key.get_secret_value()}" if self.key is not None else None

    def verify(self) -> ssl.SSLContext | bool:
        if self.tls_insecure_skip_verify:
            return False
        return ssl.create_default_context(cafile=self.ssl_cert_file) if self.ssl_cert_file else True

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client to the API (``kwargs``: httpx's, such as ``timeout`` or ``transport``)."""
        return httpx.AsyncClient(base_url=self.url, auth=PrefectAuth(self), verify=self.verify(),
                                 follow_redirects=True, **kwargs)


def active_profile() -> dict[str, Any]:
    """The settings of the active Prefect profile (``PREFECT_PROFILE``, else the profiles file's
    ``active``): ``{}`` without a profiles file or such a profile."""
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "")
    return data.get("profiles", {}).get(active, {})


class PrefectAuth(httpx.Auth):
    """Prefect's credentials on every request, and on each change (POST, PUT, PATCH, DELETE) the CSRF
    token of this client, which a server with CSRF protection requires: fetched from
    ``/csrf-token`` when missing or expired, and again once when the server calls it invalid. A
    server that has no such endpoint (404) or protection (422) is sent none from then on."""

    requires_response_body = True  # the token, and why a change was refused

    def __init__(self, api: PrefectApi) -> None:
        self._authorization = api.authorization()
        self._token_url = httpx.URL(api.url.rstrip("/") + "/csrf-token")
        self.client_id = str(uuid.uuid4())
        self.csrf = True  # the server may ask for a token
        self._token: str | None = None
        self._expires = datetime.min.replace(tzinfo=timezone.utc)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._authorize(request)
        change = request.method in CHANGES
        if change and self.csrf:
            yield from self._sign(request)
        response = yield request
        if change and self.csrf and response.status_code == 403 and "Invalid CSRF token" in response.text:
            self._token = None  # expired on the server's clock, or forgotten by it
            yield from self._sign(request)
            yield request

    def _authorize(self, request: httpx.Request) -> None:
        if self._authorization is not None:
            request.headers["Authorization"] = self._authorization

    def _sign(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None or datetime.now(timezone.utc) >= self._expires:
            ask = httpx.Request("GET", self._token_url, params={"client": self.client_id})
            self._authorize(ask)
            answer = yield ask
            disabled = answer.status_code == 422 and "CSRF protection is disabled." in answer.text
            if answer.status_code == 404 or disabled:  # an older server, or one without the protection
                self.csrf = False
                return
            answer.raise_for_status()
            token = answer.json()
            self._token, self._expires = token["token"], datetime.fromisoformat(token["expiration"])
        request.headers["Prefect-Csrf-Token"] = self._token
        request.headers["Prefect-Csrf-Client"] = self.client_id
