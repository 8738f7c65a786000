"""What is wrong with a spec: each :class:`Problem` names the row or field and the value, and
one :class:`SpecError` lists them all, before anything is spent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tryon import images
from tryon.errors import FashnError

MAX_PROBLEMS = 1000  # listed in a SpecError; the rest are counted
_SHOW_LIMIT = 120


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


def show(value: Any) -> str:
    """The value as a short ``repr`` (data URIs never shown whole)."""
    if isinstance(value, str) and images.is_data_uri(value):
        value = value[:40] + "..."
    text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


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


class Problems:
    """A bounded list of problems, each reported once."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.more = 0
        self.reported: set[tuple[str, str, str]] = set()

    def add(self, where: str, field: str, value: Any, message: str) -> None:
        if (where, field, message) in self.reported:
            return
        self.reported.add((where, field, message))
        shown = None if value is None else show(value)
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(Problem(where, field, shown, message))
        else:
            self.more += 1

    def raise_if_any(self, source: str | None) -> None:
        if self.items:
            raise SpecError(self.items, source=source, more=self.more)


def pydantic_message(error: Mapping[str, Any], known: str = "") -> str:
    """A pydantic error as a problem's message (``is missing (required)``, ``is invalid: ...``)."""
    kind = error.get("type", "")
    if kind == "missing":
        return "is missing (required)"
    if kind == "extra_forbidden":
        return f"is not a known field{f' (known: {known})' if known else ''}"
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    return f"is invalid: {message[:1].lower()}{message[1:]}"
