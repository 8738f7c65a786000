"""Typed requests and answers of the FASHN API, and the input schema of each model name.

Adding a model name means adding an input schema to :data:`INPUT_SCHEMAS`, nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Status = Literal["starting", "in_queue", "processing", "completed", "failed", "canceled", "time_out"]
TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled", "time_out"})
IMAGE_FIELDS = ("model_image", "garment_image")


class TryonV16Inputs(BaseModel):
    """Inputs of ``tryon-v1.6``; defaults are the server's."""

    model_config = ConfigDict(extra="forbid")

    model_image: str = Field(min_length=1, description="Image URL, data URI or saved:<name>.")
    garment_image: str = Field(min_length=1, description="Image URL or data URI.")
    category: Literal["auto", "tops", "bottoms", "one-pieces"] = "auto"
    segmentation_free: bool = True
    moderation_level: Literal["conservative", "permissive", "none"] = "permissive"
    garment_photo_type: Literal["auto", "flat-lay", "model"] = "auto"
    mode: Literal["performance", "balanced", "quality"] = "balanced"
    seed: int = Field(42, ge=0, le=4294967295)
    num_samples: int = Field(1, ge=1, le=4, description="Outputs per prediction; credits are charged per output.")
    output_format: Literal["png", "jpeg"] = "png"
    return_base64: bool = False

    @field_validator("garment_image")
    @classmethod
    def _garment_not_saved(cls, value: str) -> str:
        if value.startswith("saved:"):
            raise ValueError("saved:<name> is only accepted for model_image")
        return value


class TryonV15Inputs(TryonV16Inputs):
    """Inputs of ``tryon-v1.5``: the v1.6 set, plus older flags the server accepts and ignores."""

    cover_feet: bool | None = None
    adjust_hands: bool | None = None
    restore_background: bool | None = None
    restore_clothes: bool | None = None
    long_top: bool | None = None
    nsfw_filter: bool | None = None
    flat_lay: bool | None = None
    guidance_scale: float | None = None
    timesteps: int | None = None


INPUT_SCHEMAS: dict[str, type[TryonV16Inputs]] = {
    "tryon-v1.6": TryonV16Inputs,
    "tryon-v1.5": TryonV15Inputs,
}
LEGACY_MODEL_NAME = "tryon-v1.5"
OUTPUT_SIZES = {"tryon-v1.6": (864, 1296), "tryon-v1.5": (576, 864)}


def input_schema(model_name: str) -> type[TryonV16Inputs]:
    """The input schema for ``model_name``; ``KeyError`` names the known ones."""
    try:
        return INPUT_SCHEMAS[model_name]
    except KeyError:
        raise KeyError(f"unknown model_name {model_name!r}; known: {', '.join(sorted(INPUT_SCHEMAS))}") from None


def validate_inputs(model_name: str, inputs: dict[str, Any]) -> TryonV16Inputs:
    """Validate ``inputs`` for ``model_name`` (raises ``KeyError`` or ``pydantic.ValidationError``)."""
    return input_schema(model_name).model_validate(inputs)


class RunRequest(BaseModel):
    """A ``POST /v1/run`` body; from :meth:`FashnClient.prepare_run`, images already encoded."""

    model_name: str
    inputs: dict[str, Any]

    def __repr__(self) -> str:  # the inputs may hold megabytes of base64
        return f"RunRequest({self.model_name!r}, fields={sorted(self.inputs)})"

    __str__ = __repr__


class RunResponse(BaseModel):
    id: str | None = None
    error: str | None = None


class PredictionError(BaseModel):
    name: str = "UnknownError"
    message: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        # Some answers carry the error as a bare string.
        return {"name": "UnknownError", "message": value} if isinstance(value, str) else value


class Prediction(BaseModel):
    """One answer of ``GET /v1/status/{id}``."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: Status
    output: list[str] = Field(default_factory=list)
    error: PredictionError | None = None
    credits_used: int | None = Field(None, description="From the x-fashn-credits-used header on terminal answers.")

    @field_validator("output", mode="before")
    @classmethod
    def _parse_output(cls, value: Any) -> list[str]:
        # Parse defensively: a list of URLs, {"images": [...]}, a bare string or null.
        if value is None:
            return []
        if isinstance(value, dict):
            value = value.get("images") or value.get("output") or []
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class CreditBalance(BaseModel):
    total: int
    subscription: int = 0
    on_demand: int = 0


class CreditsResponse(BaseModel):
    credits: CreditBalance
