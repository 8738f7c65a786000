"""A key's membership kept in a file on this machine (:class:`FileMembership`).

For processes whose Prefect server runs inside themselves (``tryon run`` with no server): that
server stops with its process and forgets its leases, so it cannot count a member that has gone.
The file outlives every member: a member's lease is a line of it (its id and the wall-clock
moment the lease ends), read and rewritten whole under an exclusive lock, so a member killed at
any moment is still counted until its lease ends, as :mod:`tryon.traffic.share` requires. It
counts the processes of this machine that use the same file (the same ``PREFECT_HOME``), as the
embedded server's database did.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

Leases = dict[str, float]  # member id -> wall-clock end of its lease


class FileMembership:
    """One line of ``path`` per process using the key, under a lease that lapses if not renewed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.me = uuid.uuid4().hex

    async def join(self, lease: float) -> float:
        await self._change(lambda leases, now: leases.__setitem__(self.me, now + lease))
        return lease

    async def renew(self, lease: float) -> float:
        return await self.join(lease)

    async def count(self) -> int:
        return await self._change(lambda leases, now: None)

    async def leave(self) -> None:
        await self._change(lambda leases, now: leases.pop(self.me, None))

    async def _change(self, change: Callable[[Leases, float], object]) -> int:
        return await asyncio.to_thread(self._change_sync, change)

    def _change_sync(self, change: Callable[[Leases, float], object]) -> int:
        """Apply ``change`` to the live leases under the file's lock; how many live after it. An
        unreadable file raises (a member that cannot count admits nothing): every write is whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            now = time.time()
            leases = json.loads(self.path.read_text()) if self.path.exists() else {}
            leases = {member: until for member, until in leases.items() if until > now}
            change(leases, now)
            temp = self.path.with_name(f".{self.path.name}.{self.me}")
            temp.write_text(json.dumps(leases))
            os.replace(temp, self.path)
            return len(leases)

    def __repr__(self) -> str:
        return f"FileMembership({str(self.path)!r})"
