"""The review gate: a flow run waits, suspended, for a reviewer's verdict typed into Prefect's run
input form, then goes on with it.

:func:`review_gate` is called at the end of a flow run of a deployment (suspension needs one: the
run's process exits and the deployment's worker or ``serve`` process runs the flow again from the
top when the run is resumed). It emits ``tryon.review.waiting``, then suspends the run with a form
of three fields: the labels to reject (a multi-select of the collection's labels, the ones the
automatic checks flagged first), a reason, and "approve all". On resume, the run starts again,
reaches the same gate, and gets the typed input back at once instead of suspending (Prefect keeps
each fired suspension's key on the run); on approval it emits ``tryon.review.approved``.

Each round of a review has its own suspension key (``review-<round>``), so a run that is resumed
after its second round replays the first round's answer and waits on, or reads, the second's.
What happens on suspend and resume is in docs/operations.md ("Review gate").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.flow_runs import asuspend_flow_run
from prefect.input import RunInput
from pydantic import Field, create_model


@dataclass(frozen=True)
class ReviewDecision:
    """What the reviewer said in one round: approve all, or reject these labels (with a reason).
    A form sent with neither is neither approved nor a rejection: the caller asks again."""

    round: int
    approved: bool
    rejected: tuple[str, ...] = ()
    reason: str = ""


def review_labels(labels: Sequence[str], flagged: Mapping[str, Sequence[str]]) -> list[str]:
    """The form's choices: flagged labels first, then the others, each in collection order."""
    return [*(label for label in labels if label in flagged), *(label for label in labels if label not in flagged)]


class ReviewInput(RunInput):
    """The fields every review form has; :func:`review_form` narrows ``reject`` to one collection's labels."""

    reject: list[str] = Field(default_factory=list, description="Items to make again (flagged by the checks first).")
    reason: str = Field("", description="Why they are rejected (kept with the verdict).")
    approve_all: bool = Field(False, description="Approve every item as it stands (ignored when items are "
                                                 "selected above).")


def review_form(labels: Sequence[str], flagged: Mapping[str, Sequence[str]]) -> type[ReviewInput]:
    """The run input form for one collection: ``reject`` is a list of the labels' ``Literal``, which
    Prefect's UI renders as a multi-select; the flags and their reasons are the form's description."""
    choices = review_labels(labels, flagged)
    if not choices:
        raise ValueError("a review needs at least one label")
    reject = ReviewInput.model_fields["reject"]
    model = create_model("Review", __base__=ReviewInput,
                         reject=(list[Literal[tuple(choices)]],  # type: ignore[valid-type]
                                 Field(default_factory=list, description=reject.description)))
    return model.with_initial_data(description=_description(len(labels), flagged))


def _description(total: int, flagged: Mapping[str, Sequence[str]]) -> str:
    lines = [f"**Review {total} items.** Select the items to make again and give a reason, "
             "or tick *approve all*."]
    if flagged:
        lines.append("\nFlagged by the automatic checks:\n")
        lines += [f"- `{label}`: {'; '.join(reasons)}" for label, reasons in flagged.items()]
    return "\n".join(lines)


async def review_gate(labels: Sequence[str], flagged: Mapping[str, Sequence[str]], *, collection: str,
                      model_name: str, round: int = 1, timeout: int | None = None) -> ReviewDecision:
    """Wait, suspended, for one round's verdict on ``labels`` (``flagged``: label -> the checks'
    reasons). Must run in a flow run of a deployment; the run's process exits while it waits.

    ``timeout``: seconds before an unanswered review fails the run (None: it waits for ever)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("review_gate runs inside a flow run")
    key = f"review-{round}"
    resource = {"prefect.resource.id": f"tryon.collection.{collection}.{model_name}",
                "prefect.resource.name": collection}
    if not await _suspension_fired(context.flow_run.id, key):  # a run started again on resume asked already
        emit_event(event="tryon.review.waiting", resource=resource,
                   payload={"round": round, "items": len(labels), "flagged": dict(flagged)})
        get_run_logger().info("waiting for review of %s (round %d): %d items, %d flagged",
                              collection, round, len(labels), len(flagged))
    answer = await asuspend_flow_run(wait_for_input=review_form(labels, flagged), key=key, timeout=timeout)
    rejected = tuple(answer.reject)
    decision = ReviewDecision(round, approved=answer.approve_all and not rejected, rejected=rejected,
                              reason=answer.reason)
    if decision.approved:
        emit_event(event="tryon.review.approved", resource=resource, payload={"round": round, "items": len(labels)})
    return decision


async def _suspension_fired(flow_run_id: UUID, key: str) -> bool:
    """True when the flow run was suspended under ``key`` before (the server keeps the keys)."""
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    return key in (flow_run.empirical_policy.pause_keys or set())
