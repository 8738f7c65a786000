"""Collection specs: which garments go on which model photos, with which inputs.

A spec is a YAML or JSON file::

    name: fw26-denim                 # safe for object keys
    model_name: tryon-v1.6
    inputs: {mode: balanced, num_samples: 2}      # defaults for every item
    models:   [{id: ava, image: models/ava.jpg}]  # relative to the spec, fsspec URL or http(s) URL
    garments: [{id: jacket-01, image: s3://shop/jacket-01.jpg, inputs: {category: tops}}]
    pairs: all                       # cross product, or a list of {garment, model[, inputs]}

or a CSV of explicit pairs (columns ``garment_id, garment_image, model_id, model_image`` plus
optional input columns such as ``category``, ``mode``, ``seed``, ``num_samples``; empty cells
mean "not set"). A CSV is never loaded whole: its rows are streamed by :func:`iter_items` and
:func:`validate_spec`. In messages a CSV's ``row N`` is the spreadsheet row (the header is row 1).

Inputs of an item are merged in this order, later wins: the spec's ``inputs``, the garment's
``inputs``, the model photo's ``inputs``, the pair's ``inputs`` (or the CSV row's input
columns). The garment and model images always come from the rows' ``image``, into the inputs
the model's registry entry names (``garment_image`` or ``product_image``; ``model_image``). A
model whose model image is optional (product-to-model) accepts a collection of garments alone:
its items are labelled with the model id ``generated``.

``model_name_override`` re-renders a catalogue with another model: inputs the spec wrote that
the other model's schema does not know are left out (they were written for the spec's model);
the rest is validated for the other model. A spec that names a model itself must be valid for it.

:func:`validate_spec` checks everything before anything is spent and raises one
:class:`SpecError` listing every problem, each naming the row or field and the value.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from tryon import images
from tryon.errors import FashnError
from tryon.models import IMAGE_FIELDS, INPUT_SCHEMAS, MODELS, ModelSpec, input_schema, validate_inputs

DEFAULT_MODEL_NAME = "tryon-v1.6"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SAFE_ID_HINT = "use letters, digits, '-', '_', '.'"
LABEL_SEPARATOR = "__"
CSV_COLUMNS = ("garment_id", "garment_image", "model_id", "model_image")
KEY_VERSION = 1
GENERATED_MODEL_ID = "generated"  # the model id of items without a model photo
MAX_PROBLEMS = 1000
IMAGE_CHECK_CONCURRENCY = 8


# -- problems -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    ``where`` names the row or section (``garments[2]``, ``row 7``, ``name``, ``fw26.yaml line 3,
    column 5``), ``field`` the field in it (may be empty), ``value`` the offending value as
    written (a ``repr``, shortened; ``None`` when there is none, e.g. a missing field).
    """

    where: str
    field: str
    value: str | None
    message: str

    @property
    def location(self) -> str:
        return f"{self.where}.{self.field}" if self.field else self.where

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.location}: {self.message}"
        return f"{self.location}: {self.value} {self.message}"


def show(value: Any, limit: int = 120) -> str:
    """The value as a short ``repr`` (data URIs never shown whole)."""
    if isinstance(value, str) and images.is_data_uri(value):
        value = value[:40] + "..."
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpecError(FashnError):
    """Everything wrong with a collection spec, one problem a line; nothing was spent."""

    def __init__(self, problems: list[Problem], *, source: str | None = None, more: int = 0) -> None:
        self.problems = list(problems)
        self.source = source
        self.more = more
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems) + self.more
        head = f"{self.source or 'collection spec'}: {count} problem{'s' if count != 1 else ''}; nothing was submitted"
        lines = [head, *(str(p) for p in self.problems)]
        if self.more:
            lines.append(f"... and {self.more} more")
        return "\n".join(lines)


class _Problems:
    """A bounded list of problems, each reported once."""

    def __init__(self, limit: int = MAX_PROBLEMS) -> None:
        self.items: list[Problem] = []
        self.more = 0
        self.limit = limit
        self.reported: set[tuple[str, str, str]] = set()

    def add(self, where: str, field: str, value: Any, message: str, *, raw: bool = False) -> None:
        if (where, field, message) in self.reported:
            return
        self.reported.add((where, field, message))
        shown = value if raw or value is None else show(value)
        if len(self.items) < self.limit:
            self.items.append(Problem(where, field, shown, message))
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, source: str | None) -> None:
        if self.items:
            raise SpecError(self.items, source=source, more=self.more)


