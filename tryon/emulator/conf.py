"""What the emulator serves: keys and credits, limits, latencies, retention, and injected faults.

Every duration is in real API seconds; ``time_scale`` divides them all (latencies, rate-limit
windows, retention, slow answers), so a scale of 10 runs the API ten times faster.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from tryon.settings import Limit

LimitField = Annotated[Limit, BeforeValidator(Limit.parse)]
#: What an output fault serves in place of the rendered image: a uniform fill of the promised size
#: ("blank"), or a rendered image at half the promised size each side ("wrong_size").
OutputFault = Literal["blank", "wrong_size"]
DEFAULT_KEY = "fa-emulator-key"


class FaultConfig(BaseModel):
    """Faults to inject; probabilities in [0, 1], drawn from the emulator's seeded RNG."""

    failure_rates: dict[str, float] = Field(default_factory=dict,
                                            description="error name -> probability a prediction fails with it")
    fail_inputs: dict[str, str] = Field(default_factory=dict,
                                        description="substring of an image input -> error name it fails with")
    server_error_before_rate: float = Field(0.0, description="500 on /v1/run, nothing created")
    server_error_after_rate: float = Field(0.0, description="500 on /v1/run after creating the prediction")
    drop_before_rate: float = Field(0.0, description="connection dropped on /v1/run, nothing created")
    drop_after_rate: float = Field(0.0, description="connection dropped on /v1/run after creating")
    status_error_rate: float = Field(0.0, description="500 on /v1/status")
    slow_rate: float = Field(0.0, description="share of answers delayed by slow_seconds")
    slow_seconds: float = Field(5.0, description="delay of a slow answer (API seconds)")
    expired_output_rate: float = Field(0.0, description="share of predictions whose outputs are already gone")
    # Output faults: the prediction completes and is charged, but its images are bad.
    blank_output_rate: float = Field(0.0, description="share of predictions whose outputs are blank (a uniform fill)")
    wrong_size_rate: float = Field(0.0, description="share of predictions whose outputs are half the promised "
                                                    "size each side")
    output_faults: dict[str, OutputFault] = Field(default_factory=dict,
                                                  description="substring of an image input -> the output fault "
                                                              "its predictions get")
    # Webhook faults: drawn once per prediction with a webhook_url, when it is created.
    webhook_lost_rate: float = Field(0.0, description="share of predictions whose webhook is never sent")
    webhook_delay_rate: float = Field(0.0, description="share whose webhook is sent late, by a uniform random "
                                                       "delay in [0, webhook_delay_seconds] (so out of order "
                                                       "across predictions)")
    webhook_delay_seconds: float = Field(5.0, description="the longest webhook delay, and the longest hold of an "
                                                          "out-of-order webhook (API seconds)")
    webhook_duplicate_rate: float = Field(0.0, description="share whose webhook is sent twice: one extra POST of "
                                                           "the same body a random 0-1 API s after the first try, "
                                                           "sent whatever the first try got, never retried itself; "
                                                           "a 2xx to either stops the retries")
    webhook_out_of_order_rate: float = Field(0.0, description="share whose webhook is held until the webhook of a "
                                                              "prediction created later has been sent (at most "
                                                              "webhook_delay_seconds after it was due), so the "
                                                              "later one arrives first")


# The provider's webhook retries: after the first try, up to 5 more on a non-2xx answer or a
# transport error, these many API seconds apart (about 5 minutes in all).
WEBHOOK_RETRY_DELAYS = (20.0, 40.0, 60.0, 80.0, 100.0)
WEBHOOK_TIMEOUT = 10.0  # real seconds one webhook POST may take

DEFAULT_LATENCIES = {"performance": 5.0, "balanced": 8.0, "quality": 14.0}
# What the emulator charges per output where the registry only knows an upper bound: one point
# inside the published range (tryon-max 2-5 by resolution and generation_mode; product-to-model
# 1-5), so a plan's estimate (the bound) can exceed the charge, as it may with the provider.
ASSUMED_CREDITS = {
    "tryon-max": {f"{r}/{g}": base + (g == "quality") for r, base in (("1k", 2), ("2k", 3), ("4k", 4))
                  for g in ("fast", "balanced", "quality")},
    "product-to-model": {"1k": 1, "4k": 3},
}


class EmulatorConfig(BaseModel):
    time_scale: float = Field(1.0, gt=0)
    keys: dict[str, int] = Field(default_factory=lambda: {DEFAULT_KEY: 1_000_000},
                                 description="API key -> credits (subscription credits, spent first)")
    run_limit: LimitField = Limit(50, 60)
    status_limit: LimitField = Limit(50, 10)
    credits_limit: LimitField = Limit(30, 10)
    max_in_flight: int = 6
    latencies: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_LATENCIES),
                                        description="mean latency by mode (API seconds); modes left out keep theirs")
    legacy_speedup: float = Field(0.85, description="tryon-v1.5 latency factor")
    # Models without a mode table above take their mean latency from the registry (tryon.models).
    assumed_credits: dict[str, dict[str, int]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in ASSUMED_CREDITS.items()},
        description="model -> price-option values joined by '/' -> credits per output; an assumption "
                    "inside the published range where the provider's table is not published")
    latency_jitter: float = Field(0.25, description="latency drawn uniformly within ± this share of the mean")
    latency_steps: list[tuple[int, float]] = Field(
        default_factory=list, description="(n, factor): from the n-th prediction created (0-based, since the last "
                                          "reset) on, latencies are multiplied by factor (a provider's queue growing "
                                          "and draining); the last step reached holds")
    cdn_retention: float = 72 * 3600.0
    base64_retention: float = 3600.0
    seed: int = 0
    retry_after: bool = Field(False, description="send Retry-After on 429 RateLimitExceeded (the API may or may not)")
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("latencies")
    @classmethod
    def _fill_latencies(cls, given: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_LATENCIES, **given}

    def latency_factor(self, created: int) -> float:
        """The multiplier of the ``created``-th prediction's latency (see ``latency_steps``)."""
        factor = 1.0
        for start, step in sorted(self.latency_steps):
            if created >= start:
                factor = step
        return factor

    def scaled(self, seconds: float) -> float:
        return seconds / self.time_scale

    def limit(self, endpoint: str) -> Limit:
        return {"run": self.run_limit, "status": self.status_limit, "credits": self.credits_limit}[endpoint]
