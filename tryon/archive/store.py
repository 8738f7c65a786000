"""The archive's store: where its files are under the root, and how each is written whole or not
at all, read, verified and listed through fsspec.

Locally a file is written to a temporary name, flushed, fsynced and renamed; on object stores by
one PUT. A failed write is sent again (:attr:`Store.WRITE_ATTEMPTS`). A record that cannot be
parsed is an error, never taken as absent (that could pay for an item again).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ValidationError

from tryon.errors import FashnError
from tryon.settings import DEFAULT_ARCHIVE_URL
from tryon.spec.ids import id_problem
from tryon.spec.items import Item

RESULT_FILE = "result.json"
PENDING_FILE = "prediction.json"
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.txt"
GALLERY_FILE = "index.html"
INDEX_DIR = "_index"  # cannot be a collection name (ids start with a letter or digit)
META_DIR = "_tryon"  # the same: bookkeeping outside collections (e.g. the inbox ledger)

Model = TypeVar("Model", bound=BaseModel)


class ArchiveError(FashnError):
    """The archive cannot be written or read as needed (named by its URL)."""


def safe_component(value: str, what: str) -> str:
    """``value`` as one component of a path; :class:`ArchiveError` if it could be anything else."""
    if (why := id_problem(value)) is not None:
        raise ArchiveError(f"{what} {value!r} {why}")
    return value


def dumps(model: BaseModel) -> bytes:
    return (model.model_dump_json(indent=2) + "\n").encode("utf-8")


def mismatch(data: bytes | None, size: int, sha256: str) -> str | None:
    """What was read back, when it is not ``size`` bytes with that ``sha256``; None when it is."""
    if data is not None and len(data) == size and hashlib.sha256(data).hexdigest() == sha256:
        return None
    return "nothing" if data is None else f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"


class Store:
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
        return f"{type(self).__name__}({self.url!r})"

    # -- locations --------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        """Join path parts; the first is a full path (the root, or a folder under it)."""
        parts = tuple(p for p in parts if p)
        return os.path.join(*parts) if self.local else posixpath.join(*parts)

    def model_dir(self, collection: str, model_name: str) -> str:
        return self._join(self.root, safe_component(collection, "collection name"),
                          safe_component(model_name, "model name"))

    def item_dir(self, item: Item) -> str:
        safe_component(item.garment_id, "garment id")
        safe_component(item.model_id, "model id")
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
        if not self.local:
            self.fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all
            return
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

    def _copy_sync(self, source: str, path: str) -> None:
        if self.local:  # a whole file or nothing, as every local write
            data = self._read_sync(source)
            if data is None:
                raise FileNotFoundError(source)
            self._write_sync(path, data)
        else:
            self.fs.cp_file(source, path)  # s3fs: a server-side CopyObject, no bytes through this process

    # -- I/O with the archive's errors ------------------------------------------------------------

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

    async def write_verified(self, path: str, data: bytes) -> str:
        """Write ``data`` at ``path`` (a full path), read it back and compare size and sha256
        (:class:`ArchiveError` if not equal); the sha256."""
        digest = hashlib.sha256(data).hexdigest()
        await self._write(path, data)
        if (got := mismatch(await self._read(path), len(data), digest)) is not None:
            raise ArchiveError(f"verification failed for {self.location(path)}: wrote {len(data)} bytes, "
                               f"sha256 {digest}; read back {got}")
        return digest

    def file_path(self, relative: str) -> str:
        """The full path of a file given relative to the root (as records name them)."""
        return self._join(self.root, *relative.split("/"))

    async def read_relative(self, relative: str) -> bytes | None:
        return await self._read(self.file_path(relative))

    async def _list(self, folder: str) -> list[str]:
        """The names in ``folder`` (none when it does not exist)."""
        return await asyncio.to_thread(self._list_sync, folder)

    async def _read_model(self, path: str, cls: type[Model]) -> Model | None:
        data = await self._read(path)
        if data is None:
            return None
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            # Never treat an unreadable record as absent: that could pay for the item again.
            raise ArchiveError(f"{self.location(path)} is not a valid {cls.__name__} "
                               f"({exc.error_count()} errors); fix or delete it") from exc

    # -- the whole archive ------------------------------------------------------------------------

    async def check_writable(self, collection: str) -> None:
        """Write, read back and delete a probe under the collection; a clear :class:`ArchiveError`
        naming the URL otherwise. Call it before anything is spent."""
        probe = self._join(self.root, safe_component(collection, "collection name"), f".write-probe-{uuid.uuid4().hex}")
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

    def _meta_path(self, *parts: str) -> str:
        return self._join(self.root, META_DIR, *(safe_component(p, "record name") for p in parts))

    async def write_meta(self, data: bytes, *parts: str) -> str:
        """Write a record outside every collection (``_tryon/<parts...>``); its location."""
        path = self._meta_path(*parts)
        await self._write(path, data)
        return self.location(path)

    async def read_meta(self, *parts: str) -> bytes | None:
        return await self._read(self._meta_path(*parts))

    async def delete_meta(self, *parts: str) -> None:
        await self._delete(self._meta_path(*parts))