def id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an id (or collection name), or ``None``."""
    if not isinstance(value, str):
        return "must be a string"
    if value == "":
        return f"is empty; an id is needed ({SAFE_ID_HINT})"
    if not SAFE_ID.match(value) or ".." in value:
        return f"is not safe as an object key ({SAFE_ID_HINT}; start with a letter or digit; no '..'; at most 128)"
    if LABEL_SEPARATOR in value:
        return f"contains {LABEL_SEPARATOR!r}, which separates garment and model in folder names"
    return None


def slug(text: str) -> str:
    """``text`` made safe as an id (for names taken from file names)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    cleaned = re.sub(r"\.{2,}", ".", cleaned).replace(LABEL_SEPARATOR, "_")
    return cleaned[:128] or "collection"


# -- the spec -------------------------------------------------------------------------------------

def _id_to_str(value: Any) -> Any:
    # YAML reads `id: 101` as an int; an id is its text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _none_to_dict(value: Any) -> Any:
    return {} if value is None else value


class ImageRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Unique in its list; safe as an object key.")
    image: str = Field(description="Local path (relative to the spec), fsspec URL, http(s) URL or data URI.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Input overrides for this row's items.")

    @field_validator("id", mode="before")
    @classmethod
    def _id_str(cls, value: Any) -> Any:
        return _id_to_str(value)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        return _none_to_dict(value)


class Garment(ImageRow):
    """A garment photo."""


class ModelPhoto(ImageRow):
    """A photo of a model (may be ``saved:<name>``)."""


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    garment: str
    model: str
    inputs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("garment", "model", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_to_str(value)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        return _none_to_dict(value)


class CollectionSpec(BaseModel):
    """A collection: garments × model photos for one model name.

    ``base_dir`` is the folder relative image paths are resolved against (the spec's folder);
    ``csv`` is set for CSV specs, whose pairs are streamed from that location.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    model_name: str = DEFAULT_MODEL_NAME
    date: dt.date | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelPhoto] = Field(default_factory=list)
    garments: list[Garment] = Field(default_factory=list)
    pairs: Literal["all"] | list[Pair] = "all"
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="Inputs set for every item over all the spec's layers (a run's "
                                                  "mode or num_samples override).")
    base_dir: str | None = None
    source: str | None = None
    csv: str | None = None

    _item_count: int | None = PrivateAttr(default=None)

    @field_validator("name", mode="before")
    @classmethod
    def _name_str(cls, value: Any) -> Any:
        return _id_to_str(value)

    @field_validator("inputs", "overrides", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        return _none_to_dict(value)

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
                self._item_count = sum(1 for _ in _csv_rows(self))
            elif self.pairs == "all":
                self._item_count = len(self.garments) * len(self.models)
            else:
                self._item_count = len(self.pairs)
        return self._item_count


class Item(BaseModel):
    """One garment on one model photo: one prediction, archived under ``label``."""

    model_config = ConfigDict(frozen=True)

    collection: str
    model_name: str
    garment_id: str
    model_id: str
    inputs: dict[str, Any] = Field(description="Merged inputs, images as written in the spec.")
    base_dir: str | None = None
    where: str = ""

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
        field = _spec_of(self.model_name).mode_field if self.model_name in MODELS else "mode"
        return str(self._input(field, "balanced")) if field else "balanced"

    @property
    def num_samples(self) -> int:
        """Outputs the item's prediction makes."""
        if self.model_name not in MODELS:
            return 1
        return _spec_of(self.model_name).outputs(self.inputs)

    @property
    def output_format(self) -> str:
        return str(self._input("output_format", "png"))

    def __str__(self) -> str:
        return f"{self.collection}/{self.model_name}/{self.label}"


# -- loading --------------------------------------------------------------------------------------

def _read_text(location: str) -> str:
    fs, path = images.open_fs(location)
    with fs.open(path, "rb") as handle:
        return handle.read().decode("utf-8-sig")


def _parse_text(text: str, kind: str, source: str) -> Any:
    name = posixpath.basename(source.rstrip("/")) or source
    try:
        if kind == "json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError([Problem(f"{name} line {exc.lineno}, column {exc.colno}", "", None,
                                 f"is not valid JSON: {exc.msg}")], source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else name
        what = " ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        raise SpecError([Problem(where, "", None, f"is not valid YAML: {what or exc}")], source=source) from None


