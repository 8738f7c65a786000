"""Typed flow parameters: what the Prefect UI renders as a form (dropdowns for ``Literal``,
grouped fields for models, help text from ``Field(description=...)``), and what
``enforce_parameter_schema`` checks before a run is created."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tryon.collection import Garment, ModelPhoto, Pair
from tryon.models import ACCEPTED_MODES, DEFAULT_MODEL_NAME, MODELS

# Built from the model registry (tryon.models.MODELS), so a new model or mode shows in the forms.
ModelName = Literal[tuple(MODELS)]  # type: ignore[valid-type]
Mode = Literal[ACCEPTED_MODES]  # type: ignore[valid-type]
NumSamples = Annotated[int, Field(ge=1, le=4)]


class InlineCollection(BaseModel):
    """A collection typed into the run form instead of a spec file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Collection name: letters, digits, '-', '_', '.'; names the archive folder.")
    model_name: ModelName = Field(DEFAULT_MODEL_NAME, description="FASHN model that renders the try-ons.")
    date: dt.date | None = Field(None, description="Collection date (backfills can select by it).")
    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description='Try-on inputs for every item, e.g. {"category": "tops"}.')
    garments: list[Garment] = Field(min_length=1, description="Garment photos: id and image URL.")
    models: list[ModelPhoto] = Field(default_factory=list, description="Model photos: id and image URL (or "
                                     "saved:<name>); optional for a model that makes the person (product-to-model).")
    pairs: Literal["all"] | list[Pair] = Field("all", description="'all' (every garment on every model) or pairs.")

    def as_spec_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def input_overrides(mode: str | None, num_samples: int | None) -> dict[str, Any]:
    """The run-level inputs set on every item (over everything the spec says)."""
    overrides: dict[str, Any] = {}
    if mode is not None:
        overrides["mode"] = mode
    if num_samples is not None:
        overrides["num_samples"] = num_samples
    return overrides
