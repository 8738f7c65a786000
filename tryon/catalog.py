"""Finding collection specs in object storage, and remembering which were processed.

Used by the inbox sweep and the backfill flows; no Prefect here. A spec is identified by
its URL and the sha256 of its content, so a spec that changes is run again and one that
does not is run once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable

from pydantic import BaseModel

from tryon import images
from tryon.archive import Archive, utcnow
from tryon.spec.loaders import load_spec
from tryon.spec.problems import SpecError

SPEC_EXTENSIONS = (".yaml", ".yml", ".json", ".csv")
_GLOB_CHARS = re.compile(r"[*?\[]")
_FOLDER_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")


def _find_sync(pattern: str) -> list[str]:
    """Spec files matching a glob, or every spec file under a prefix (recursively)."""
    fs, path = images.open_fs(pattern)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    if _GLOB_CHARS.search(path):
        found = fs.glob(path)
    else:
        found = fs.find(path) if fs.isdir(path) else ([path] if fs.exists(path) else [])
    specs = sorted(p for p in found if posixpath.splitext(p)[1].lower() in SPEC_EXTENSIONS
                   and not posixpath.basename(p).startswith("."))
    return [fs.unstrip_protocol(p) if images.has_protocol(pattern) else p for p in specs]


async def find_specs(patterns: Iterable[str]) -> list[str]:
    """Spec URLs under each prefix or matching each glob, sorted, without duplicates."""
    found: dict[str, None] = {}
    for pattern in patterns:
        for url in await asyncio.to_thread(_find_sync, pattern):
            found.setdefault(url, None)
    return list(found)


def _digest_sync(url: str) -> str:
    fs, path = images.open_fs(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def spec_digest(url: str) -> str:
    """sha256 of a spec file's content."""
    return await asyncio.to_thread(_digest_sync, url)


def folder_date(url: str) -> dt.date | None:
    """A date in the spec's folder names (``.../2026-11-20/spec.yaml`` or ``.../20261120/...``)."""
    for part in reversed(posixpath.dirname(url.split("://", 1)[-1]).split("/")):
        if match := _FOLDER_DATE.search(part):
            try:
                return dt.date(*(int(g) for g in match.groups()))
            except ValueError:
                continue
    return None


async def spec_date(url: str) -> dt.date | None:
    """The spec's ``date`` field, else a date in its folder's name, else ``None``."""
    try:
        spec = await load_spec(url)
    except SpecError:
        spec = None
    if spec is not None and spec.date is not None:
        return spec.date
    return folder_date(url)


def in_range(day: dt.date | None, start: dt.date | None, end: dt.date | None) -> bool:
    """Whether ``day`` is within ``[start, end]``; a spec without a date only matches an open range."""
    if start is None and end is None:
        return True
    if day is None:
        return False
    return (start is None or day >= start) and (end is None or day <= end)


class Processed(BaseModel):
    """What the ledger remembers of one spec."""

    url: str
    digest: str
    outcome: str  # the collection run's final state type, or "invalid"
    message: str = ""
    flow_run_id: str | None = None
    at: dt.datetime


class InboxLedger:
    """Which inbox specs were processed, kept in the archive under ``_tryon/inbox/``."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    @staticmethod
    def _name(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()[:32] + ".json"

    async def get(self, url: str) -> Processed | None:
        data = await self.archive.read_meta("inbox", self._name(url))
        return Processed.model_validate_json(data) if data is not None else None

    async def is_processed(self, url: str, digest: str) -> bool:
        done = await self.get(url)
        return done is not None and done.digest == digest

    async def record(self, url: str, digest: str, outcome: str, message: str = "",
                     flow_run_id: str | None = None) -> Processed:
        entry = Processed(url=url, digest=digest, outcome=outcome, message=message[:2000],
                          flow_run_id=flow_run_id, at=utcnow())
        await self.archive.write_meta((json.dumps(entry.model_dump(mode="json"), indent=2) + "\n").encode(),
                                      "inbox", self._name(url))
        return entry
