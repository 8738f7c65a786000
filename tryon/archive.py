"""The archive: where every output is copied once, verified, and described.

Any fsspec URL works as the root (``s3://bucket/prefix`` through s3fs, ``file://``, a local
path, ``memory://`` in tests). Layout::

    <root>/<collection>/<model_name>/
        report.json  summary.txt  index.html          # the latest run
        runs/<run-id>/report.json  runs/<run-id>/summary.txt
        <garment>__<model>/
            prediction.json                           # pending: written right after /v1/run answers
            output_0.png  output_1.png ...            # verified by reading back (size, sha256)
            result.json                               # written last: a reader never sees half an item
    <root>/_index/<key[:2]>/<key>.json                # where a key's outputs are: written after result.json

Every file is written whole or not at all: locally to a temporary name, flushed, fsynced and
renamed; on object stores by one PUT. A failed write is sent again (``Archive.WRITE_ATTEMPTS``).
``result.json`` and ``prediction.json`` are only trusted when their item key matches the item's
current key, so changed inputs or images make a new prediction rather than reusing outputs of
other inputs. Nothing written here contains a base64 body or a secret: data URIs become
``data:image/<fmt>;...sha256=<hex>`` and signed URL parameters are redacted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import posixpath
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tryon import images
from tryon.errors import FashnError
from tryon.spec.ids import LABEL_SEPARATOR, id_problem
from tryon.spec.items import Item
from tryon.spec.key import item_key

DEFAULT_ARCHIVE_URL = "./archive"
RESULT_FILE = "result.json"
PENDING_FILE = "prediction.json"
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.txt"
GALLERY_FILE = "index.html"
INDEX_DIR = "_index"  # cannot be a collection name (ids start with a letter or digit)
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")
_OUTPUT_RE = re.compile(r"^output_\d+\.[a-z0-9]{1,8}$")
_SECRET_PARAM = re.compile(r"(sig|signature|token|key|credential|secret|auth|password|session)", re.IGNORECASE)


class ArchiveError(FashnError):
    """The archive cannot be written or read as needed (named by its URL)."""


class NotReusable(ArchiveError):
    """An index entry whose outputs cannot be reused: missing, or not verified by size and sha256."""


# -- records --------------------------------------------------------------------------------------

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _as_datetime(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value))


def redact_url(url: str) -> str:
    """``url`` with the values of signature-, token- and key-like query parameters redacted."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/:")))


