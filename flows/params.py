"""Typed flow parameters: what the Prefect UI renders as a form (dropdowns for ``Literal``,
grouped fields for models, help text from ``Field(description=...)``), and what
``enforce_parameter_schema`` checks before a run is created."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tryon.models import ACCEPTED_MODES, DEFAULT_MODEL_NAME, MODELS
from tryon.spec.collection import Garment, ModelPhoto, Pair

# Built from the model registry (tryon.models.MODELS), so a new model or mode shows in the forms.
ModelName = Literal[tuple(MODELS)]  # type: ignore[valid-type]
# The run form's choices: a real default ("as in the spec") instead of an optional value, so the
# form shows a ready dropdown rather than a type toggle set to None.
AS_IN_SPEC = "as in the spec"
ModelChoice = Literal[(AS_IN_SPEC, *MODELS)]  # type: ignore[valid-type]
ModeChoice = Literal[(AS_IN_SPEC, *ACCEPTED_MODES)]  # type: ignore[valid-type]
SamplesChoice = Annotated[int, Field(ge=0, le=4)]  # 0: as in the spec
# 0: the credentials block's max_credits, then TRYON_MAX_CREDITS, else no limit.
MaxCredits = Annotated[int, Field(ge=0, title="Max credits")]


def given(value: str | None) -> str | None:
    """A form's text or choice as an option: None when left empty or "as in the spec"."""
    return None if value in (None, "", AS_IN_SPEC) else value


class InlineCollection(BaseModel):
    """A collection typed into the run form instead of a spec file (left empty: none)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", description="Collection name: letters, digits, '-', '_', '.'; names the archive folder.")
    model_name: ModelName = Field(DEFAULT_MODEL_NAME, description="FASHN model that renders the try-ons.")
    date: str = Field("", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
                      description="Collection date, YYYY-MM-DD (backfills can select by it); may stay empty.")
    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description='Try-on inputs for every item, e.g. {"category": "tops"}.')
    garments: list[Garment] = Field(default_factory=list, description="Garment photos: id and image URL.")
    models: list[ModelPhoto] = Field(default_factory=list,
                                     description="Model photos: id and image URL (or saved:NAME); none for a model "
                                                 "that makes the person (product-to-model).")
    pairs: list[Pair] = Field(default_factory=list,
                              description="Which garment goes on which model; empty: every garment on every model.")

    @property
    def empty(self) -> bool:
        return not (self.name or self.garments or self.models)

    def as_spec_data(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        data["pairs"] = data["pairs"] or "all"
        if not data["date"]:
            del data["date"]
        return data


def input_overrides(mode: str | None, num_samples: int | None) -> dict[str, Any]:
    """The run-level inputs set on every item (over everything the spec says)."""
    overrides: dict[str, Any] = {}
    if given(mode) is not None:
        overrides["mode"] = mode
    if num_samples:
        overrides["num_samples"] = num_samples
    return overrides
