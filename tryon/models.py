"""Typed requests and answers of the FASHN API, and the registry of model names.

:data:`MODELS` is the one source of what a model name means: its input schema, output size,
published latency per mode, credits per output and the modes it accepts. Adding a model name
means adding a :class:`ModelSpec` to it, nothing else; :data:`INPUT_SCHEMAS`,
:data:`OUTPUT_SIZES`, :data:`LEGACY_MODEL_NAME`, the flow forms' choices (``flows.params``) and
the poll scheduler's priors (``tryon.traffic.latency``) are derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Status = Literal["starting", "in_queue", "processing", "completed", "failed", "canceled", "time_out"]
TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled", "time_out"})
IMAGE_FIELDS = ("model_image", "garment_image")

#: Every generation mode, fastest first; a model's accepted modes come from its schema's ``mode``.
MODES = ("performance", "balanced", "quality")
DEFAULT_MODE = "balanced"
ModeLiteral = Literal[MODES]  # type: ignore[valid-type]  # Literal["performance", "balanced", "quality"]
#: The provider's published seconds per prediction, per mode.
PUBLISHED_LATENCY: Mapping[str, float] = MappingProxyType({"performance": 5.0, "balanced": 8.0, "quality": 14.0})


class TryonV16Inputs(BaseModel):
    """Inputs of ``tryon-v1.6``; defaults are the server's."""

    model_config = ConfigDict(extra="forbid")

    model_image: str = Field(min_length=1, description="Image URL, data URI or saved:<name>.")
    garment_image: str = Field(min_length=1, description="Image URL or data URI.")
    category: Literal["auto", "tops", "bottoms", "one-pieces"] = "auto"
    segmentation_free: bool = True
    moderation_level: Literal["conservative", "permissive", "none"] = "permissive"
    garment_photo_type: Literal["auto", "flat-lay", "model"] = "auto"
    mode: ModeLiteral = DEFAULT_MODE
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


@dataclass(frozen=True)
class ModelSpec:
    """What one model name means: everything the client, the emulator, the forms and the
    traffic controller need to know about it."""

    name: str
    inputs: type[TryonV16Inputs]
    output_size: tuple[int, int]  # (width, height) px of each output
    latency_prior: Mapping[str, float] = field(default_factory=lambda: PUBLISHED_LATENCY)  # seconds per mode
    credits_per_output: int = 1
    legacy: bool = False  # the model a body without ``model_name`` (the old API) is for

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes its input schema accepts."""
        return tuple(get_args(self.inputs.model_fields["mode"].annotation))

    def credits(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> int:
        """Credits one prediction with ``inputs`` costs at most: ``num_samples`` × per-output credits."""
        if isinstance(inputs, BaseModel):
            num_samples = getattr(inputs, "num_samples")
        else:
            num_samples = (inputs or {}).get("num_samples", self.inputs.model_fields["num_samples"].default)
        return int(num_samples) * self.credits_per_output

    def prior(self, mode: str | None) -> float:
        """Published seconds for ``mode`` (the default mode's for an unknown one)."""
        prior = self.latency_prior
        return prior.get(mode or DEFAULT_MODE, prior.get(DEFAULT_MODE, PUBLISHED_LATENCY[DEFAULT_MODE]))


_SPECS = (
    ModelSpec("tryon-v1.6", TryonV16Inputs, output_size=(864, 1296)),
    ModelSpec("tryon-v1.5", TryonV15Inputs, output_size=(576, 864), legacy=True),
)
#: The registry: model name -> :class:`ModelSpec`; the first is the default.
MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
DEFAULT_MODEL_NAME = _SPECS[0].name
LEGACY_MODEL_NAME = next(spec.name for spec in _SPECS if spec.legacy)
#: Every mode some model accepts, in :data:`MODES` order.
ACCEPTED_MODES = tuple(m for m in MODES if any(m in spec.modes for spec in _SPECS))

# Derived views, kept for the modules that import them.
INPUT_SCHEMAS: dict[str, type[TryonV16Inputs]] = {name: spec.inputs for name, spec in MODELS.items()}
OUTPUT_SIZES: dict[str, tuple[int, int]] = {name: spec.output_size for name, spec in MODELS.items()}


def model_spec(model_name: str) -> ModelSpec:
    """The registry entry of ``model_name``; ``KeyError`` names the known ones."""
    try:
        return MODELS[model_name]
    except KeyError:
        raise KeyError(f"unknown model_name {model_name!r}; known: {', '.join(sorted(MODELS))}") from None


def credits_for(model_name: str, inputs: Mapping[str, Any] | BaseModel | None = None) -> int:
    """Credits a prediction of ``model_name`` with ``inputs`` costs at most (num_samples × per output)."""
    return model_spec(model_name).credits(inputs)


def latency_prior(model_name: str | None, mode: str | None) -> float:
    """Published seconds of ``(model_name, mode)``; the default model's for an unknown name."""
    return MODELS.get(model_name or DEFAULT_MODEL_NAME, MODELS[DEFAULT_MODEL_NAME]).prior(mode)


def input_schema(model_name: str) -> type[TryonV16Inputs]:
    """The input schema for ``model_name``; ``KeyError`` names the known ones."""
    return model_spec(model_name).inputs


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
