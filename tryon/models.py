"""Typed requests and answers of the FASHN API, and the registry of model names.

:data:`MODELS` is the one source of what a model name means: its input schema, which inputs a
collection's garment and model photos go to, its output size(s), published latency, credits per
output as a function of its inputs, and the modes it accepts. Adding a model name means adding
a :class:`ModelSpec` to it, nothing else; :data:`DEFAULT_MODEL_NAME` (the first entry),
:data:`INPUT_SCHEMAS`, :data:`IMAGE_FIELDS`, :data:`LEGACY_MODEL_NAME`, the flow forms' choices
(``flows.params``) and the poll scheduler's priors (``tryon.traffic.latency``) are derived from
it. The size a model promises for a request is :meth:`ModelSpec.size`. What each entry rests on
(confirmed, or not) is in ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Status = Literal["starting", "in_queue", "processing", "completed", "failed", "canceled", "time_out"]
TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled", "time_out"})

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


#: tryon-max and product-to-model output tiers: (width, height) px of a 2:3 portrait at each
#: resolution (about 1, 4 and 16 megapixels). The provider states the tiers' pixel counts, not the
#: exact sizes; the output follows the model photo's aspect ratio (the emulator assumes 2:3).
RESOLUTION_SIZES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"1k": (832, 1248), "2k": (1664, 2496), "4k": (3328, 4992)})
#: Aspect ratios product-to-model accepts, as (width, height) at 1k (the provider's ~1 MP table).
ASPECT_SIZES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "1:1": (1024, 1024), "2:3": (832, 1248), "3:4": (880, 1176), "4:5": (912, 1144), "5:4": (1144, 912),
    "4:3": (1176, 880), "3:2": (1176, 784), "16:9": (1360, 768), "9:16": (760, 1360)})
AspectRatio = Literal[tuple(ASPECT_SIZES)]  # type: ignore[valid-type]


class TryonMaxInputs(BaseModel):
    """Inputs of ``tryon-max``. The two images and ``prompt`` are confirmed on the provider's page;
    the option names and values (``resolution``, ``generation_mode``, ``num_images``) and every
    default are not (docs/models.md)."""

    model_config = ConfigDict(extra="forbid")

    product_image: str = Field(min_length=1, description="Image URL or data URI of the product.")
    model_image: str = Field(min_length=1, description="Image URL or data URI of the person.")
    prompt: str | None = None
    resolution: Literal["1k", "2k", "4k"] = "1k"
    generation_mode: Literal["fast", "balanced", "quality"] = "balanced"
    num_images: int = Field(1, ge=1, le=4, description="Outputs per prediction; credits are charged per output.")
    seed: int = Field(42, ge=0, le=4294967295)
    output_format: Literal["png", "jpeg"] = "png"
    return_base64: bool = False


class ProductToModelInputs(BaseModel):
    """Inputs of ``product-to-model``, as the official SDKs type them: ``model_image`` (try-on
    mode) or ``image_prompt`` (inspiration), never both."""

    model_config = ConfigDict(extra="forbid")

    product_image: str = Field(min_length=1, description="Image URL or data URI of the product.")
    model_image: str | None = Field(None, min_length=1, description="Person to dress (try-on mode).")
    image_prompt: str | None = Field(None, min_length=1, description="Inspiration image for pose and scene.")
    prompt: str | None = None
    aspect_ratio: AspectRatio | None = None
    resolution: Literal["1k", "4k"] = "1k"
    seed: int = Field(42, ge=0, le=4294967295)
    output_format: Literal["png", "jpeg"] = "png"
    return_base64: bool = False

    @model_validator(mode="after")
    def _one_reference(self) -> "ProductToModelInputs":
        if self.model_image is not None and self.image_prompt is not None:
            raise ValueError("image_prompt cannot be combined with model_image")
        return self


def _by_resolution(inputs: Mapping[str, Any]) -> tuple[int, int]:
    return RESOLUTION_SIZES[str(inputs.get("resolution", "1k"))]


def _product_to_model_size(inputs: Mapping[str, Any]) -> tuple[int, int]:
    # With a model photo the output follows its aspect ratio (assumed 2:3); 4k is 4x each side.
    ratio = "2:3" if inputs.get("model_image") else str(inputs.get("aspect_ratio") or "2:3")
    w, h = ASPECT_SIZES[ratio]
    scale = 4 if inputs.get("resolution") == "4k" else 1
    return w * scale, h * scale


@dataclass(frozen=True)
class ModelSpec:
    """What one model name means: everything the client, the emulator, the forms and the
    traffic controller need to know about it.

    ``credits_per_output`` is the provider's price for one output image with the given
    (defaults-applied) inputs: exact when ``credits_exact``, else the upper bound of the
    published range. The credits charged always come from ``x-fashn-credits-used``.
    """

    name: str
    inputs: type[BaseModel]
    output_size: tuple[int, int]  # (width, height) px of an output with the default inputs
    latency_prior: Mapping[str, float] = field(default_factory=lambda: PUBLISHED_LATENCY)  # seconds per mode
    credits_per_output: Callable[[Mapping[str, Any]], int] = lambda inputs: 1
    credits_exact: bool = True
    legacy: bool = False  # the model a body without ``model_name`` (the old API) is for
    garment_field: str = "garment_image"  # the input a collection's garment photo goes to
    model_field: str = "model_image"  # the input a collection's model photo goes to
    model_optional: bool = False  # True: a collection may list garments alone
    extra_image_fields: tuple[str, ...] = ()  # other inputs that take an image
    mode_field: str | None = "mode"  # the input a run's ``mode`` sets (None: the model has none)
    outputs_field: str | None = "num_samples"  # the input that sets outputs per prediction (None: one)
    price_options: tuple[str, ...] = ()  # the inputs the price per output depends on
    size_for: Callable[[Mapping[str, Any]], tuple[int, int]] | None = None  # output size by inputs

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes its input schema accepts (none when it has no mode input)."""
        if self.mode_field is None:
            return ()
        return tuple(get_args(self.inputs.model_fields[self.mode_field].annotation))

    @property
    def image_fields(self) -> tuple[str, ...]:
        return (self.model_field, self.garment_field, *self.extra_image_fields)

    @property
    def row_fields(self) -> tuple[str, ...]:
        """The inputs a collection's rows set (never set in a spec's ``inputs``)."""
        return (self.model_field, self.garment_field)

    def applied(self, inputs: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
        """``inputs`` over the schema's defaults (not validated: a plan may hold placeholders)."""
        if isinstance(inputs, BaseModel):
            return inputs.model_dump()
        defaults = {n: f.default for n, f in self.inputs.model_fields.items() if not f.is_required()}
        return {**defaults, **(inputs or {})}

    def outputs(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> int:
        """Output images one prediction with ``inputs`` makes."""
        if self.outputs_field is None:
            return 1
        try:
            return int(self.applied(inputs)[self.outputs_field])
        except (TypeError, ValueError):
            return 1

    def credits(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> int:
        """Credits one prediction with ``inputs`` costs at most: outputs × credits per output."""
        return self.outputs(inputs) * self.credits_per_output(self.applied(inputs))

    def size(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> tuple[int, int]:
        """(width, height) px of each output of a prediction with ``inputs``."""
        return self.size_for(self.applied(inputs)) if self.size_for else self.output_size

    def prior(self, mode: str | None) -> float:
        """Published seconds for ``mode`` (the default mode's for an unknown one)."""
        prior = self.latency_prior
        default = prior.get(DEFAULT_MODE, next(iter(prior.values()), PUBLISHED_LATENCY[DEFAULT_MODE]))
        return prior.get(mode or DEFAULT_MODE, default)

    def latency(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> float:
        """Published seconds of a prediction with ``inputs`` (its mode's prior)."""
        mode = self.applied(inputs).get(self.mode_field) if self.mode_field else None
        return self.prior(mode)


# tryon-max: "2-5 per output image depending on resolution and generation_mode"; the table is not
# published, so the estimate is the range's top. Latency "20s-120s": priors by generation mode.
TRYON_MAX_CREDITS_BOUND = 5
PRODUCT_TO_MODEL_CREDITS_BOUND = 5

_SPECS = (
    ModelSpec("tryon-v1.6", TryonV16Inputs, output_size=(864, 1296)),
    ModelSpec("tryon-v1.5", TryonV15Inputs, output_size=(576, 864), legacy=True),
    ModelSpec("tryon-max", TryonMaxInputs, output_size=RESOLUTION_SIZES["1k"],
              latency_prior=MappingProxyType({"fast": 20.0, "balanced": 50.0, "quality": 120.0}),
              credits_per_output=lambda inputs: TRYON_MAX_CREDITS_BOUND, credits_exact=False,
              garment_field="product_image", mode_field="generation_mode", outputs_field="num_images",
              price_options=("resolution", "generation_mode"), size_for=_by_resolution),
    ModelSpec("product-to-model", ProductToModelInputs, output_size=ASPECT_SIZES["2:3"],
              latency_prior=MappingProxyType({DEFAULT_MODE: 12.0}),
              credits_per_output=lambda inputs: PRODUCT_TO_MODEL_CREDITS_BOUND, credits_exact=False,
              garment_field="product_image", model_optional=True, extra_image_fields=("image_prompt",),
              mode_field=None, outputs_field=None, price_options=("resolution",),
              size_for=_product_to_model_size),
)
#: The registry: model name -> :class:`ModelSpec`; the first is the default.
MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
DEFAULT_MODEL_NAME = _SPECS[0].name
LEGACY_MODEL_NAME = next(spec.name for spec in _SPECS if spec.legacy)
#: Every mode some model accepts, in :data:`MODES` order, then the others in registry order.
ACCEPTED_MODES = tuple(dict.fromkeys(
    [m for m in MODES if any(m in spec.modes for spec in _SPECS)] + [m for spec in _SPECS for m in spec.modes]))
#: Every input of some model that takes an image (the client encodes these).
IMAGE_FIELDS = tuple(dict.fromkeys(f for spec in _SPECS for f in spec.image_fields))

#: Model name -> input schema.
INPUT_SCHEMAS: dict[str, type[BaseModel]] = {name: spec.inputs for name, spec in MODELS.items()}


def model_spec(model_name: str) -> ModelSpec:
    """The registry entry of ``model_name``; ``KeyError`` names the known ones."""
    try:
        return MODELS[model_name]
    except KeyError:
        raise KeyError(f"unknown model_name {model_name!r}; known: {', '.join(sorted(MODELS))}") from None


def credits_for(model_name: str, inputs: Mapping[str, Any] | BaseModel | None = None) -> int:
    """Credits a prediction of ``model_name`` with ``inputs`` costs at most (outputs × per output)."""
    return model_spec(model_name).credits(inputs)


def latency_prior(model_name: str | None, mode: str | None) -> float:
    """Published seconds of ``(model_name, mode)``; the default model's for an unknown name."""
    return MODELS.get(model_name or DEFAULT_MODEL_NAME, MODELS[DEFAULT_MODEL_NAME]).prior(mode)


def input_schema(model_name: str) -> type[BaseModel]:
    """The input schema for ``model_name``; ``KeyError`` names the known ones."""
    return model_spec(model_name).inputs


def validate_inputs(model_name: str, inputs: dict[str, Any]) -> BaseModel:
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
