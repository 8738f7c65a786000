"""Loading a spec: from a YAML, JSON or CSV file (local path or fsspec URL), or from parsed data.

Anything that cannot be read or parsed, and fields of the wrong shape, raise
:class:`~tryon.spec.problems.SpecError` together with every check of
:func:`~tryon.spec.validation.validate_spec` that can run on what did parse, so all problems
come at once. A spec that loads still needs :func:`~tryon.spec.validation.validate_spec`.

``model_name_override`` re-renders a catalogue with another model: inputs the spec wrote that
the other model's schema does not know are left out (they were written for the spec's model);
the rest is validated for the other model. A spec that names a model itself must be valid for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tryon import images
from tryon.models import DEFAULT_MODEL_NAME, MODELS, input_schema
from tryon.spec.collection import CollectionSpec, Garment, ModelPhoto, Pair, id_to_str
from tryon.spec.csv_rows import check_header
from tryon.spec.ids import slug
from tryon.spec.problems import Problem, Problems, SpecError, pydantic_message, show
from tryon.spec.validation import collect_problems

_ROW_FIELDS = "id, image, inputs"
_SPEC_FIELDS = "name, model_name, date, inputs, models, garments, pairs, base_dir"


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


def _add_validation_errors(problems: Problems, exc: ValidationError) -> None:
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
        problems.add(where, field, value, pydantic_message(error, known))


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
            fields = {k: id_to_str(raw.get(k)) for k in cls.model_fields if k != "inputs"}
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


async def load_spec(path_or_url: str | os.PathLike[str], *, model_name_override: str | None = None) -> CollectionSpec:
    """Read a spec (.yaml, .yml, .json or .csv) from a local path or fsspec URL; a spec that
    names no collection (every CSV) is named after its file."""
    location = str(path_or_url)
    if images.has_protocol(location) and location.startswith("file://"):
        location = location[len("file://"):]
    if not images.has_protocol(location):
        location = os.path.abspath(os.path.expanduser(location))
    stem, ext = posixpath.splitext(posixpath.basename(location.rstrip("/")))
    ext = ext.lower()
    if ext not in (".yaml", ".yml", ".json", ".csv"):
        raise SpecError([Problem("spec", "", show(location), "has an unknown extension; use .yaml, .yml, .json or .csv")],
                        source=location)
    base_dir = images.parent_of(location)
    if ext == ".csv":
        await asyncio.to_thread(check_header, location)
        return CollectionSpec(name=slug(stem), model_name=model_name_override or DEFAULT_MODEL_NAME,
                              base_dir=base_dir, source=location, csv=location)

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
    return await spec_from_data(data, source=location, base_dir=base_dir, model_name_override=model_name_override)


async def spec_from_data(data: Mapping[str, Any], *, source: str = "inline spec", base_dir: str | None = None,
                         model_name_override: str | None = None) -> CollectionSpec:
    """A spec from already parsed data (a file's content, or an inline spec from a UI form)."""
    data = dict(data)
    if model_name_override:
        data = _for_model(data, model_name_override)
        data["model_name"] = model_name_override
    data["base_dir"] = data.get("base_dir") or base_dir
    data["source"] = source
    data.pop("csv", None)
    try:
        return CollectionSpec.model_validate(data)
    except ValidationError as exc:
        problems = Problems()
        _add_validation_errors(problems, exc)
        partial = _lenient_spec(data, {"base_dir": data["base_dir"], "source": source})
        await collect_problems(partial, problems)
        raise SpecError(problems.items, source=source, more=problems.more) from None


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
