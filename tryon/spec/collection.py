"""The spec: a collection's garments, model photos and pairs for one model name, with inputs.

Inputs of an item are merged in this order, later wins: the spec's ``inputs``, the garment's
``inputs``, the model photo's ``inputs``, the pair's ``inputs`` (or the CSV row's input
columns), then the run's ``overrides``. The garment and model images always come from the rows'
``image`` (see :mod:`tryon.spec.items`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator

from tryon.models import DEFAULT_MODEL_NAME, MODELS
from tryon.spec.csv_rows import csv_rows


def id_to_str(value: Any) -> Any:
    """An id as its text: YAML reads ``id: 101`` as an int."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _none_to_dict(value: Any) -> Any:
    return {} if value is None else value


Id = Annotated[str, BeforeValidator(id_to_str)]
Inputs = Annotated[dict[str, Any], BeforeValidator(_none_to_dict)]  # an empty `inputs:` is no inputs


class ImageRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Id = Field(description="Unique in its list; safe as an object key.")
    image: str = Field(description="Local path (relative to the spec), fsspec URL, http(s) URL or data URI.")
    inputs: Inputs = Field(default_factory=dict, description="Input overrides for this row's items.")


class Garment(ImageRow):
    """A garment photo."""


class ModelPhoto(ImageRow):
    """A photo of a model (may be ``saved:<name>``)."""


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    garment: Id
    model: Id
    inputs: Inputs = Field(default_factory=dict)


class CollectionSpec(BaseModel):
    """A collection: garments × model photos for one model name.

    ``base_dir`` is the folder relative image paths are resolved against (the spec's folder);
    ``csv`` is set for CSV specs, whose pairs are streamed from that location.
    """

    model_config = ConfigDict(extra="forbid")

    name: Id
    model_name: str = DEFAULT_MODEL_NAME
    date: dt.date | None = None
    inputs: Inputs = Field(default_factory=dict)
    models: list[ModelPhoto] = Field(default_factory=list)
    garments: list[Garment] = Field(default_factory=list)
    pairs: Literal["all"] | list[Pair] = "all"
    overrides: Inputs = Field(default_factory=dict,
                              description="Inputs set for every item over all the spec's layers (a run's "
                                          "mode or num_samples override).")
    base_dir: str | None = None
    source: str | None = None
    csv: str | None = None

    _item_count: int | None = PrivateAttr(default=None)

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all":
            raise ValueError("must be 'all' or a list of {garment, model}")
        return value

    def item_count(self) -> int:
        """How many items the spec makes (a CSV is counted by streaming it, once)."""
        if self._item_count is None:
            if self.csv:
                self._item_count = sum(1 for _ in csv_rows(self.csv))
            elif self.pairs == "all":
                self._item_count = len(self.garments) * len(self.models)
            else:
                self._item_count = len(self.pairs)
        return self._item_count


def run_inputs(model_name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``mode`` and ``num_samples`` as the inputs of ``model_name`` that carry them
    (``generation_mode``, ``num_images`` for tryon-max); a name the model has no input for stays,
    so validation names it."""
    entry = MODELS.get(model_name)
    if entry is None:
        return dict(overrides)
    names = {"mode": entry.mode_field or "mode", "num_samples": entry.outputs_field or "num_samples"}
    return {names.get(k, k): v for k, v in overrides.items()}
