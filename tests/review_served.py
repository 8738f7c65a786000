"""A flow behind the review gate and the collection flow, served with ``prefect.serve``
(tests/test_review_gate.py runs this file in a subprocess). Each process that runs the flow appends its pid to ``<out>/processes.log``; the
decisions it got are written to ``<out>/decisions.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from prefect import flow

from flows.review import review_gate


@flow(name="review-gate-probe")
async def gated(labels: list[str], flagged: dict[str, list[str]], out: str, rounds: int = 2) -> list[dict]:
    with open(Path(out) / "processes.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    decisions = []
    for round in range(1, rounds + 1):
        decision = await review_gate(labels, flagged, collection="autumn", model_name="tryon-v1.6", round=round)
        decisions.append(asdict(decision))
        if decision.approved:
            break
    (Path(out) / "decisions.json").write_text(json.dumps(decisions))
    return decisions


if __name__ == "__main__":
    from prefect import serve

    from flows.collection import tryon_collection

    serve(gated.to_deployment(name="review"), tryon_collection.to_deployment(name="review"))
