"""The items a spec makes: one garment on one model photo, one prediction each.

An item's inputs are the spec's layers merged (see :mod:`tryon.spec.collection`); the garment
and model images always come from the rows' ``image``, into the inputs the model's registry
entry names (``garment_image`` or ``product_image``; ``model_image``). A model whose model image
is optional (product-to-model) accepts a collection of garments alone: its items are labelled
with the model id :data:`GENERATED_MODEL_ID`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tryon.models import MODELS, credits_for, input_schema, validate_inputs
from tryon.spec.collection import CollectionSpec
from tryon.spec.csv_rows import csv_inputs, csv_rows
from tryon.spec.ids import LABEL_SEPARATOR
from tryon.spec.problems import Problem, SpecError

GENERATED_MODEL_ID = "generated"  # the model id of items without a model photo


class Item(BaseModel):
    """One garment on one model photo: one prediction, archived under ``label``."""

    model_config = ConfigDict(frozen=True)

    collection: str
    model_name: str
    garment_id: str
    model_id: str
    inputs: dict[str, Any] = Field(description="Merged inputs, images as written in the spec.")
    base_dir: str | None = None
    take: int = Field(1, ge=1, description="Which take (tryon.takes); its seed is derived from it.")

    @property
    def label(self) -> str:
        return f"{self.garment_id}{LABEL_SEPARATOR}{self.model_id}"

    def _input(self, name: str, fallback: Any) -> Any:
        if name in self.inputs:
            return self.inputs[name]
        try:
            return input_schema(self.model_name).model_fields[name].default
        except KeyError:
            return fallback

    @property
    def mode(self) -> str:
        """The value of the model's mode input (its latency profile); ``balanced`` when it has none."""
        field = MODELS[self.model_name].mode_field if self.model_name in MODELS else "mode"
        return str(self._input(field, "balanced")) if field else "balanced"

    @property
    def output_format(self) -> str:
        return str(self._input("output_format", "png"))

    @property
    def credits(self) -> int:
        """The most its prediction costs (outputs × the model's price per output)."""
        return credits_for(self.model_name, self.inputs)

    def __str__(self) -> str:
        return f"{self.collection}/{self.model_name}/{self.label}"


def _typed(model_name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with values converted to their schema types ("2" -> 2 from a CSV); unchanged
    when they do not validate (the submission then fails on them, loudly)."""
    try:
        validated = validate_inputs(model_name, inputs)
    except (KeyError, ValidationError):
        return inputs
    return {k: getattr(validated, k) if k in type(validated).model_fields else v for k, v in inputs.items()}


def _make_item(spec: CollectionSpec, garment_id: str, garment_image: str, model_id: str, model_image: str | None,
               layers: list[Mapping[str, Any]]) -> Item:
    entry = MODELS[spec.model_name]
    merged: dict[str, Any] = {}
    for layer in (*layers, spec.overrides):
        merged.update({k: v for k, v in layer.items() if k not in entry.row_fields})
    if model_image:
        merged[entry.model_field] = model_image
    merged[entry.garment_field] = garment_image
    return Item(collection=spec.name, model_name=spec.model_name, garment_id=garment_id, model_id=model_id,
                inputs=_typed(spec.model_name, merged), base_dir=spec.base_dir)


def iter_items(spec: CollectionSpec) -> Iterator[Item]:
    """Every item of a (validated) spec, lazily: garments outer, models inner for ``pairs: all``,
    list order otherwise, row order for a CSV (streamed)."""
    if spec.csv:
        for row in csv_rows(spec.csv):
            if row.values is None:
                raise SpecError([Problem(f"row {row.row}", "", None, row.problem or "is invalid")], source=spec.csv)
            v = row.values
            yield _make_item(spec, v["garment_id"], v["garment_image"], v["model_id"] or GENERATED_MODEL_ID,
                             v["model_image"] or None, [spec.inputs, csv_inputs(v)])
        return
    if spec.pairs == "all":
        if not spec.models:  # garments alone (a model whose model image is optional)
            for garment in spec.garments:
                yield _make_item(spec, garment.id, garment.image, GENERATED_MODEL_ID, None,
                                 [spec.inputs, garment.inputs])
            return
        for garment in spec.garments:
            for model in spec.models:
                yield _make_item(spec, garment.id, garment.image, model.id, model.image,
                                 [spec.inputs, garment.inputs, model.inputs])
        return
    garments = {g.id: g for g in spec.garments}
    models = {m.id: m for m in spec.models}
    for pair in spec.pairs:
        garment, model = garments[pair.garment], models[pair.model]
        yield _make_item(spec, garment.id, garment.image, model.id, model.image,
                         [spec.inputs, garment.inputs, model.inputs, pair.inputs])
