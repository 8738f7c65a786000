"""Webhooks over real parts: the flow's in-process receiver on loopback, the emulator posting to
it, a real Prefect server. Completions are confirmed by one status call each; ambiguous answers
are recovered by their webhook (never paid twice); lost webhooks cost time, never an image; the
secret and the callback tokens appear in no log line, report or archive object."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from tests.collections import write_collection
from tests.fixtures.emulator import TIME_SCALE

CANARY = "canary-webhook-secret-0123456789"


async def run_collection(tmp_path: Path, monkeypatch, *, garments: int, models: int, name: str) -> dict:
    from flows.collection import tryon_collection

    monkeypatch.setenv("TRYON_WEBHOOK_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("TRYON_WEBHOOK_SECRET", CANARY)
    spec = write_collection(tmp_path, name=name, garments=garments, models=models)
    state = await tryon_collection(spec=str(spec), archive=str(tmp_path / "archive"), return_state=True)
    assert state.is_completed(), state.message
    return json.loads((tmp_path / "archive" / name / "tryon-v1.6" / "report.json").read_text())


async def test_webhooks_confirm_each_completion_with_one_status_call_and_leak_no_token(
        prefect_server, make_emulator, env_for, tmp_path, monkeypatch):
    emulator = make_emulator()
    env_for(emulator, TIME_SCALE)
    lines: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    watched = [logging.getLogger(name) for name in ("", "httpx", "tryon", "prefect", "uvicorn")]
    levels = [logger.level for logger in watched]
    for logger in watched:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        report = await run_collection(tmp_path, monkeypatch, garments=4, models=3, name="pushed")
    finally:
        for logger, level in zip(watched, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
    logged = "\n".join(lines)
    assert report["totals"]["archived"] == 12
    records = emulator.predictions()
    assert len(records) == 12 and all(r["webhook"] == "delivered" for r in records)
    calls = [r["status_calls"] for r in records]
    assert sum(calls) / len(calls) <= 1.5, calls
    assert emulator.stats()["requests"]["status"].get("429", 0) == 0
    # No secret and no token anywhere: log lines, the report, the archive's objects.
    text = logged + "".join(p.read_text(errors="ignore") for p in (tmp_path / "archive").rglob("*")
                                 if p.is_file() and p.suffix in (".json", ".txt", ".html", ".md"))
    assert "webhook_url=%5Bhidden%5D" in logged, "httpx logged the submissions, without their callback URL"
    assert CANARY not in text and "&attempt=" not in text and "attempt%3D" not in text


async def test_ambiguous_answers_are_recovered_by_their_webhook_and_never_paid_twice(
        prefect_server, make_emulator, env_for, tmp_path, monkeypatch):
    emulator = make_emulator(seed=3, faults={"server_error_after_rate": 0.25, "drop_after_rate": 0.15})
    env_for(emulator, TIME_SCALE)
    report = await run_collection(tmp_path, monkeypatch, garments=4, models=4, name="ambiguous")
    records = emulator.predictions()
    ambiguous = [r for r in records if r["answer"] != "ok"]
    assert ambiguous, "the seed injects some"
    assert report["totals"]["archived"] == 16
    assert len(records) == 16, "no prediction was paid twice"
    assert max(Counter(r["hash"] for r in records).values()) == 1
    assert len(report["recovered_ambiguous"]) == len(ambiguous)
    assert report["possible_duplicate_charges"] == []


async def test_lost_webhooks_cost_time_never_an_image(prefect_server, make_emulator, env_for, tmp_path, monkeypatch):
    emulator = make_emulator(seed=5, faults={"webhook_lost_rate": 0.3, "webhook_duplicate_rate": 0.2,
                                             "webhook_out_of_order_rate": 0.2})
    env_for(emulator, TIME_SCALE)
    report = await run_collection(tmp_path, monkeypatch, garments=4, models=3, name="lossy")
    records = emulator.predictions()
    assert any(r["webhook"] == "lost" for r in records)
    assert report["totals"]["archived"] == 12 and len(records) == 12


async def test_two_items_with_the_same_inputs_each_get_their_own_webhook(
        prefect_server, make_emulator, env_for, tmp_path, monkeypatch):
    """Webhooks are addressed by the item's label, unique in its run: two pairs whose images are
    the same (one key), both paid for on purpose (reuse off), are each told of their own end."""
    from flows.collection import tryon_collection

    emulator = make_emulator()
    env_for(emulator, TIME_SCALE)
    monkeypatch.setenv("TRYON_WEBHOOK_LISTEN", "127.0.0.1:0")
    spec = write_collection(tmp_path, name="twins", garments=2, models=1)
    (tmp_path / "img" / "g1.png").write_bytes((tmp_path / "img" / "g0.png").read_bytes())
    state = await tryon_collection(spec=str(spec), archive=str(tmp_path / "archive"), reuse=False,
                                   return_state=True)
    assert state.is_completed(), state.message
    records = emulator.predictions()
    assert len(records) == 2 and records[0]["images"] == records[1]["images"]
    assert [r["webhook_answers"] for r in records] == [[200], [200]], "each delivery was expected"
    assert [r["status_calls"] for r in records] == [1, 1], "each confirmed once, neither polled for"
