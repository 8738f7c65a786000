"""Validation: every check of a spec before anything is spent, all problems in one
:class:`~tryon.spec.problems.SpecError`, each naming the row or field and the value."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tryon import images
from tryon.models import IMAGE_FIELDS, INPUT_SCHEMAS, MODELS, input_schema, validate_inputs
from tryon.spec.collection import CollectionSpec
from tryon.spec.csv_rows import CSV_COLUMNS, csv_inputs, csv_rows
from tryon.spec.ids import id_problem
from tryon.spec.problems import Problems, pydantic_message

IMAGE_CHECK_CONCURRENCY = 8


def _row_fields(model_name: str) -> tuple[str, ...]:
    """The inputs a spec's rows set for ``model_name`` (every image input for an unknown name)."""
    return MODELS[model_name].row_fields if model_name in MODELS else IMAGE_FIELDS


def _placeholders(model_name: str, with_model: bool) -> dict[str, str]:
    """Stand-ins for the images the rows give, so a layer of inputs validates on its own."""
    entry = MODELS[model_name]
    fields = entry.row_fields if with_model or not entry.model_optional else (entry.garment_field,)
    return {f: f"https://placeholder.invalid/{f}.jpg" for f in fields}


def _check_inputs(problems: Problems, model_name: str, where: str, prefix: str, inputs: Any,
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
                problems.add(where, prefix.rstrip("."), None, pydantic_message(error))
                continue
            if error.get("type") == "extra_forbidden":
                problems.add(where, f"{prefix}{field}", None, f"is not an input of {model_name} (known: {known})")
            else:
                problems.add(where, f"{prefix}{field}", error.get("input"), pydantic_message(error))


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


def _check_image_ref(problems: Problems, refs: _ImageRefs, base: str | None, where: str, field: str,
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


def _check_header(spec: CollectionSpec, problems: Problems) -> None:
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


def _check_rows(spec: CollectionSpec, problems: Problems, refs: _ImageRefs) -> None:
    optional = spec.model_name in MODELS and MODELS[spec.model_name].model_optional
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


def _check_csv(spec: CollectionSpec, location: str, problems: Problems, refs: _ImageRefs) -> int:
    """Stream a CSV spec's rows; memory grows with distinct ids and images, not with rows."""
    known = input_schema(spec.model_name).model_fields if spec.model_name in INPUT_SCHEMAS else None
    optional = spec.model_name in MODELS and MODELS[spec.model_name].model_optional
    images_of: dict[tuple[str, str], tuple[str, int]] = {}  # (kind, id) -> (image, first row)
    pairs_seen: dict[bytes, int] = {}
    count = 0
    header_checked = False
    for row in csv_rows(location):
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
        layer = {k: v for k, v in csv_inputs(values).items() if known is None or (k in known and k not in IMAGE_FIELDS)}
        _check_inputs(problems, spec.model_name, where, "", layer, bool(values.get("model_image")))
    if count == 0:
        problems.add("rows", "", None, "there are none; a CSV spec needs at least one garment/model row")
    return count


async def _check_images(problems: Problems, refs: _ImageRefs) -> None:
    semaphore = asyncio.Semaphore(IMAGE_CHECK_CONCURRENCY)
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


async def collect_problems(spec: CollectionSpec, problems: Problems) -> int:
    """Add every problem of ``spec`` to ``problems``; the number of items it makes."""
    _check_header(spec, problems)
    refs = _ImageRefs()
    if spec.csv:
        count = await asyncio.to_thread(_check_csv, spec, spec.csv, problems, refs)
    else:
        _check_rows(spec, problems, refs)
        count = (len(spec.garments) * len(spec.models)) if spec.pairs == "all" else len(spec.pairs)
    await _check_images(problems, refs)
    return count


async def validate_spec(spec: CollectionSpec) -> None:
    """Check everything before anything is spent; raise one :class:`~tryon.spec.problems.SpecError`
    with every problem.

    Checks: the collection name and every id are safe object keys; ids are unique per list
    (for a CSV: one image per id, each pair once); pairs name known ids; ``model_name`` is
    known; every layer of inputs is valid for it; every image is readable (checked
    concurrently, at most :data:`IMAGE_CHECK_CONCURRENCY` at a time; http(s) URLs are left to
    the provider).
    """
    problems = Problems()
    count = await collect_problems(spec, problems)
    problems.raise_if_any(spec.source or spec.name)
    spec._item_count = count
