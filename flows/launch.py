"""Starting collection runs from other flows: as subflows in this process (they share the
key's traffic controller exactly), or as runs of a deployment (each on a worker) with
idempotency keys, so a re-run of the caller never starts the same run twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from prefect.client.schemas.objects import State
from prefect.deployments.flow_runs import arun_deployment

from flows.collection import tryon_collection

T = TypeVar("T")


@dataclass
class Launched:
    spec: str
    state: State
    flow_run_id: str | None

    @property
    def outcome(self) -> str:
        return self.state.type.value

    def as_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "state": self.outcome, "message": self.state.message or "",
                "flow_run_id": self.flow_run_id}


async def bounded(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``jobs`` at most ``limit`` at a time; results in order."""
    gate = asyncio.Semaphore(max(1, limit))

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


def idempotency_key(kind: str, parameters: dict[str, Any], digest: str, rerun: int) -> str:
    """Same spec content and parameters → same key → the same deployment run, never a second one."""
    material = json.dumps({"kind": kind, "parameters": parameters, "digest": digest, "rerun": rerun},
                          sort_keys=True, default=str)
    return f"tryon-{kind}-{hashlib.sha256(material.encode()).hexdigest()[:40]}"


async def launch(spec: str, parameters: dict[str, Any], *, deployment: str | None = None,
                 idempotency: str | None = None, wait: bool = True) -> Launched:
    """Run the collection flow on ``spec``: as a subflow, or as a run of ``deployment`` (waited for,
    unless not ``wait``: a run waiting for review must not hold this one)."""
    name = posixpath.basename(spec.rstrip("/"))
    if deployment is None:
        state = await tryon_collection.with_options(flow_run_name=f"{name}")(
            spec=spec, **parameters, return_state=True)
        return Launched(spec, state, str(state.state_details.flow_run_id))
    flow_run = await arun_deployment(deployment, parameters={"spec": spec, **parameters},
                                     idempotency_key=idempotency, flow_run_name=name, timeout=None if wait else 0,
                                     poll_interval=2)
    return Launched(spec, flow_run.state, str(flow_run.id))