def sanitize_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs safe to archive: no base64 bodies (``data:...sha256=<hex>``), no URL secrets."""
    clean: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, str) and images.is_data_uri(value):
            value = images.describe(value)
        elif isinstance(value, str) and images.is_http(value):
            value = redact_url(value)
        clean[name] = value
    return clean


class OutputRecord(BaseModel):
    """One archived output, verified by reading it back."""

    index: int
    name: str = Field(description="File name in the item's folder, e.g. output_0.png.")
    path: str = Field(description="Path relative to the archive root.")
    url: str = Field(description="Full location (fsspec URL or local path).")
    size: int
    sha256: str


class SubmissionRecord(BaseModel):
    prediction_id: str
    submitted_at: dt.datetime
    attempt: int


class PendingRecord(BaseModel):
    """``prediction.json``: the predictions submitted for an item whose outputs are not archived yet."""

    key: str
    collection: str
    model_name: str
    label: str
    prediction_ids: list[str] = Field(default_factory=list, description="Oldest first; the last is current.")
    submissions: list[SubmissionRecord] = Field(default_factory=list)
    submitted_at: dt.datetime | None = None
    attempts: int = 0
    possible_duplicate_charge: bool = Field(False, description="A submission got an ambiguous answer (5xx, "
                                            "dropped connection): a prediction without a recorded id may exist.")
    recovered_ambiguous: bool = Field(False, description="A submission got an ambiguous answer and its webhook "
                                      "named the prediction, which was adopted rather than paid again.")
    updated_at: dt.datetime = Field(default_factory=utcnow)

    @property
    def prediction_id(self) -> str | None:
        return self.prediction_ids[-1] if self.prediction_ids else None


class Timings(BaseModel):
    submitted_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    archived_at: dt.datetime | None = None
    seconds: float | None = Field(None, description="From submission to archived (or to failure).")


class ItemResult(BaseModel):
    """``result.json``: how an item ended. Written last, after every output is verified."""

    model_config = ConfigDict(extra="ignore")

    key: str
    state: Literal["archived", "failed"]
    collection: str
    model_name: str
    garment_id: str
    model_id: str
    label: str
    prediction_id: str | None = None
    prediction_ids: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict, description="Without image bodies or URL secrets.")
    timings: Timings = Field(default_factory=Timings)
    credits_used: int = 0
    outputs: list[OutputRecord] = Field(default_factory=list)
    error_name: str | None = None
    error_message: str | None = None
    attempts: int = 1
    possible_duplicate_charge: bool = False
    resubmitted_after_404: bool = False
    recovered_ambiguous: bool = Field(False, description="A submission got an ambiguous answer and its prediction "
                                      "was found by its webhook instead of paid for again.")
    reused_from: str | None = Field(None, description="The item folder (relative to the archive root) whose "
                                    "outputs were copied here and verified, for 0 credits.")
    reuse_refused: str | None = Field(None, description="Why an index entry for this key was not used.")

    @classmethod
    def _base(cls, item: Item, key: str, submission: Any) -> dict[str, Any]:
        prediction_id = getattr(submission, "prediction_id", None)
        return dict(
            key=key, collection=item.collection, model_name=item.model_name, garment_id=item.garment_id,
            model_id=item.model_id, label=item.label, prediction_id=prediction_id,
            prediction_ids=[prediction_id] if prediction_id else [], inputs=sanitize_inputs(item.inputs),
            attempts=max(1, int(getattr(submission, "attempt", 1) or 1)),
        )

    @classmethod
    def archived(cls, item: Item, key: str, submission: Any, prediction: Any, outputs: list[OutputRecord], *,
                 completed_at: Any = None, **extra: Any) -> "ItemResult":
        """The result of a completed prediction whose ``outputs`` are archived. ``submission`` has
        ``prediction_id``, ``submitted_at`` (epoch seconds or datetime) and ``attempt``."""
        now = utcnow()
        submitted = _as_datetime(getattr(submission, "submitted_at", None))
        credits = getattr(prediction, "credits_used", None)
        fields = cls._base(item, key, submission)
        if getattr(prediction, "id", None):
            fields["prediction_id"] = prediction.id
            fields["prediction_ids"] = [prediction.id]
        fields.update(
            state="archived", outputs=list(outputs),
            credits_used=int(credits) if credits is not None else len(outputs),  # 1 credit per output image
            timings=Timings(submitted_at=submitted, completed_at=_as_datetime(completed_at) or now, archived_at=now,
                            seconds=round((now - submitted).total_seconds(), 3) if submitted else None),
        )
        fields.update(extra)
        return cls(**fields)

    @classmethod
    def failed(cls, item: Item, key: str, submission: Any, failure: Any, *, resubmitted_after_404: bool = False,
               possible_duplicate_charge: bool = False, credits_used: int | None = None, **extra: Any) -> "ItemResult":
        """The result of an item that ended without outputs; ``failure`` has ``name`` and
        ``message`` (a :class:`~tryon.errors.PredictionFailed`) or is any exception."""
        now = utcnow()
        submitted = _as_datetime(getattr(submission, "submitted_at", None))
        fields = cls._base(item, key, submission)
        if fields["prediction_id"] is None and getattr(failure, "prediction_id", None):
            fields["prediction_id"] = failure.prediction_id
            fields["prediction_ids"] = [failure.prediction_id]
        name = getattr(failure, "name", None)
        fields.update(
            state="failed",
            error_name=name if isinstance(name, str) else type(failure).__name__,
            error_message=str(getattr(failure, "message", None) or failure),
            credits_used=credits_used or 0,  # failed predictions are not charged
            possible_duplicate_charge=possible_duplicate_charge, resubmitted_after_404=resubmitted_after_404,
            timings=Timings(submitted_at=submitted, completed_at=now,
                            seconds=round((now - submitted).total_seconds(), 3) if submitted else None),
        )
        fields.update(extra)
        return cls(**fields)

    @classmethod
    def reused(cls, item: Item, key: str, entry: "IndexEntry", outputs: list[OutputRecord]) -> "ItemResult":
        """The result of an item whose outputs were copied from ``entry``'s item, for 0 credits."""
        now = utcnow()
        fields = cls._base(item, key, None)
        fields.update(state="archived", outputs=list(outputs), credits_used=0, reused_from=entry.folder,
                      prediction_id=entry.prediction_id,
                      prediction_ids=[entry.prediction_id] if entry.prediction_id else [],
                      timings=Timings(completed_at=now, archived_at=now, seconds=0.0))
        return cls(**fields)


