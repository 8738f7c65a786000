"""Indexing an archive made before the index existed (``tryon index ARCHIVE_URL``).

One listing of the archive gives every object and its size; each archived item's
``result.json`` already holds its outputs' sizes and sha256 (verified when they were written), so
no image is read here: an entry is written for every key not indexed yet whose outputs are all
listed with their recorded sizes. Entries are verified again on use, by copying. An item whose
outputs were themselves reused is indexed only when no original holds the key.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass

from tryon.archive import INDEX_DIR, RESULT_FILE, Archive, ItemResult


@dataclass
class Indexed:
    """What one indexing pass did."""

    written: int = 0  # keys indexed now
    present: int = 0  # archived items whose key is indexed already
    incomplete: int = 0  # archived items with an output missing or of another size (not indexed)
    not_archived: int = 0  # failed items

    def line(self) -> str:
        return (f"{self.written} key(s) indexed, {self.present} item(s) indexed already, {self.incomplete} item(s) with "
                f"missing outputs not indexed, {self.not_archived} item(s) not archived")


async def index_archive(archive: Archive, *, batch: int = 32) -> Indexed:
    """Write the missing index entries of ``archive``."""
    sizes = await archive.sizes()
    present = {posixpath.basename(p)[:-len(".json")] for p in sizes if p.startswith(f"{INDEX_DIR}/")}
    folders = [posixpath.dirname(p) for p in sizes
               if p.endswith(f"/{RESULT_FILE}") and p.count("/") == 3 and not p.startswith("_")]
    done = Indexed()
    chosen: dict[str, ItemResult] = {}
    for start in range(0, len(folders), batch):
        chunk = folders[start:start + batch]
        for folder, result in zip(chunk, await asyncio.gather(*(archive.read_result_in(f) for f in chunk)), strict=True):
            if result is None or result.state != "archived":
                done.not_archived += 1
            elif result.key in present:
                done.present += 1
            elif any(sizes.get(f"{folder}/{o.name}") != o.size for o in result.outputs) or not result.outputs:
                done.incomplete += 1
            elif result.key not in chosen or (chosen[result.key].reused_from and not result.reused_from):
                chosen[result.key] = result
    for result in chosen.values():
        await archive.write_index(result)
        done.written += 1
    return done