def _loc(loc: tuple[Any, ...]) -> tuple[str, str]:
    """(where, field) of a pydantic error location: ('garments', 2, 'image') -> ('garments[2]', 'image')."""
    parts = [p for p in loc if isinstance(p, int) or not any(c in str(p) for c in "[]'")]
    if not parts:
        return "spec", ""
    where = str(parts[0])
    rest = list(parts[1:])
    if rest and isinstance(rest[0], int):
        where += f"[{rest.pop(0)}]"
    return where, ".".join(str(p) for p in rest)


def _pydantic_message(error: Mapping[str, Any], known: str = "") -> str:
    kind = error.get("type", "")
    if kind == "missing":
        return "is missing (required)"
    if kind == "extra_forbidden":
        return f"is not a known field{f' (known: {known})' if known else ''}"
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    return f"is invalid: {message[:1].lower()}{message[1:]}"


_ROW_FIELDS = "id, image, inputs"
_SPEC_FIELDS = "name, model_name, date, inputs, models, garments, pairs, base_dir"


def _add_validation_errors(problems: _Problems, exc: ValidationError, data: Mapping[str, Any]) -> None:
    for error in exc.errors():
        if any(isinstance(p, str) and p.startswith("literal[") for p in error["loc"]):
            continue  # the other branch of `pairs: 'all' | list` says more
        where, field = _loc(tuple(error["loc"]))
        if error.get("type") == "model_type" and not field and "[" in where:
            shape = "{garment, model}" if where.startswith("pairs") else "{id, image}"
            problems.add(where, "", error.get("input"), f"must be a mapping like {shape}")
            continue
        known = _SPEC_FIELDS if where == "spec" or "[" not in where else (
            "garment, model, inputs" if where.startswith("pairs") else _ROW_FIELDS)
        if error.get("type") == "extra_forbidden" and not field and "[" not in where:
            where, field, known = "spec", str(error["loc"][0]), _SPEC_FIELDS
        value = None if error.get("type") == "missing" else error.get("input")
        if error.get("type") == "extra_forbidden":
            value = None
        problems.add(where, field, value, _pydantic_message(error, known))


def _lenient_rows(cls: type[BaseModel], value: Any) -> list[Any]:
    """Rows that validate, and stand-ins (``model_construct``) for those that do not, so the
    semantic checks still run with the original indices."""
    if not isinstance(value, list):
        return []
    rows: list[Any] = []
    for row in value:
        try:
            rows.append(cls.model_validate(row))
        except ValidationError:
            raw = row if isinstance(row, dict) else {}
            fields = {k: _id_to_str(raw.get(k)) for k in cls.model_fields if k != "inputs"}
            fields = {k: (v if isinstance(v, str) else None) for k, v in fields.items()}
            inputs = raw.get("inputs")
            rows.append(cls.model_construct(**fields, inputs=inputs if isinstance(inputs, dict) else {}))
    return rows


def _lenient_spec(data: Mapping[str, Any], defaults: Mapping[str, Any]) -> CollectionSpec:
    fields: dict[str, Any] = dict(defaults)
    for key, value in data.items():
        if key == "garments":
            fields[key] = _lenient_rows(Garment, value)
        elif key == "models":
            fields[key] = _lenient_rows(ModelPhoto, value)
        elif key == "pairs":
            fields[key] = _lenient_rows(Pair, value) if isinstance(value, list) else (
                "all" if value == "all" else [])
        elif key in CollectionSpec.model_fields:
            try:
                checked = CollectionSpec.model_validate({"name": "x", **{key: value}})
                fields[key] = getattr(checked, key)
            except ValidationError:
                if key == "name":
                    fields[key] = None
    return CollectionSpec.model_construct(**fields)