class IndexedOutput(BaseModel):
    name: str
    size: int
    sha256: str


class IndexEntry(BaseModel):
    """``_index/<key[:2]>/<key>.json``: where the outputs of an item key are archived.

    Written after that item's ``result.json``, so it never names an item still being written;
    trusted only once a copy of every output verifies against it (a later run may have changed
    or removed the item since)."""

    key: str
    collection: str
    model_name: str
    label: str
    folder: str = Field(description="The item folder, relative to the archive root.")
    prediction_id: str | None = None
    outputs: list[IndexedOutput]
    indexed_at: dt.datetime = Field(default_factory=utcnow)


# -- the archive ----------------------------------------------------------------------------------

def _dumps(model: BaseModel) -> bytes:
    return (model.model_dump_json(indent=2) + "\n").encode("utf-8")


def _is_label(value: str) -> bool:
    garment, sep, model = value.partition(LABEL_SEPARATOR)
    return bool(sep) and id_problem(garment) is None and id_problem(model) is None


def _safe_component(value: str, what: str) -> str:
    if (why := id_problem(value)) is not None:
        raise ArchiveError(f"{what} {value!r} {why}")
    return value


class Archive:
    """An archive root (fsspec URL or local path; ``./archive`` by default).

    ``storage_options`` go to fsspec (for s3fs: ``key``, ``secret``, ``client_kwargs`` with
    ``endpoint_url``...); without them s3fs reads the standard ``AWS_*`` environment.
    """

    #: Attempts of each write: object stores fail transiently, and a write is idempotent (a whole
    #: object or nothing), so a failed one is sent again after ``WRITE_BACKOFF`` × 2^n seconds.
    WRITE_ATTEMPTS = 3
    WRITE_BACKOFF = 0.2

    def __init__(self, url: str = DEFAULT_ARCHIVE_URL, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/") if root not in ("/", "") else root
        self.local = isinstance(self.fs, LocalFileSystem)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple | list) else (self.fs.protocol,)
        # s3fs asks for an object's size (HEAD, and a LIST when it is missing) before each GET unless
        # reads are not split: then a read, found or not, is one GET (bench/reuse_lookup.py).
        self._read_options = {"max_concurrency": 1} if "s3" in protocols else {}

    def __repr__(self) -> str:  # storage options may hold secrets: never shown
        return f"Archive({self.url!r})"

    # -- locations --------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        """Join path parts; the first is a full path (the root, or a folder under it)."""
        parts = tuple(p for p in parts if p)
        return os.path.join(*parts) if self.local else posixpath.join(*parts)

    def model_dir(self, collection: str, model_name: str) -> str:
        return self._join(self.root, _safe_component(collection, "collection name"),
                          _safe_component(model_name, "model name"))

    def item_dir(self, item: Item) -> str:
        _safe_component(item.garment_id, "garment id")
        _safe_component(item.model_id, "model id")
        return self._join(self.model_dir(item.collection, item.model_name), item.label)

    def location(self, path: str) -> str:
        """A path as a user can open it: a local path, or a full fsspec URL."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def link(self, collection: str, model_name: str, relative: str, expires: int) -> str:
        """A link a browser on this machine can open to a file of a collection's model folder: a file
        URL, or a presigned URL valid for ``expires`` seconds (s3fs, gcsfs ...) that grants reading
        that one object, nothing else."""
        path = self._join(self.model_dir(collection, model_name), relative)
        if self.local:
            return Path(path).resolve().as_uri()
        return self.fs.sign(path, expiration=expires)

    def relative(self, path: str) -> str:
        rel = path[len(self.root):] if self.root and path.startswith(self.root) else path
        return rel.replace(os.sep, "/").lstrip("/")

    # -- primitive I/O (run in worker threads) ----------------------------------------------------

    def _write_sync(self, path: str, data: bytes) -> None:
        if self.local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            temp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
            try:
                with open(temp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, path)
            finally:
                if os.path.exists(temp):
                    os.unlink(temp)
            try:  # make the rename itself durable
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
        else:
            self.fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all

    def _read_sync(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path, **self._read_options)
        except FileNotFoundError:
            return None

    def _delete_sync(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _list_sync(self, folder: str) -> list[str]:
        try:
            self.fs.invalidate_cache(folder)
            return [posixpath.basename(p.rstrip("/")) if not self.local else os.path.basename(p)
                    for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []

    async def _write_retrying(self, path: str, data: bytes) -> None:
        for attempt in range(1, self.WRITE_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(self._write_sync, path, data)
                return
            except Exception:
                if attempt == self.WRITE_ATTEMPTS:
                    raise
                await asyncio.sleep(self.WRITE_BACKOFF * 2 ** (attempt - 1))

    async def _write(self, path: str, data: bytes) -> None:
        try:
            await self._write_retrying(path, data)
        except ArchiveError:
            raise
        except Exception as exc:
            raise ArchiveError(f"cannot write {self.location(path)} in archive {self.url}: "
                               f"{type(exc).__name__}: {exc}") from exc

    async def _read(self, path: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._read_sync, path)
        except Exception as exc:
            raise ArchiveError(f"cannot read {self.location(path)} in archive {self.url}: "
                               f"{type(exc).__name__}: {exc}") from exc

    async def _delete(self, path: str) -> None:
        try:
            await asyncio.to_thread(self._delete_sync, path)
        except Exception as exc:
            raise ArchiveError(f"cannot delete {self.location(path)} in archive {self.url}: "
                               f"{type(exc).__name__}: {exc}") from exc

    async def _read_model(self, path: str, cls: type[BaseModel]) -> Any:
        data = await self._read(path)
        if data is None:
            return None
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            # Never treat an unreadable record as absent: that could pay for the item again.
            raise ArchiveError(f"{self.location(path)} is not a valid {cls.__name__} "
                               f"({exc.error_count()} errors); fix or delete it") from exc

    # -- checks -----------------------------------------------------------------------------------

    async def check_writable(self, collection: str) -> None:
        """Write, read back and delete a probe under the collection; a clear :class:`ArchiveError`
        naming the URL otherwise. Call it before anything is spent."""
        probe = self._join(self.root, _safe_component(collection, "collection name"), f".write-probe-{uuid.uuid4().hex}")
        payload = f"tryon write probe {time.time()}".encode()
        try:
            await self._write_retrying(probe, payload)
            back = await asyncio.to_thread(self._read_sync, probe)
            await asyncio.to_thread(self._delete_sync, probe)
        except Exception as exc:
            hint = " (does the bucket or folder exist?)" if isinstance(exc, FileNotFoundError) else ""
            raise ArchiveError(f"archive {self.url} is not writable{hint}: {type(exc).__name__}: {exc}. "
                               "Nothing was submitted.") from exc
        if back != payload:
            raise ArchiveError(f"archive {self.url} did not return what was written to it. Nothing was submitted.")

    # -- bookkeeping outside collections (e.g. the inbox ledger) ----------------------------------

    def _meta_path(self, *parts: str) -> str:
        # "_tryon" cannot be a collection name (ids start with a letter or digit).
        return self._join(self.root, "_tryon", *(_safe_component(p, "record name") for p in parts))

    async def write_meta(self, data: bytes, *parts: str) -> str:
        path = self._meta_path(*parts)
        await self._write(path, data)
        return self.location(path)

    async def read_meta(self, *parts: str) -> bytes | None:
        return await self._read(self._meta_path(*parts))

    # -- items ------------------------------------------------------------------------------------

    async def _key(self, item: Item, key: str | None) -> str:
        return key if key is not None else await item_key(item)

    async def read_result(self, item: Item, key: str | None = None) -> ItemResult | None:
        """The item's ``result.json`` if it was written for the same key (same inputs and images)."""
        result = await self._read_model(self._join(self.item_dir(item), RESULT_FILE), ItemResult)
        if result is None or result.key != await self._key(item, key):
            return None
        return result

    async def read_pending(self, item: Item, key: str | None = None) -> PendingRecord | None:
        """The item's ``prediction.json`` if it was written for the same key."""
        pending = await self._read_model(self._join(self.item_dir(item), PENDING_FILE), PendingRecord)
        if pending is None or pending.key != await self._key(item, key):
            return None
        return pending

    async def record_pending(self, item: Item, key: str, prediction_id: str, *, attempt: int | None = None,
                             submitted_at: Any = None, possible_duplicate_charge: bool | None = None,
                             recovered_ambiguous: bool = False) -> PendingRecord:
        """Write the prediction id durably (call right after ``/v1/run`` answers, before polling).

        ``possible_duplicate_charge`` replaces the record's flag (None: kept): an ambiguous answer
        whose prediction a webhook then named no longer leaves one without an id.
        ``recovered_ambiguous``: this is that prediction (kept once set, so a resumed run reports it).

        Keeps the history of the same key's earlier predictions. A ``result.json`` already there
        (another key, a failure, or a forced redo) is removed, so no reader ever pairs it with the
        outputs this prediction will write.
        """
        folder = self.item_dir(item)
        previous = await self.read_pending(item, key)
        when = _as_datetime(submitted_at) or utcnow()
        attempts = attempt if attempt is not None else (previous.attempts + 1 if previous else 1)
        record = PendingRecord(
            key=key, collection=item.collection, model_name=item.model_name, label=item.label,
            prediction_ids=[*(previous.prediction_ids if previous else []), prediction_id],
            submissions=[*(previous.submissions if previous else []),
                         SubmissionRecord(prediction_id=prediction_id, submitted_at=when, attempt=attempts)],
            submitted_at=when, attempts=attempts,
            possible_duplicate_charge=bool(previous and previous.possible_duplicate_charge)
            if possible_duplicate_charge is None else possible_duplicate_charge,
            recovered_ambiguous=recovered_ambiguous or bool(previous and previous.recovered_ambiguous),
        )
        await self._write(self._join(folder, PENDING_FILE), _dumps(record))
        await self._delete(self._join(folder, RESULT_FILE))
        return record

    async def record_ambiguous(self, item: Item, key: str, *, attempt: int) -> PendingRecord:
        """Write durably that submission ``attempt`` got an ambiguous answer: a prediction whose id
        we never got may exist and be billed. A run killed before the item ends still reports the
        item as a possible duplicate charge, and counts the attempt."""
        folder = self.item_dir(item)
        previous = await self.read_pending(item, key)
        if previous is not None:
            record = previous.model_copy(update={"possible_duplicate_charge": True, "updated_at": utcnow(),
                                                 "attempts": max(previous.attempts, attempt)})
        else:
            record = PendingRecord(key=key, collection=item.collection, model_name=item.model_name, label=item.label,
                                   attempts=attempt, possible_duplicate_charge=True)
        await self._write(self._join(folder, PENDING_FILE), _dumps(record))
        await self._delete(self._join(folder, RESULT_FILE))
        return record

    async def clear_pending(self, item: Item) -> None:
        await self._delete(self._join(self.item_dir(item), PENDING_FILE))

    async def write_output(self, item: Item, index: int, data: bytes, ext: str) -> OutputRecord:
        """Write one output, read it back and compare size and sha256 (:class:`ArchiveError` if not equal)."""
        ext = ext.lower().lstrip(".")
        if not _EXT_RE.match(ext):
            raise ArchiveError(f"output extension {ext!r} is not allowed")
        if index < 0:
            raise ArchiveError(f"output index {index} is negative")
        name = f"output_{index}.{ext}"
        path = self._join(self.item_dir(item), name)
        digest = hashlib.sha256(data).hexdigest()
        await self._write(path, data)
        back = await self._read(path)
        if back is None or len(back) != len(data) or hashlib.sha256(back).hexdigest() != digest:
            got = "nothing" if back is None else f"{len(back)} bytes, sha256 {hashlib.sha256(back).hexdigest()}"
            raise ArchiveError(f"verification failed for {self.location(path)}: wrote {len(data)} bytes, "
                               f"sha256 {digest}; read back {got}")
        return OutputRecord(index=index, name=name, path=self.relative(path), url=self.location(path),
                            size=len(data), sha256=digest)

    async def write_result(self, item: Item, result: ItemResult) -> ItemResult:
        """Write ``result.json`` last, then tidy up: the pending record (its prediction ids are kept
        in the result) and, for an archived item, outputs of earlier predictions not listed."""
        folder = self.item_dir(item)
        pending = await self.read_pending(item, result.key)
        if pending is not None:
            history = [p for p in pending.prediction_ids if p not in result.prediction_ids]
            result = result.model_copy(update={
                "prediction_ids": [*history, *result.prediction_ids],
                "attempts": max(result.attempts, pending.attempts),
                "possible_duplicate_charge": result.possible_duplicate_charge or pending.possible_duplicate_charge,
            })
        await self._write(self._join(folder, RESULT_FILE), _dumps(result))
        if result.state == "archived":
            keep = {o.name for o in result.outputs}
            for name in await asyncio.to_thread(self._list_sync, folder):
                if _OUTPUT_RE.match(name) and name not in keep:
                    await self._delete(self._join(folder, name))
        await self._delete(self._join(folder, PENDING_FILE))
        return result

    async def read_output(self, item: Item, name: str) -> bytes | None:
        if not _OUTPUT_RE.match(name):
            raise ArchiveError(f"{name!r} is not an output file name")
        return await self._read(self._join(self.item_dir(item), name))

    # -- the content-addressed index --------------------------------------------------------------

    def index_path(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise ArchiveError(f"{key!r} is not an item key (64 hex digits)")
        return self._join(self.root, INDEX_DIR, key[:2], f"{key}.json")

    def index_entry(self, result: ItemResult) -> IndexEntry:
        """The entry naming ``result``'s item folder as where its key's outputs are."""
        folder = self._join(self.model_dir(result.collection, result.model_name), result.label)
        return IndexEntry(key=result.key, collection=result.collection, model_name=result.model_name,
                          label=result.label, folder=self.relative(folder), prediction_id=result.prediction_id,
                          outputs=[IndexedOutput(name=o.name, size=o.size, sha256=o.sha256) for o in result.outputs])

    async def write_index(self, result: ItemResult) -> IndexEntry:
        """Index an archived item's outputs under its key (call after its ``result.json``)."""
        entry = self.index_entry(result)
        await self._write(self.index_path(result.key), _dumps(entry))
        return entry

    async def read_index(self, key: str) -> IndexEntry | None:
        """The key's entry, or None; :class:`NotReusable` if it cannot be read as one."""
        data = await self._read(self.index_path(key))
        if data is None:
            return None
        try:
            entry = IndexEntry.model_validate_json(data)
        except ValidationError as exc:
            raise NotReusable(f"index entry {self.location(self.index_path(key))} is not valid "
                              f"({exc.error_count()} errors)") from exc
        if entry.key != key:
            raise NotReusable(f"index entry {self.location(self.index_path(key))} names another key")
        return entry

    def _source_dir(self, entry: IndexEntry) -> str:
        parts = entry.folder.split("/")
        if len(parts) != 3 or id_problem(parts[0]) or id_problem(parts[1]) or not _is_label(parts[2]):
            raise NotReusable(f"index entry names an unsafe folder {entry.folder!r}")
        return self._join(self.root, *parts)

    async def check_source(self, entry: IndexEntry) -> None:
        """The entry's item still holds the key, archived, with the same outputs (its ``result.json``);
        :class:`NotReusable` if not."""
        data = await self._read(self._join(self._source_dir(entry), RESULT_FILE))
        try:
            result = None if data is None else ItemResult.model_validate_json(data)
        except ValidationError:
            result = None
        if result is None or result.key != entry.key or result.state != "archived":
            raise NotReusable(f"{entry.folder} no longer holds these outputs")
        listed = {(o.name, o.size, o.sha256) for o in result.outputs}
        if listed != {(o.name, o.size, o.sha256) for o in entry.outputs}:
            raise NotReusable(f"the index entry does not match {entry.folder}/{RESULT_FILE}")

    def _copy_sync(self, source: str, path: str) -> None:
        if self.local:  # a whole file or nothing, as every local write
            data = self._read_sync(source)
            if data is None:
                raise FileNotFoundError(source)
            self._write_sync(path, data)
        else:
            self.fs.cp_file(source, path)  # s3fs: a server-side CopyObject, no bytes through this process

    async def copy_output(self, entry: IndexEntry, output: IndexedOutput, item: Item) -> OutputRecord:
        """Copy one output of ``entry``'s item into ``item``'s folder and verify it by reading it
        back against the entry's size and sha256; :class:`NotReusable` (and no copy left) if the
        source is missing or the copy differs."""
        if not _OUTPUT_RE.match(output.name):
            raise NotReusable(f"index entry names {output.name!r}, not an output file")
        source = self._join(self._source_dir(entry), output.name)
        path = self._join(self.item_dir(item), output.name)
        try:
            await asyncio.to_thread(self._copy_sync, source, path)
        except FileNotFoundError as exc:
            raise NotReusable(f"{entry.folder}/{output.name} is missing") from exc
        except Exception as exc:
            raise ArchiveError(f"cannot copy {self.location(source)} to {self.location(path)}: "
                               f"{type(exc).__name__}: {exc}") from exc
        back = await self._read(path)
        if back is None or len(back) != output.size or hashlib.sha256(back).hexdigest() != output.sha256:
            await self._delete(path)
            got = "nothing" if back is None else f"{len(back)} bytes, sha256 {hashlib.sha256(back).hexdigest()}"
            raise NotReusable(f"the copy of {entry.folder}/{output.name} does not verify: the index says "
                              f"{output.size} bytes, sha256 {output.sha256}; read back {got}")
        index = int(output.name.split("_", 1)[1].split(".", 1)[0])
        return OutputRecord(index=index, name=output.name, path=self.relative(path), url=self.location(path),
                            size=output.size, sha256=output.sha256)

    async def sizes(self) -> dict[str, int]:
        """Every object under the root and its size, by path relative to the root (one listing:
        on S3 one request per 1000 objects)."""
        def find() -> dict[str, int]:
            self.fs.invalidate_cache()
            listing = self.fs.find(self.root, detail=True)
            return {self.relative(path): int(info.get("size") or 0) for path, info in listing.items()}
        try:
            return await asyncio.to_thread(find)
        except Exception as exc:
            raise ArchiveError(f"cannot list archive {self.url}: {type(exc).__name__}: {exc}") from exc

    async def read_result_in(self, folder: str) -> ItemResult | None:
        """The ``result.json`` of an item folder given relative to the root, or None."""
        return await self._read_model(self._join(self.root, *folder.split("/"), RESULT_FILE), ItemResult)

    # -- reports ----------------------------------------------------------------------------------

    @staticmethod
    def thumbnail_path(name: str) -> str:
        """Where an input's thumbnail is, relative to the gallery."""
        return f"_inputs/{_safe_component(name, 'thumbnail name')}.jpg"

    async def thumbnails(self, collection: str, model_name: str) -> set[str]:
        """The names of the input thumbnails a collection's gallery has already (one listing)."""
        folder = self._join(self.model_dir(collection, model_name), "_inputs")
        names = await asyncio.to_thread(self._list_sync, folder)
        return {name.removesuffix(".jpg") for name in names if name.endswith(".jpg")}

    async def write_thumbnail(self, collection: str, model_name: str, name: str, data: bytes) -> None:
        """An input's thumbnail for the gallery, at :meth:`thumbnail_path`."""
        await self._write(self._join(self.model_dir(collection, model_name), self.thumbnail_path(name)), data)

    async def write_report(self, collection: str, model_name: str, run_id: str, *, report: bytes, summary: bytes,
                           gallery: bytes) -> str:
        """Write a run's ``report.json`` and ``summary.txt`` (also under ``runs/<run-id>/``) and the
        gallery beside them; returns the location of ``report.json``."""
        folder = self.model_dir(collection, model_name)
        run_dir = self._join(folder, "runs", _safe_component(run_id, "run id"))
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
