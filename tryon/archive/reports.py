"""A collection's run reports: ``report.json``, ``summary.txt`` and the gallery (``index.html``)
of the latest run in ``<root>/<collection>/<model_name>/``, each run's report and summary under
``runs/<run-id>/``, and the gallery's input thumbnails under ``_inputs/``."""

from __future__ import annotations

import json
from typing import Any

from tryon.archive.store import GALLERY_FILE, REPORT_FILE, SUMMARY_FILE, Store, safe_component


class RunFiles(Store):
    """The files a run writes beside its collection's item folders."""

    @staticmethod
    def thumbnail_path(name: str) -> str:
        """Where an input's thumbnail is, relative to the gallery."""
        return f"_inputs/{safe_component(name, 'thumbnail name')}.jpg"

    async def thumbnails(self, collection: str, model_name: str) -> set[str]:
        """The names of the input thumbnails a collection's gallery has already (one listing)."""
        names = await self._list(self._join(self.model_dir(collection, model_name), "_inputs"))
        return {name.removesuffix(".jpg") for name in names if name.endswith(".jpg")}

    async def write_thumbnail(self, collection: str, model_name: str, name: str, data: bytes) -> None:
        """An input's thumbnail for the gallery, at :meth:`thumbnail_path`."""
        await self._write(self._join(self.model_dir(collection, model_name), self.thumbnail_path(name)), data)

    async def write_report(self, collection: str, model_name: str, run_id: str, *, report: bytes, summary: bytes,
                           gallery: bytes) -> str:
        """Write a run's ``report.json`` and ``summary.txt`` (also under ``runs/<run-id>/``) and the
        gallery beside them; returns the location of ``report.json``."""
        folder = self.model_dir(collection, model_name)
        run_dir = self._join(folder, "runs", safe_component(run_id, "run id"))
        await self._write(self._join(run_dir, REPORT_FILE), report)
        await self._write(self._join(run_dir, SUMMARY_FILE), summary)
        await self._write(self._join(folder, REPORT_FILE), report)
        await self._write(self._join(folder, SUMMARY_FILE), summary)
        await self._write(self._join(folder, GALLERY_FILE), gallery)
        return self.location(self._join(folder, REPORT_FILE))

    async def read_report(self, collection: str, model_name: str) -> dict[str, Any] | None:
        """The latest ``report.json`` of a collection and model, as JSON data."""
        data = await self._read(self._join(self.model_dir(collection, model_name), REPORT_FILE))
        return None if data is None else json.loads(data)
