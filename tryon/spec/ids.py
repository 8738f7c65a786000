"""Ids and labels: a collection name or a garment or model id is safe as an object key; an
item's label joins its garment and model ids with :data:`LABEL_SEPARATOR`."""

from __future__ import annotations

import re
from typing import Any

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SAFE_ID_HINT = "use letters, digits, '-', '_', '.'"
LABEL_SEPARATOR = "__"


def id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an id (or collection name), or ``None``."""
    if not isinstance(value, str):
        return "must be a string"
    if value == "":
        return f"is empty; an id is needed ({_SAFE_ID_HINT})"
    if not _SAFE_ID.match(value) or ".." in value:
        return f"is not safe as an object key ({_SAFE_ID_HINT}; start with a letter or digit; no '..'; at most 128)"
    if LABEL_SEPARATOR in value:
        return f"contains {LABEL_SEPARATOR!r}, which separates garment and model in folder names"
    return None


def slug(text: str) -> str:
    """``text`` made safe as an id (for names taken from file names)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    cleaned = re.sub(r"\.{2,}", ".", cleaned).replace(LABEL_SEPARATOR, "_")
    return cleaned[:128] or "collection"
