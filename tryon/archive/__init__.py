"""The archive: where every output is copied once, verified, and described.

Any fsspec URL works as the root (``s3://bucket/prefix`` through s3fs, ``file://``, a local
path, ``memory://`` in tests). Layout::

    <root>/<collection>/<model_name>/
        report.json  summary.txt  index.html          # the latest run (reports)
        runs/<run-id>/report.json  runs/<run-id>/summary.txt
        _inputs/<content hash>.jpg                    # the gallery's input thumbnails
        <garment>__<model>/                           # an item's folder (items)
            prediction.json                           # pending: written right after /v1/run answers
            output_0.png  output_1.png ...            # verified by reading back (size, sha256)
            result.json                               # written last: a reader never sees half an item
            verdicts.json  takes/<n>/...              # reviewers' verdicts, rejected takes (takes)
        approved.json                                 # the approved items (takes)
    <root>/_index/<key[:2]>/<key>.json                # where a key's outputs are (reuse): after result.json
    <root>/_tryon/...                                 # bookkeeping outside collections (store)

The modules: :mod:`~tryon.archive.records` (what the files hold), :mod:`~tryon.archive.store`
(locations and whole-file I/O), :mod:`~tryon.archive.items`, :mod:`~tryon.archive.reuse` and
:mod:`~tryon.archive.takes`, :mod:`~tryon.archive.reports` (each kind of file above). The archive is
handed each item's key (:func:`tryon.spec.key.item_key`); it never computes one. Nothing written here contains a
base64 body or a secret (:func:`tryon.images.sanitize_inputs`).
"""

from tryon.archive.items import ItemFiles
from tryon.archive.records import (Flags, IndexedOutput, IndexEntry, ItemResult, OutputRecord, PendingRecord,
                                   SubmissionRecord, utcnow)
from tryon.archive.reports import RunFiles
from tryon.archive.reuse import NotReusable
from tryon.archive.store import INDEX_DIR, PENDING_FILE, RESULT_FILE, ArchiveError
from tryon.archive.takes import TakeFiles, Verdict, Verdicts


class Archive(ItemFiles, TakeFiles, RunFiles):
    """An archive root (see :class:`~tryon.archive.store.Store`) with every kind of file it holds."""


__all__ = ["INDEX_DIR", "PENDING_FILE", "RESULT_FILE", "Archive", "ArchiveError", "Flags", "IndexEntry",
           "IndexedOutput", "ItemResult", "NotReusable", "OutputRecord", "PendingRecord", "SubmissionRecord", "Verdict",
           "Verdicts", "utcnow"]
