"""Publishing an approved collection: each approved output copied under a stable flat name that a
shop's CMS can pick up, ``<url>/<collection>/<garment>__<model>_<n>.png`` (``n`` the output's
index), and verified by reading it back (size and sha256, as every copy in the archive)."""

from __future__ import annotations

import posixpath

from tryon.archive import Archive, ArchiveError
from tryon.archive.store import mismatch, safe_component
from tryon.verdicts import Approved


def published_name(label: str, index: int, path: str) -> str:
    return f"{label}_{index}{posixpath.splitext(path)[1]}"


async def publish(approved: Approved, archive: Archive, url: str) -> list[str]:
    """Copy every approved output to ``url`` (any fsspec URL or a local path, its credentials from
    the environment as fsspec reads them); their locations."""
    target = Archive(url)
    written = []
    for item in approved.items:
        for index, (path, sha256) in enumerate(zip(item.outputs, item.sha256)):
            data = await archive.read_relative(path)
            if data is None or mismatch(data, len(data), sha256) is not None:
                raise ArchiveError(f"{item.label}: {path} does not match approved.json (sha256 {sha256})")
            dest = target.file_path(f"{safe_component(approved.collection, 'collection name')}/"
                                    f"{published_name(item.label, index, path)}")
            await target.write_verified(dest, data)
            written.append(target.location(dest))
    return written
