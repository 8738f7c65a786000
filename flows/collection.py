"""The per-collection flow: a collection goes in; every output ends archived once, or its item
ends failed with the reason in the report.

Read top to bottom: load and validate the spec, check the archive is writable, plan every item
once and check the spend limit and the balance cover the run (all before anything is spent), run
every planned item through its life (:mod:`tryon.item`, one Prefect task each) under the key's
shared traffic control and the run's budget, then write the report, gallery and artifacts. With
``review``, the run then waits, suspended, for a reviewer (:mod:`flows.review`): rejected items get
a new take (:mod:`tryon.takes`) and the reviewer is asked again; approval writes approved.json and
publishes.
"""

from __future__ import annotations

from contextlib import aclosing, nullcontext
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.events import emit_event
from prefect.states import Failed, State
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from flows import artifacts
from flows.config import resolve_archive, resolve_settings
from flows.drain import cancelled_state, watching_own_state
from flows.opening import OpenRun, open_run
from flows.params import (AS_IN_SPEC, InlineCollection, MaxCredits, ModeChoice, ModelChoice, SamplesChoice, given,
                          input_overrides)
from flows.review import ReviewDecision, review_gate
from flows.tasks import tryon_item
from flows.watch import RunWatcher, begun_of, watcher_of
from tryon.archive import Archive
from tryon.batch import load_and_validate, run_items, save_report
from tryon.publish import publish as publish_approved
from tryon.report import RunReport
from tryon.settings import FashnSettings
from tryon.spec.collection import CollectionSpec
from tryon.traffic.budget import Budget
from tryon.verdicts import approve, flagged, reject, standings

@flow(name="tryon-collection",
      description="Try on every garment × model pair of a collection and archive each output once.")
async def tryon_collection(
    spec: str = "",
    inline_spec: InlineCollection = InlineCollection(),  # noqa: B008 (an immutable default: the empty form)
    archive: str = "",
    model_name: ModelChoice = AS_IN_SPEC,
    mode: ModeChoice = AS_IN_SPEC,
    num_samples: SamplesChoice = 0,
    dry_run: bool = False,
    force: bool = False,
    reuse: bool = True,
    credentials_block: str = "",
    archive_block: str = "",
    max_credits: MaxCredits = 0,
    partial: bool = False,
    budget: SkipJsonSchema[Budget | None] = None,
    review: bool = False,
    max_review_rounds: Annotated[int, Field(ge=1)] = 3,
    publish: str = "",
) -> dict[str, Any]:
    """Run one collection.

    Args:
        spec: Path or fsspec URL (s3://...) of the collection spec: YAML, JSON or CSV. Give this or inline_spec.
        inline_spec: The collection itself, typed in the form. Give this or spec.
        archive: Archive root URL; empty: the archive block, then TRYON_ARCHIVE_URL, then ./archive.
        model_name: Use this model instead of the spec's (re-render a catalogue with a newer model).
        mode: Set this mode on every item (over the spec's inputs).
        num_samples: Set this many outputs per item (1-4; each output costs a credit); 0: as in the spec.
        dry_run: Validate, plan and check the balance only; submit nothing.
        force: Submit again items that are already archived (costs credits).
        reuse: Copy the outputs of items another collection archived with the same model and inputs instead of
            paying again (TRYON_REUSE=false turns this off for every run).
        credentials_block: Name of a FashnCredentials block; empty: the worker's FASHN_* settings.
        archive_block: Name of a TryonArchive block (URL and storage credentials).
        max_credits: The most credits this run may be charged (a submission is sent only if it fits, ambiguous
            answers counted at their worst); 0: the credentials block's, then TRYON_MAX_CREDITS, else no limit.
            A plan above it spends nothing, unless partial.
        partial: When the plan is above max_credits, run items in spec order up to the limit and leave the rest
            for the budget (reported, not failed; a run with a larger limit takes them).
        budget: The spend limit shared with other runs of this process (a backfill's subflows); not a form field.
        review: After the run, wait (suspended, holding no worker) for a reviewer's verdict in the run's input
            form: rejected items get a new take and the form asks again; approval writes approved.json.
        max_review_rounds: Review rounds before the run gives up unapproved.
        publish: On approval, copy each approved output to this fsspec URL as <collection>/<label>_<n>.png.
    """
    inline = inline_spec if inline_spec is not None and not inline_spec.empty else None
    if bool(given(spec)) == (inline is not None):
        raise ValueError("give exactly one of spec (a path or URL) and inline_spec")
    source = inline.as_spec_data() if inline is not None else spec
    watcher = watcher_of(flow_run.get_id())  # the terminal that started this run, if one did
    begun = begun_of(flow_run.get_id())  # what that terminal opened for it, its first items running
    if begun is not None:
        collection, store, budget = begun.collection, begun.archive, begun.runtime.budget
    else:
        collection = await load_and_validate(source, given(model_name), input_overrides(mode, num_samples))
        store = await resolve_archive(given(archive), given(archive_block))
        await store.check_writable(collection.name)
    settings = await resolve_settings(given(credentials_block))
    if budget is None:
        budget = Budget(max_credits or settings.max_credits)
    once = dict(watcher=watcher, budget=budget, partial=partial, reuse=reuse)
    outcome = await _run_once(collection, settings, store, dry_run=dry_run, force=force, begun=begun, **once)
    if dry_run or not review or isinstance(outcome, State):
        return outcome
    for round in range(1, max_review_rounds + 1):
        decision = await _review_round(collection, store, round)
        if decision.approved:
            return await _approve(collection, store, round, given(publish), outcome)
        # A run resumed later starts again from the top: its items are skipped, each rejection
        # recorded once (by its round), and each take made once.
        outcome = await _run_once(collection, settings, store, dry_run=False, force=False, **once)
        if isinstance(outcome, State):
            return outcome
    return Failed(message=f"{collection.name}: not approved after {max_review_rounds} review rounds")  # type: ignore[return-value]


