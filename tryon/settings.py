"""Settings from the environment (and ``.env``): ``FASHN_*`` for the API, ``TRYON_*`` for the archive."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, NamedTuple

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tryon.errors import ConfigurationError

DEFAULT_BASE_URL = "https://api.fashn.ai"
#: Where outputs are archived when nothing else says (TRYON_ARCHIVE_URL, a block, a parameter).
DEFAULT_ARCHIVE_URL = "./archive"


class Limit(NamedTuple):
    """At most ``count`` requests in any window of ``seconds``."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, value: "str | Limit | tuple[int, float]") -> "Limit":
        if isinstance(value, tuple):
            return cls(int(value[0]), float(value[1]))
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s?\s*", str(value))
        if not match or int(match.group(1)) < 1 or float(match.group(2)) <= 0:
            raise ValueError(f"a limit is 'N/SECONDS' with N >= 1, for example '50/60'; got {value!r}")
        return cls(int(match.group(1)), float(match.group(2)))

    def scaled(self, time_scale: float) -> "Limit":
        """The same count in a window ``time_scale`` times shorter (for the emulator's fast clock)."""
        return Limit(self.count, self.seconds / time_scale)

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"


# NoDecode: the env value is the 'N/SECONDS' string, not JSON.
LimitSetting = Annotated[Limit, NoDecode]

# The limits a FASHN key is granted by default: the one source for FashnSettings, the
# FashnCredentials block and TrafficController's defaults.
DEFAULT_RUN_LIMIT = Limit(50, 60)
DEFAULT_STATUS_LIMIT = Limit(50, 10)
DEFAULT_CREDITS_LIMIT = Limit(30, 10)
DEFAULT_MAX_IN_FLIGHT = 6


class FashnSettings(BaseSettings):
    """How to reach one FASHN API key, and the limits it was granted."""

    model_config = SettingsConfigDict(env_prefix="FASHN_", env_file=".env", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(None, description="API key (fa-...). Never logged.")
    base_url: str = Field(DEFAULT_BASE_URL, description="API base URL; point it at `tryon emulator` for tests.")
    run_limit: LimitSetting = Field(DEFAULT_RUN_LIMIT, description="POST /v1/run requests per window, as N/SECONDS.")
    status_limit: LimitSetting = Field(DEFAULT_STATUS_LIMIT, description="GET /v1/status requests per window, as N/SECONDS.")
    credits_limit: LimitSetting = Field(DEFAULT_CREDITS_LIMIT, description="GET /v1/credits requests per window, as N/SECONDS.")
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, description="Predictions running at once for this key.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to open a connection.")
    submit_timeout: float = Field(120.0, gt=0, description="Seconds to wait for POST /v1/run (large base64 bodies are slow).")
    request_timeout: float = Field(30.0, gt=0, description="Seconds to wait for other requests.")
    prediction_timeout: float = Field(600.0, gt=0, description="Seconds a prediction may take before it is given up.")
    share_staleness: float | None = Field(
        None, gt=0, description="Seconds a process sharing the key may go on from its last count of the others "
                                "(D; default: a sixth of the longest window, at least 1 s). A join or leave costs "
                                "the longest window plus D.")
    max_resubmits: int = Field(2, ge=0, description="Times an item is submitted again after a retryable failure.")
    resubmit_ambiguous: bool = Field(
        True, description="After an ambiguous answer to a submission (5xx, dropped connection after sending), submit "
                          "once more and flag a possible duplicate charge (True), or fail the item with that reason "
                          "(False): the API cannot find a prediction whose id never arrived.")
    max_credits: int | None = Field(
        None, ge=1, validation_alias="TRYON_MAX_CREDITS",
        description="Credits a run (a backfill: all its collections) may be charged at most, ambiguous answers "
                    "counted at their worst; a run whose plan is above it does not start. Unset: no limit.")

    @field_validator("run_limit", "status_limit", "credits_limit", mode="before")
    @classmethod
    def _parse_limit(cls, value: object) -> Limit:
        return Limit.parse(value)  # type: ignore[arg-type]

    def require_api_key(self) -> SecretStr:
        """The key, or a clear error before anything is spent."""
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise ConfigurationError(
                "No FASHN API key: set FASHN_API_KEY (or use a FashnCredentials block). "
                "Nothing was submitted."
            )
        return self.api_key

    def key_fingerprint(self) -> str:
        """A short, non-reversible name for the key (safe for logs and limit names)."""
        return hashlib.sha256(self.require_api_key().get_secret_value().encode()).hexdigest()[:12]


class ArchiveSettings(BaseSettings):
    """Where outputs are archived: any fsspec URL (s3://, file://, or a local path)."""

    model_config = SettingsConfigDict(env_prefix="TRYON_", env_file=".env", extra="ignore")

    archive_url: str = Field(DEFAULT_ARCHIVE_URL, description="fsspec URL or local path of the archive root.")
    reuse: bool = Field(True, description="An item another collection archived with the same key (model name and "
                                          "inputs) is copied from there and verified, for 0 credits, instead of "
                                          "paid for again.")

    run_lease: float = Field(60.0, gt=0, description="Seconds a run's lease in the archive lasts unless renewed "
                                                     "(every third of it): how long after a run is killed the "
                                                     "reconciler may finish what it left pending.")

class WebhookSettings(BaseSettings):
    """Where the provider reaches our webhook receiver (``TRYON_WEBHOOK_*``); nothing set: polling only."""

    model_config = SettingsConfigDict(env_prefix="TRYON_WEBHOOK_", env_file=".env", extra="ignore")

    url: str | None = Field(None, description="Public base URL of the receiver, as the provider reaches it "
                                              "(default with LISTEN: http://LISTEN).")
    secret: SecretStr | None = Field(None, description="Signs each callback URL's path token; shared by the receiver "
                                                       "and the flows (default with LISTEN: random per process). "
                                                       "Never logged.")
    listen: str | None = Field(None, description="HOST:PORT: the process running the collection also runs the "
                                                 "receiver there.")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", value.strip()):
            raise ValueError(f"TRYON_WEBHOOK_LISTEN is HOST:PORT, for example 127.0.0.1:8788; got {value!r}")
        return value.strip() if value else None

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.listen)

    @property
    def address(self) -> tuple[str, int] | None:
        """Where to listen in-process (LISTEN), or None."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def base_url(self, bound: tuple[str, int] | None = None) -> str:
        """The URL the provider is given; ``bound``: the address actually bound (LISTEN with port 0)."""
        if self.url:
            return self.url.rstrip("/")
        host, port = bound or self.address or ("", 0)
        return f"http://{host}:{port}"

    def require_secret(self) -> SecretStr:
        """The secret, or a clear error: a receiver in another process must share the flows' secret."""
        if self.secret is None or not self.secret.get_secret_value().strip():
            raise ConfigurationError(
                "TRYON_WEBHOOK_SECRET is not set: the receiver and the flows it serves need the same one "
                "(any long random string). Nothing was submitted.")
        return self.secret
