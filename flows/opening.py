"""What a collection run opens before its first item (:func:`open_run`): its runtime, run lease and
drain, its membership of the key, and its plan, funded and checked against the balance.

The flow opens it for itself. ``tryon run`` opens it before Prefect is imported, starts the first
items' lives (:func:`tryon.batch.begin`) and hands it to the flow run it then starts, which goes on
from it (:mod:`flows.watch`): the first predictions run while Prefect starts. Nothing here imports
Prefect when told where the key's membership is kept (``embedded_home`` or ``api``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from flows.coordination import key_membership
from flows.drain import drain_on_signals
from flows.prefect_api import PrefectApi
from flows.watch import RunWatcher
from flows.webhooks import webhook_events
from tryon.archive import Archive
from tryon.batch import Plan, end_begun, plan, require_balance
from tryon.drain import Drain
from tryon.errors import OverBudget
from tryon.lease import RunLease, adopt
from tryon.process import joined
from tryon.report import new_run_id
from tryon.runtime import Runtime, open_runtime
from tryon.settings import ArchiveSettings, FashnSettings
from tryon.spec.collection import CollectionSpec
from tryon.traffic.budget import Budget


@dataclass
class OpenRun:
    """A run opened and planned: what its items run with."""

    run_id: str
    collection: CollectionSpec
    archive: Archive
    runtime: Runtime
    planned: Plan
    drain: Drain


@asynccontextmanager
async def open_run(collection: CollectionSpec, settings: FashnSettings, store: Archive, *, force: bool, reuse: bool,
                   partial: bool, budget: Budget, dry_run: bool = False, watcher: RunWatcher | None = None,
                   embedded_home: Path | None = None, api: PrefectApi | None = None) -> AsyncIterator[OpenRun]:
    """Open a run of ``collection`` and plan it; before anything is spent, refuse a plan above the
    ``budget`` (unless ``partial``) or the balance. ``embedded_home``: the home of the Prefect
    server embedded in the process, when the run is to use one; ``api``: the Prefect server's, when
    it uses another (neither: as Prefect's settings say; :func:`flows.coordination.key_membership`)."""
    run_id = new_run_id()
    async with joined() as process, open_runtime(process, settings, store, budget=budget) as runtime, \
            webhook_events(runtime), RunLease(store, run_id, ArchiveSettings().run_lease), \
            drain_on_signals(process, runtime.traffic) as drain:
        runtime.owner = run_id  # named in its pending records: a reconciler leaves them to this run
        # Joined before planning (a newcomer's wait overlaps it), left when the run closes.
        if watcher is not None:
            watcher.waiting("joining the key")
        async with key_membership(runtime.traffic, settings.key_fingerprint(), settings.share_staleness,
                                  embedded_home=embedded_home, api=api):
            planned = await plan(collection, store, force=force, max_resubmits=runtime.max_resubmits,
                                 reuse=reuse and ArchiveSettings().reuse)
            await adopt(store, planned.states, run_id)
            try:
                planned.fund(budget, partial=partial)
            except OverBudget:
                if not dry_run:
                    raise
            if planned.credits_needed or dry_run:
                planned.balance = (await runtime.client.credits()).total
            if planned.credits_needed and not dry_run:
                require_balance(planned.balance or 0, planned.credits_needed)
            try:
                yield OpenRun(run_id, collection, store, runtime, planned, drain)
            except (asyncio.CancelledError, KeyboardInterrupt):  # stop at once: pending records are kept
                await end_begun(runtime, cancel=True)
                raise
            finally:  # lives begun and never taken (the flow run did not start) archive what they paid for
                await end_begun(runtime)
