"""The ``FashnCredentials`` block: one API key, where it points, and the limits it was granted."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tryon.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_CREDITS_LIMIT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RUN_LIMIT,
    DEFAULT_STATUS_LIMIT,
    FashnSettings,
)


class FashnCredentials(Block):
    """An API key for FASHN and the limits the provider granted it.

    Example:
        Save once (``FashnCredentials(api_key="fa-...").save("BLOCK_NAME")``), then name the block in
        a flow run or deployment, or load it::

            from blocks import FashnCredentials
            credentials = FashnCredentials.load("BLOCK_NAME")
            settings = credentials.settings()
    """

    _block_type_name = "FASHN Credentials"
    _block_type_slug = "fashn-credentials"
    _logo_url = "https://raw.githubusercontent.com/tryon-flows/tryon-flows/main/blocks/logo.png"
    _documentation_url = "https://github.com/tryon-flows/tryon-flows/blob/main/docs/operations.md#blocks"
    _description = "API key, base URL and rate limits of one FASHN API key."

    api_key: SecretStr = Field(description="The FASHN API key (fa-...). Stored encrypted; never logged.")
    base_url: str = Field(DEFAULT_BASE_URL, description="API base URL (the emulator's URL in tests).")
    run_limit: str = Field(str(DEFAULT_RUN_LIMIT), description="POST /v1/run requests allowed per window, as N/SECONDS.")
    status_limit: str = Field(str(DEFAULT_STATUS_LIMIT), description="GET /v1/status requests allowed per window, as N/SECONDS.")
    credits_limit: str = Field(str(DEFAULT_CREDITS_LIMIT), description="GET /v1/credits requests allowed per window, as N/SECONDS.")
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, description="Predictions the key may have running at once.")
    max_credits: int | None = Field(None, ge=1, description="Default spend limit of a run on this key, in credits "
                                                            "(a run's max_credits overrides it). Empty: "
                                                            "TRYON_MAX_CREDITS, else no limit.")

    def settings(self) -> FashnSettings:
        """These credentials as :class:`tryon.settings.FashnSettings` (timeouts from the environment)."""
        return FashnSettings(
            api_key=self.api_key, base_url=self.base_url, run_limit=self.run_limit,
            status_limit=self.status_limit, credits_limit=self.credits_limit, max_in_flight=self.max_in_flight,
            **({} if self.max_credits is None else {"max_credits": self.max_credits}),
        )
