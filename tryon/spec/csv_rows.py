"""CSV specs: a CSV of explicit pairs, streamed.

Columns ``garment_id, garment_image, model_id, model_image`` plus optional input columns such
as ``category``, ``mode``, ``seed``, ``num_samples``; empty cells mean "not set". A CSV is never
loaded whole: its rows are streamed one at a time (by :func:`tryon.spec.items.iter_items` and
:func:`tryon.spec.validation.validate_spec`). In messages a CSV's ``row N`` is the spreadsheet
row (the header is row 1).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tryon import images
from tryon.spec.problems import Problem, Problems, SpecError, show

CSV_COLUMNS = ("garment_id", "garment_image", "model_id", "model_image")


def _open_csv(location: str) -> Any:
    fs, path = images.open_fs(location)
    return io.TextIOWrapper(fs.open(path, "rb"), encoding="utf-8-sig", newline="")


def check_header(location: str) -> None:
    """Raise :class:`SpecError` if the CSV cannot be read or its header lacks or repeats columns."""
    try:
        handle = _open_csv(location)
    except FileNotFoundError:
        raise SpecError([Problem("spec", "", show(location), "not found")], source=location) from None
    except Exception as exc:
        raise SpecError([Problem("spec", "", show(location), f"cannot be read ({type(exc).__name__}: {exc})")],
                        source=location) from None
    problems = Problems()
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


@dataclass
class CsvRow:
    row: int  # spreadsheet row: the header is row 1
    values: dict[str, str] | None
    problem: str | None = None


def csv_rows(location: str) -> Iterator[CsvRow]:
    """Stream a CSV spec's data rows (one at a time; the file is never held whole)."""
    with _open_csv(location) as handle:
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
                    yield CsvRow(row, None, f"has {len(cells)} fields; the header has {len(header)}")
                    continue
                yield CsvRow(row, {k: v.strip() for k, v in zip(header, cells, strict=True)})
        except (csv.Error, UnicodeDecodeError) as exc:
            yield CsvRow(reader.line_num, None, f"is not valid CSV: {exc}")


def csv_inputs(values: Mapping[str, str]) -> dict[str, str]:
    """A row's input columns that are set."""
    return {k: v for k, v in values.items() if k not in CSV_COLUMNS and v != ""}
