"""``flaky://``: a local filesystem whose writes fail now and then, like an object store's PUTs.

For the soak (bench/soak.py) only. ``flaky:///abs/path`` is the local folder ``/abs/path``;
each ``pipe_file`` (the archive's one-PUT write) fails with ``OSError`` at a seeded rate:
half of the failures before anything is written, half after the object was written whole
(the PUT succeeded but its answer was lost). Writes stay atomic (temporary name + rename),
as an S3 PUT is. Reads, listings and deletes never fail.

Configured from the environment (so a child process running the flow picks it up):
``FLAKY_FS_RATE`` (share of writes that fail, default 0.05), ``FLAKY_FS_SEED`` and
``FLAKY_FS_LOG`` (a file that gets one line per injected failure: ``before|after <path>``).
Importing this module registers the protocol.
"""

from __future__ import annotations

import os
import random
import threading
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

PROTOCOL = "flaky"


class InjectedWriteError(OSError):
    """A write failure injected by ``flaky://``."""


class FlakyFileSystem(AbstractFileSystem):
    protocol = PROTOCOL
    root_marker = "/"
    cachable = False

    def __init__(self, rate: float | None = None, seed: str | int | None = None, log: str | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.rate = float(os.environ.get("FLAKY_FS_RATE", "0.05") if rate is None else rate)
        seed = os.environ.get("FLAKY_FS_SEED", "0") if seed is None else seed
        self.rng = random.Random(f"{seed}:{os.getpid()}")
        self.log = log if log is not None else os.environ.get("FLAKY_FS_LOG")
        self.local = LocalFileSystem()
        self.lock = threading.Lock()
        self.injected = {"before": 0, "after": 0}

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return path.rstrip("/") or "/"

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self._strip_protocol(name)}"

    def _roll(self) -> str | None:
        with self.lock:
            roll = self.rng.random()
        if roll >= self.rate:
            return None
        return "before" if roll < self.rate / 2 else "after"

    def _inject(self, when: str, path: str) -> None:
        with self.lock:
            self.injected[when] += 1
            if self.log:
                with open(self.log, "a") as handle:
                    handle.write(f"{when} {path}\n")
                    handle.flush()
        raise InjectedWriteError(f"injected write failure ({when} writing) for {path}")

    # -- writes ---------------------------------------------------------------------------
    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        path = self._strip_protocol(path)
        failure = self._roll()
        if failure == "before":
            self._inject("before", path)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{os.path.basename(path)}.flaky-{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as handle:
                handle.write(value)
            os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        if failure == "after":
            self._inject("after", path)

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode:
            raise NotImplementedError("flaky:// writes only through pipe_file")
        return self.local._open(self._strip_protocol(path), mode, **kwargs)

    # -- reads, listings, deletes: delegated ---------------------------------------------
    def cat_file(self, path, start=None, end=None, **kwargs):
        return self.local.cat_file(self._strip_protocol(path), start=start, end=end, **kwargs)

    def info(self, path, **kwargs):
        return self.local.info(self._strip_protocol(path), **kwargs)

    def ls(self, path, detail=True, **kwargs):
        return self.local.ls(self._strip_protocol(path), detail=detail, **kwargs)

    def rm_file(self, path):
        self.local.rm_file(self._strip_protocol(path))

    def _rm(self, path):
        self.local.rm_file(self._strip_protocol(path))

    def makedirs(self, path, exist_ok=False):
        self.local.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def mkdir(self, path, create_parents=True, **kwargs):
        self.local.mkdir(self._strip_protocol(path), create_parents=create_parents, **kwargs)

    def invalidate_cache(self, path=None):
        pass


fsspec.register_implementation(PROTOCOL, FlakyFileSystem, clobber=True)
