"""Backfills: run (or re-render) many collections, chosen by list, prefix or glob, and date.

Safe to re-run: archived items are skipped by every collection run, items another collection
archived are copied from it (one payment per distinct pair), and deployment runs are
started with idempotency keys (same spec content and parameters → the same run, never a
second one; raise ``rerun`` to start fresh runs on purpose).

A spend limit holds for the backfill as a whole: its plan (every collection's) is checked against
it before anything is spent, and its subflows share one :class:`~tryon.traffic.budget.Budget`.
"""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import Field

from flows.collection import tryon_collection
from flows.config import resolve_archive, resolve_settings
from flows.launch import bounded, idempotency_key, launch
from flows.params import AS_IN_SPEC, MaxCredits, ModeChoice, ModelChoice, SamplesChoice, given, input_overrides
from tryon.archive import Archive
from tryon.batch import load_and_validate, plan
from tryon.catalog import find_specs, in_range, spec_date, spec_digest
from tryon.process import joined
from tryon.settings import ArchiveSettings
from tryon.spec.problems import SpecError
from tryon.traffic.budget import Budget


WAITING = {"SCHEDULED", "PENDING", "RUNNING", "PAUSED"}  # a collection run started, not waited for (review)


@flow(name="tryon-backfill", description="Run many collections: by list, prefix or glob, and date range.")
async def backfill(
    collections: list[str] = [],  # noqa: B006 (never mutated: the empty form)
    pattern: str = "",
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    model_name: ModelChoice = AS_IN_SPEC,
    mode: ModeChoice = AS_IN_SPEC,
    num_samples: SamplesChoice = 0,
    force: bool = False,
    reuse: bool = True,
    dry_run: bool = False,
    max_concurrent: Annotated[int, Field(ge=1, le=16)] = 2,
    deployment: str = "",
    rerun: Annotated[int, Field(ge=0)] = 0,
    archive: str = "",
    credentials_block: str = "",
    archive_block: str = "",
    max_credits: MaxCredits = 0,
    partial: bool = False,
    review: bool = False,
    max_review_rounds: Annotated[int, Field(ge=1)] = 3,
    publish: str = "",
) -> dict[str, Any]:
    """Backfill collections.

    Args:
        collections: Spec URLs or paths to run.
        pattern: A prefix (every spec under it) or a glob (s3://bucket/specs/2026-*/*.yaml) adding specs.
        date_from: Only specs dated on or after this day (the spec's date, else a date in its folder name).
        date_to: Only specs dated on or before this day.
        model_name: Re-render with this model instead of each spec's (e.g. tryon-v1.6 over a tryon-v1.5 catalogue).
        mode: Set this mode on every item.
        num_samples: Set this many outputs per item (1-4; each costs a credit); 0: as in each spec.
        force: Submit again items already archived (costs credits).
        reuse: Copy outputs another collection archived for the same pair instead of paying again
            (TRYON_REUSE=false turns this off for every run). Collections sharing a pair run as subflows here pay
            for it once.
        dry_run: Plan every collection and check the balance; submit nothing.
        max_concurrent: Collections run at once.
        deployment: Run each collection as a run of this deployment (e.g. tryon-collection/collection) on the
            workers instead of as a subflow here. Subflows share this process's traffic control exactly.
        rerun: Raise to start new deployment runs where an earlier backfill with the same parameters already ran.
        archive: Archive root URL.
        credentials_block: Name of a FashnCredentials block; default: the worker's FASHN_* settings.
        archive_block: Name of a TryonArchive block.
        max_credits: The most credits the whole backfill may be charged, its collections together (subflows only;
            with deployment, set it on the deployment: each run then has its own); 0: the credentials block's,
            then TRYON_MAX_CREDITS, else no limit. A backfill whose plan is above it spends nothing, unless partial.
        partial: Above max_credits, each collection runs items in spec order up to what is left of it and leaves
            the rest for the budget.
        review: Each collection's run waits for its own review (see the collection flow); needs deployment, and the
            backfill does not wait for the reviews: it ends once every collection run has started.
        max_review_rounds: Review rounds per collection.
        publish: On each collection's approval, copy its approved outputs under this fsspec URL.
    """
    if review and not given(deployment):
        raise ValueError("review needs deployment: a collection run waiting for review is a deployment run, "
                         "suspended with no process")
    logger = get_run_logger()
    specs = await find_specs([*collections, *([pattern] if pattern else [])])
    chosen = [url for url in specs if in_range(await spec_date(url), date_from, date_to)]
    logger.info("backfill: %d spec(s) found, %d in the date range", len(specs), len(chosen))
    # Only what differs from the collection flow's defaults (so idempotency keys stay stable).
    parameters = {"archive": archive, "model_name": model_name, "mode": mode, "num_samples": num_samples,
                  "force": force, "reuse": reuse, "dry_run": dry_run, "credentials_block": credentials_block,
                  "archive_block": archive_block, "partial": partial, "review": review,
                  "max_review_rounds": max_review_rounds, "publish": publish}
    parameters = {k: v for k, v in parameters.items()
                  if v != inspect.signature(tryon_collection.fn).parameters[k].default}
    deployment = given(deployment)
    if deployment and max_credits:
        raise ValueError("max_credits holds for a backfill's subflows together; with deployment, set it on the "
                         "deployment (each run keeps to its own)")
    if not deployment:  # one ledger for every collection run here
        settings = await resolve_settings(given(credentials_block))
        budget = parameters["budget"] = Budget(max_credits or settings.max_credits)
        if budget.limit is not None and not partial:  # the backfill as a whole, before any collection spends
            store = await resolve_archive(given(archive), given(archive_block))
            options = dict(model_name=given(model_name), overrides=input_overrides(mode, num_samples), force=force,
                           reuse=reuse and ArchiveSettings().reuse, max_resubmits=settings.max_resubmits)
            needed = sum([await _credits_needed(url, store, **options) for url in chosen])
            if budget.shortfall(needed):
                refusal = budget.refusal(needed, f"the backfill's plan ({len(chosen)} collections)")
                if not dry_run:
                    raise refusal
                logger.warning("%s", refusal)

    async def run(url: str):
        key = idempotency_key("backfill", {"spec": url, **parameters}, await spec_digest(url), rerun) \
            if deployment else None
        return await launch(url, parameters, deployment=deployment, idempotency=key, wait=not review)

    # The subflows run here share one controller per key, one after another too.
    async with joined():
        runs = await bounded([lambda u=url: run(u) for url in chosen], max_concurrent)
    failed = [r.spec for r in runs if r.outcome != "COMPLETED" and not (review and r.outcome in WAITING)]
    if failed:
        return Failed(message=f"{len(failed)} of {len(runs)} collection run(s) did not complete: "  # type: ignore[return-value]
                              + ", ".join(failed))
    return {"selected": len(chosen), "runs": [r.as_dict() for r in runs]}


async def _credits_needed(url: str, store: Archive, *, model_name: str | None, overrides: dict[str, Any],
                          force: bool, reuse: bool, max_resubmits: int) -> int:
    """The most the collection's run would submit for, planned as that run plans it (a spec that
    does not load costs nothing: its run fails before spending)."""
    try:
        collection = await load_and_validate(url, model_name, overrides)
    except SpecError:
        return 0
    return (await plan(collection, store, force=force, max_resubmits=max_resubmits, reuse=reuse)).credits_needed