def _review_id(round: int) -> tuple[str, str]:
    """Who answers a round (the flow run, by name) and the round's identity (run id and round)."""
    run = FlowRunContext.get().flow_run  # type: ignore[union-attr]
    return f"flow run {run.name}", f"{run.id}/review-{round}"


async def _review_round(collection: CollectionSpec, store: Archive, round: int) -> ReviewDecision:
    """Ask the reviewer (suspended: no process while waiting); record what was rejected."""
    items = await standings(collection, store)
    decision = await review_gate([s.label for s in items], flagged(items), collection=collection.name,
                                 model_name=collection.model_name, round=round)
    if decision.rejected:
        by, review_id = _review_id(round)
        await reject(collection, store, decision.rejected, reason=decision.reason, by=by, review=review_id)
        get_run_logger().info("round %d: %d items rejected (%s); making new takes", round, len(decision.rejected),
                              decision.reason or "no reason given")
    return decision


async def _approve(collection: CollectionSpec, store: Archive, round: int, url: str | None,
                   outcome: dict[str, Any]) -> dict[str, Any]:
    by, review_id = _review_id(round)
    approved = await approve(collection, store, by=by, review=review_id)
    published = await publish_approved(approved, store, url) if url else []
    get_run_logger().info("%s approved: %d items%s", collection.name, len(approved.items),
                          f", published to {url}" if url else "")
    return {**outcome, "approved": len(approved.items), "published": len(published)}


async def _run_once(collection: CollectionSpec, settings: FashnSettings, store: Archive, *, dry_run: bool,
                    force: bool, reuse: bool, partial: bool, budget: Budget, watcher: RunWatcher | None,
                    begun: OpenRun | None = None) -> dict[str, Any] | State:
    """Open and plan the run (or go on from ``begun``), run every planned item, write the report,
    gallery and artifacts."""
    logger = get_run_logger()
    opening = nullcontext(begun) if begun is not None else open_run(
        collection, settings, store, force=force, reuse=reuse, partial=partial, budget=budget, dry_run=dry_run,
        watcher=watcher)
    async with opening as run, watching_own_state(run.drain):
        runtime, planned, drain = run.runtime, run.planned, run.drain
        logger.info("%s: %s", collection.name, planned.line())
        if dry_run:
            await artifacts.publish_plan(collection.name, planned)
            return {"dry_run": True, **planned.as_dict()}
        report = RunReport.start(collection.name, collection.model_name, run.run_id)
        report.max_credits = budget.limit
        report.credits_estimated, report.credits_estimate_exact = planned.credits_needed, planned.credits_exact
        tracker = await artifacts.ProgressTracker.create(collection.name, total=len(planned.states))
        if watcher is not None:
            watcher.started(runtime.traffic, [(s.item.model_name, s.item.mode) for s in planned.states])
        async with aclosing(run_items(runtime, planned, run_one=tryon_item, drain=drain)) as entries:
            async for entry in entries:
                report.add(entry)
                await tracker.update(report)
                if watcher is not None:
                    await watcher.progress(report)
        await tracker.update(report, force=True)
        report.finish()
        location = await save_report(store, report, (state.item for state in planned.states))
        gallery = location.rsplit("/", 1)[0] + "/index.html" if "/" in location else "index.html"
        await artifacts.publish_results(report, location, gallery)
        logger.info("%s; report at %s", report.summary_line(), location)
        if watcher is not None:
            watcher.saved(location)
        if drain.requested:
            return cancelled_state(drain, f"{report.summary_line()}; report at {location}")
        failed = report.totals.get("failed", 0)
        resource = {"prefect.resource.id": f"tryon.collection.{collection.name}.{collection.model_name}",
                    "prefect.resource.name": collection.name}
        if unfunded := report.unfunded():
            emit_event(  # e.g. notify: raise the limit and run again
                event="tryon.collection.budget-reached", resource=resource,
                payload={**report.totals_dict(location), "charged": budget.charged, "held": budget.held,
                         "credits_left_for_budget": sum(e.credits_needed or 0 for e in unfunded)})
        emit_event(  # for automations, e.g. notify on tryon.collection.failed
            event=f"tryon.collection.{'failed' if failed else 'completed'}",
            resource=resource, payload={**report.totals_dict(location), "gallery": gallery},
        )
        if failed:
            return Failed(message=f"{report.summary_line()}; report at {location}")  # type: ignore[return-value]
        return report.totals_dict(location)