async def load_spec(path_or_url: str | os.PathLike[str], *, model_name_override: str | None = None,
                    storage_options: Mapping[str, Any] | None = None, name: str | None = None) -> CollectionSpec:
    """Read a spec (.yaml, .yml, .json or .csv) from a local path or fsspec URL.

    Raises :class:`SpecError` for anything that cannot be read or parsed, and for fields of the
    wrong shape; then it also runs every check of :func:`validate_spec` it can, so all
    problems come at once. A spec that loads still needs :func:`validate_spec`.

    ``name`` sets the collection name (CSV specs take it from the file name otherwise);
    ``storage_options`` are used for the spec and for images under the same protocol.
    """
    location = str(path_or_url)
    if images.has_protocol(location) and location.startswith("file://"):
        location = location[len("file://"):]
    if not images.has_protocol(location):
        location = os.path.abspath(os.path.expanduser(location))
    if storage_options:
        protocol = location.split("://", 1)[0] + "://" if images.has_protocol(location) else "file://"
        images.register_storage_options(protocol, storage_options)
    stem, ext = posixpath.splitext(posixpath.basename(location.rstrip("/")))
    ext = ext.lower()
    if ext not in (".yaml", ".yml", ".json", ".csv"):
        raise SpecError([Problem("spec", "", show(location), "has an unknown extension; use .yaml, .yml, .json or .csv")],
                        source=location)
    base_dir = images.parent_of(location)
    if ext == ".csv":
        return await asyncio.to_thread(_load_csv, location, base_dir, name or slug(stem), model_name_override)

    try:
        text = await asyncio.to_thread(_read_text, location)
    except FileNotFoundError:
        raise SpecError([Problem("spec", "", show(location), "not found")], source=location) from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem("spec", "", None, f"is not UTF-8 text ({exc})")], source=location) from None
    except Exception as exc:
        raise SpecError([Problem("spec", "", show(location), f"cannot be read ({type(exc).__name__}: {exc})")],
                        source=location) from None
    data = _parse_text(text, "json" if ext == ".json" else "yaml", location)
    if not isinstance(data, dict):
        raise SpecError([Problem("spec", "", show(type(data).__name__),
                                 "must be a mapping with name, model_name, inputs, models, garments, pairs")],
                        source=location)
    data.setdefault("name", slug(stem))
    return await spec_from_data(data, source=location, base_dir=base_dir, name=name,
                                model_name_override=model_name_override)


async def spec_from_data(data: Mapping[str, Any], *, source: str = "inline spec", base_dir: str | None = None,
                         name: str | None = None, model_name_override: str | None = None,
                         overrides: Mapping[str, Any] | None = None) -> CollectionSpec:
    """A spec from already parsed data (a file's content, or an inline spec from a UI form).

    Raises :class:`SpecError` listing every problem of shape and every check of
    :func:`validate_spec` it can run on what did parse.
    """
    data = dict(data)
    if name is not None:
        data["name"] = name
    if model_name_override:
        data = _for_model(data, model_name_override)
        data["model_name"] = model_name_override
    if overrides:
        data["overrides"] = {**(data.get("overrides") or {}), **overrides}
    data["base_dir"] = data.get("base_dir") or base_dir
    data["source"] = source
    data.pop("csv", None)
    try:
        return CollectionSpec.model_validate(data)
    except ValidationError as exc:
        problems = _Problems()
        _add_validation_errors(problems, exc, data)
        partial = _lenient_spec(data, {"base_dir": data["base_dir"], "source": source})
        await _collect_problems(partial, problems)
        raise SpecError(problems.items, source=source, more=problems.more) from None


def run_inputs(model_name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``mode`` and ``num_samples`` as the inputs of ``model_name`` that carry them
    (``generation_mode``, ``num_images`` for tryon-max); a name the model has no input for stays,
    so validation names it."""
    entry = MODELS.get(model_name)
    if entry is None:
        return dict(overrides)
    names = {"mode": entry.mode_field or "mode", "num_samples": entry.outputs_field or "num_samples"}
    return {names.get(k, k): v for k, v in overrides.items()}


def _for_model(data: dict[str, Any], target: str) -> dict[str, Any]:
    """``data`` re-rendered with ``target``: every layer of inputs without the names ``target``'s
    schema does not know (they were written for the spec's own model). Unchanged when the spec
    already names ``target`` or either model is unknown (validation then says so)."""
    own = data.get("model_name", DEFAULT_MODEL_NAME)
    if own == target or own not in MODELS or target not in MODELS:
        return data
    known = input_schema(target).model_fields

    def keep(layer: Any) -> Any:
        return {k: v for k, v in layer.items() if k in known} if isinstance(layer, Mapping) else layer

    def rows(value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [{**row, "inputs": keep(row["inputs"])} if isinstance(row, Mapping) and "inputs" in row else row
                for row in value]

    return {**data, "inputs": keep(data.get("inputs") or {}),
            **{k: rows(data[k]) for k in ("garments", "models", "pairs") if k in data}}


# -- CSV ------------------------------------------------------------------------------------------

def _open_csv(location: str) -> Any:
    fs, path = images.open_fs(location)
    return io.TextIOWrapper(fs.open(path, "rb"), encoding="utf-8-sig", newline="")


def _load_csv(location: str, base_dir: str, name: str, model_name_override: str | None) -> CollectionSpec:
    try:
        handle = _open_csv(location)
    except FileNotFoundError:
        raise SpecError([Problem("spec", "", show(location), "not found")], source=location) from None
    except Exception as exc:
        raise SpecError([Problem("spec", "", show(location), f"cannot be read ({type(exc).__name__}: {exc})")],
                        source=location) from None
    problems = _Problems()
    with handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SpecError([Problem("row 1", "", None, f"is not valid CSV: {exc}")], source=location) from None
    if not header or not any(h.strip() for h in header):
        raise SpecError([Problem("row 1", "", None, f"the header is missing; it needs {', '.join(CSV_COLUMNS)}")],
                        source=location)
    columns = [h.strip() for h in header]
    for column in CSV_COLUMNS:
        if column not in columns:
            problems.add("row 1", column, None, f"is missing from the header (a CSV spec needs {', '.join(CSV_COLUMNS)})")
    seen: set[str] = set()
    for index, column in enumerate(columns):
        if not column:
            problems.add("row 1", f"column {index + 1}", None, "has no name")
        elif column in seen:
            problems.add("row 1", column, None, "appears twice in the header")
        seen.add(column)
    problems.raise_if_any(location)
    return CollectionSpec(name=name, model_name=model_name_override or DEFAULT_MODEL_NAME, base_dir=base_dir,
                          source=location, csv=location)


@dataclass
class _CsvRow:
    row: int  # spreadsheet row: the header is row 1
    values: dict[str, str] | None
    problem: str | None = None


def _csv_rows(spec: CollectionSpec) -> Iterator[_CsvRow]:
    """Stream a CSV spec's data rows (one at a time; the file is never held whole)."""
    assert spec.csv is not None
    with _open_csv(spec.csv) as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                row = reader.line_num
                if not cells or not any(c.strip() for c in cells):
                    continue  # blank line
                if len(cells) != len(header):
                    yield _CsvRow(row, None, f"has {len(cells)} fields; the header has {len(header)}")
                    continue
                yield _CsvRow(row, {k: v.strip() for k, v in zip(header, cells, strict=True)})
        except (csv.Error, UnicodeDecodeError) as exc:
            yield _CsvRow(reader.line_num, None, f"is not valid CSV: {exc}")


def _csv_inputs(values: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if k not in CSV_COLUMNS and v != ""}


# -- items ----------------------------------------------------------------------------------------

def _spec_of(model_name: str) -> ModelSpec:
    return MODELS[model_name]


def _row_fields(model_name: str) -> tuple[str, ...]:
    """The inputs a spec's rows set for ``model_name`` (every image input for an unknown name)."""
    return _spec_of(model_name).row_fields if model_name in MODELS else IMAGE_FIELDS


def _typed(model_name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with values converted to their schema types ("2" -> 2 from a CSV); unchanged
    when they do not validate (the submission then fails on them, loudly)."""
    try:
        validated = validate_inputs(model_name, inputs)
    except (KeyError, ValidationError):
        return inputs
    return {k: getattr(validated, k) if k in type(validated).model_fields else v for k, v in inputs.items()}


def _make_item(spec: CollectionSpec, garment_id: str, garment_image: str, model_id: str, model_image: str | None,
               layers: list[Mapping[str, Any]], where: str) -> Item:
    entry = _spec_of(spec.model_name)
    merged: dict[str, Any] = {}
    for layer in (*layers, spec.overrides):
        merged.update({k: v for k, v in layer.items() if k not in entry.row_fields})
    if model_image:
        merged[entry.model_field] = model_image
    merged[entry.garment_field] = garment_image
    return Item(collection=spec.name, model_name=spec.model_name, garment_id=garment_id, model_id=model_id,
                inputs=_typed(spec.model_name, merged), base_dir=spec.base_dir, where=where)


def iter_items(spec: CollectionSpec) -> Iterator[Item]:
    """Every item of a (validated) spec, lazily: garments outer, models inner for ``pairs: all``,
    list order otherwise, row order for a CSV (streamed)."""
    if spec.csv:
        for row in _csv_rows(spec):
            if row.values is None:
                raise SpecError([Problem(f"row {row.row}", "", None, row.problem or "is invalid")], source=spec.csv)
            v = row.values
            yield _make_item(spec, v["garment_id"], v["garment_image"], v["model_id"] or GENERATED_MODEL_ID,
                             v["model_image"] or None,
                             [spec.inputs, _csv_inputs(v)], f"row {row.row}")
        return
    if spec.pairs == "all":
        if not spec.models:  # garments alone (a model whose model image is optional)
            for gi, garment in enumerate(spec.garments):
                yield _make_item(spec, garment.id, garment.image, GENERATED_MODEL_ID, None,
                                 [spec.inputs, garment.inputs], f"garments[{gi}]")
            return
        for gi, garment in enumerate(spec.garments):
            for mi, model in enumerate(spec.models):
                yield _make_item(spec, garment.id, garment.image, model.id, model.image,
                                 [spec.inputs, garment.inputs, model.inputs], f"garments[{gi}] × models[{mi}]")
        return
    garments = {g.id: g for g in spec.garments}
    models = {m.id: m for m in spec.models}
    for index, pair in enumerate(spec.pairs):
        garment, model = garments[pair.garment], models[pair.model]
        yield _make_item(spec, garment.id, garment.image, model.id, model.image,
                         [spec.inputs, garment.inputs, model.inputs, pair.inputs], f"pairs[{index}]")


async def item_key(item: Item) -> str:
    """What the item pays for, as a sha256 hex: the model name and the schema-validated inputs
    with defaults applied, images replaced by their identity (content hash, or the URL)."""
    inputs = dict(item.inputs)
    for field in _spec_of(item.model_name).image_fields:
        if isinstance(inputs.get(field), str):
            inputs[field] = await images.image_identity(inputs[field], item.base_dir)
    normalized = validate_inputs(item.model_name, inputs).model_dump(mode="json")
    canonical = json.dumps({"v": KEY_VERSION, "model_name": item.model_name, "inputs": normalized},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- validation -----------------------------------------------------------------------------------

def _placeholders(model_name: str, with_model: bool) -> dict[str, str]:
    """Stand-ins for the images the rows give, so a layer of inputs validates on its own."""
    entry = _spec_of(model_name)
    fields = entry.row_fields if with_model or not entry.model_optional else (entry.garment_field,)
    return {f: f"https://placeholder.invalid/{f}.jpg" for f in fields}


def _check_inputs(problems: _Problems, model_name: str, where: str, prefix: str, inputs: Any,
                  with_model: bool = True) -> None:
    """Problems of one layer of inputs (validated on top of the server's defaults)."""
    if not isinstance(inputs, Mapping):
        problems.add(where, prefix.rstrip(".") or "inputs", inputs, "must be a mapping of input names to values")
        return
    rows = _row_fields(model_name)
    for field in rows:
        if field in inputs:
            problems.add(where, f"{prefix}{field}", inputs[field],
                         "cannot be set in inputs; images come from the garment and model rows")
    if model_name not in INPUT_SCHEMAS:
        return
    layer = {k: v for k, v in inputs.items() if k not in rows}
    try:
        validate_inputs(model_name, {**layer, **_placeholders(model_name, with_model)})
    except ValidationError as exc:
        known = ", ".join(n for n in input_schema(model_name).model_fields if n not in rows)
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            if not field and error.get("type") == "value_error":  # a rule across inputs
                problems.add(where, prefix.rstrip("."), None, _pydantic_message(error))
                continue
            if error.get("type") == "extra_forbidden":
                problems.add(where, f"{prefix}{field}", None, f"is not an input of {model_name} (known: {known})")
            else:
                problems.add(where, f"{prefix}{field}", error.get("input"), _pydantic_message(error))


class _ImageRefs:
    """Distinct image locations to check, with the first place each was used."""

    def __init__(self) -> None:
        self.refs: dict[str, tuple[str, str, str]] = {}  # resolved -> (where, field, ref)
        self.uses: dict[str, int] = {}

    def add(self, ref: str, base: str | None, where: str, field: str) -> None:
        resolved = images.resolve_ref(ref, base) if not images.is_data_uri(ref) else \
            "data:" + hashlib.sha256(ref.encode()).hexdigest()
        self.refs.setdefault(resolved, (where, field, ref))
        self.uses[resolved] = self.uses.get(resolved, 0) + 1


def _check_image_ref(problems: _Problems, refs: _ImageRefs, base: str | None, where: str, field: str,
                     ref: Any, *, garment: bool) -> None:
    if not isinstance(ref, str):
        return  # already reported as a shape problem
    if not ref.strip():
        problems.add(where, field, ref, "is empty; an image path or URL is needed")
        return
    if garment and images.is_saved(ref):
        problems.add(where, field, ref, "is a saved:<name> reference, which only model images accept")
        return
    refs.add(ref, base, where, field)


def _check_header(spec: CollectionSpec, problems: _Problems) -> None:
    if spec.name is not None:
        if (why := id_problem(spec.name)) is not None:
            problems.add("name", "", spec.name, why)
    if spec.model_name not in INPUT_SCHEMAS:
        problems.add("model_name", "", spec.model_name,
                     f"is not a known model name (known: {', '.join(sorted(INPUT_SCHEMAS))})")
    with_model = bool(spec.models) or bool(spec.csv)
    _check_inputs(problems, spec.model_name, "inputs", "", spec.inputs, with_model)
    if spec.overrides:
        _check_inputs(problems, spec.model_name, "overrides", "", spec.overrides, with_model)


def _check_rows(spec: CollectionSpec, problems: _Problems, refs: _ImageRefs) -> None:
    optional = spec.model_name in MODELS and _spec_of(spec.model_name).model_optional
    for kind, rows in (("garments", spec.garments), ("models", spec.models)):
        if not rows and not (kind == "models" and optional) and not any(p.where == kind for p in problems.items):
            problems.add(kind, "", None, f"is empty; a collection for {spec.model_name} needs at least one "
                                         f"{kind[:-1].replace('model', 'model photo')}")
        first: dict[str, int] = {}
        for index, row in enumerate(rows):
            where = f"{kind}[{index}]"
            if isinstance(row.id, str):
                if (why := id_problem(row.id)) is not None:
                    problems.add(where, "id", row.id, why)
                elif row.id in first:
                    problems.add(where, "id", row.id, f"is a duplicate (first at {kind}[{first[row.id]}])")
                else:
                    first[row.id] = index
            _check_image_ref(problems, refs, spec.base_dir, where, "image", row.image, garment=kind == "garments")
            _check_inputs(problems, spec.model_name, where, "inputs.", row.inputs, bool(spec.models))
    if spec.pairs == "all":
        return
    garments = {g.id for g in spec.garments}
    models = {m.id for m in spec.models}
    if not spec.pairs:
        problems.add("pairs", "", None, "is an empty list; use 'all' or list {garment, model} pairs")
    seen: dict[tuple[str, str], int] = {}
    for index, pair in enumerate(spec.pairs):
        where = f"pairs[{index}]"
        if isinstance(pair.garment, str) and pair.garment not in garments:
            problems.add(where, "garment", pair.garment, "is not the id of a garment in this spec")
        if isinstance(pair.model, str) and pair.model not in models:
            problems.add(where, "model", pair.model, "is not the id of a model in this spec")
        _check_inputs(problems, spec.model_name, where, "inputs.", pair.inputs)
        key = (pair.garment, pair.model)
        if key in seen:
            problems.add(where, "", None, f"garment {pair.garment!r} × model {pair.model!r} is listed twice "
                                          f"(first at pairs[{seen[key]}])")
        else:
            seen[key] = index


def _check_csv(spec: CollectionSpec, problems: _Problems, refs: _ImageRefs) -> int:
    """Stream a CSV spec's rows; memory grows with distinct ids and images, not with rows."""
    known = input_schema(spec.model_name).model_fields if spec.model_name in INPUT_SCHEMAS else None
    optional = spec.model_name in MODELS and _spec_of(spec.model_name).model_optional
    images_of: dict[tuple[str, str], tuple[str, int]] = {}  # (kind, id) -> (image, first row)
    pairs_seen: dict[bytes, int] = {}
    count = 0
    header_checked = False
    for row in _csv_rows(spec):
        if row.values is None:
            problems.add(f"row {row.row}", "", None, row.problem or "is invalid")
            continue
        values = row.values
        where = f"row {row.row}"
        if not header_checked:
            header_checked = True
            if known is not None:
                for column in values:
                    if column not in CSV_COLUMNS and (column not in known or column in IMAGE_FIELDS):
                        names = ", ".join(n for n in known if n not in IMAGE_FIELDS)
                        problems.add("row 1", column, None,
                                     f"is not a known column (need {', '.join(CSV_COLUMNS)}; inputs of "
                                     f"{spec.model_name}: {names})")
        count += 1
        ok = True
        for kind in ("garment", "model"):
            ident, image = values.get(f"{kind}_id", ""), values.get(f"{kind}_image", "")
            if kind == "model" and optional and not ident and not image:
                continue  # a garment alone (the model image is optional)
            if (why := id_problem(ident)) is not None:
                problems.add(where, f"{kind}_id", ident, why)
                ok = False
            _check_image_ref(problems, refs, spec.base_dir, where, f"{kind}_image", image, garment=kind == "garment")
            if not image or why is not None:
                continue
            first = images_of.setdefault((kind, ident), (image, row.row))
            if first[0] != image:
                problems.add(where, f"{kind}_image", image,
                             f"differs from the image of {kind} {ident!r} on row {first[1]} ({first[0]!r}); "
                             "one id, one image")
        if ok:
            digest = hashlib.blake2b(f"{values['garment_id']}\0{values['model_id']}".encode(), digest_size=12).digest()
            if digest in pairs_seen:
                problems.add(where, "", None, f"garment {values['garment_id']!r} × model {values['model_id']!r} "
                                              f"is listed twice (first on row {pairs_seen[digest]})")
            else:
                pairs_seen[digest] = row.row
        layer = {k: v for k, v in _csv_inputs(values).items() if known is None or (k in known and k not in IMAGE_FIELDS)}
        _check_inputs(problems, spec.model_name, where, "", layer, bool(values.get("model_image")))
    if count == 0:
        problems.add("rows", "", None, "there are none; a CSV spec needs at least one garment/model row")
    return count


async def _check_images(problems: _Problems, refs: _ImageRefs, concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)
    entries = list(refs.refs.items())

    async def check(entry: tuple[str, tuple[str, str, str]]) -> str | None:
        resolved, (_where, _field, ref) = entry
        async with semaphore:
            return await images.check_image(ref if images.is_data_uri(ref) else resolved)

    results = await asyncio.gather(*(check(e) for e in entries))
    for (resolved, (where, field, ref)), problem in zip(entries, results, strict=True):
        if problem is not None:
            others = refs.uses[resolved] - 1
            also = f" (also used {others} more time{'s' if others != 1 else ''})" if others else ""
            problems.add(where, field, ref, f"{problem}{also}")


async def _collect_problems(spec: CollectionSpec, problems: _Problems, *, check_images: bool = True,
                            concurrency: int = IMAGE_CHECK_CONCURRENCY) -> int:
    _check_header(spec, problems)
    refs = _ImageRefs()
    if spec.csv:
        count = await asyncio.to_thread(_check_csv, spec, problems, refs)
    else:
        _check_rows(spec, problems, refs)
        count = (len(spec.garments) * len(spec.models)) if spec.pairs == "all" else len(spec.pairs)
    if check_images:
        await _check_images(problems, refs, concurrency)
    return count


async def validate_spec(spec: CollectionSpec, *, check_images: bool = True,
                        concurrency: int = IMAGE_CHECK_CONCURRENCY) -> None:
    """Check everything before anything is spent; raise one :class:`SpecError` with every problem.

    Checks: the collection name and every id are safe object keys; ids are unique per list
    (for a CSV: one image per id, each pair once); pairs name known ids; ``model_name`` is
    known; every layer of inputs is valid for it; every image is readable (checked
    concurrently, at most ``concurrency`` at a time; http(s) URLs are left to the provider).
    """
    problems = _Problems()
    count = await _collect_problems(spec, problems, check_images=check_images, concurrency=concurrency)
    problems.raise_if_any(spec.source or spec.name)
    spec._item_count = count
