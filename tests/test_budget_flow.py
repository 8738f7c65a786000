"""The spend limit through Prefect: ``tryon run --max-credits`` refuses a plan above it before
spending, and a backfill's collections (subflows of one process) keep to one limit together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.collections import write_collection
from tests.fixtures.emulator import flow_env

ROOT = Path(__file__).resolve().parents[1]
TIME_SCALE = 20.0


def test_a_run_over_the_limit_spends_nothing_and_says_by_how_much(prefect_server, make_emulator, tmp_path):
    from prefect.settings import PREFECT_API_URL

    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name="budget", garments=5, models=4)  # 20 items, 1 credit each
    env = {**os.environ, **flow_env(emulator, TIME_SCALE), "PREFECT_API_URL": PREFECT_API_URL.value()}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec), "--max-credits", "7",
                             "--archive", str(tmp_path / "archive")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "needs up to 20 credits, 13 over the limit of 7 credits" in result.stdout + result.stderr
    assert emulator.stats()["predictions"] == 0 and "run" not in emulator.stats()["requests"]


@pytest.mark.slow
async def test_a_backfill_over_its_limit_spends_nothing_without_partial(prefect_server, make_emulator, env_for,
                                                                         tmp_path):
    """Each collection's plan fits the limit alone; the backfill's, checked before any collection
    starts, does not."""
    from flows.backfill import backfill
    from tryon.errors import OverBudget

    emulator = make_emulator(time_scale=TIME_SCALE)
    env_for(emulator, TIME_SCALE)
    specs = [write_collection(tmp_path / f"c{i}", name=f"c{i}", garments=2, models=2, variant=i) for i in range(3)]
    with pytest.raises(OverBudget, match=r"the backfill's plan \(3 collections\) needs up to 12 credits, 5 over "
                                         "the limit of 7 credits"):
        await backfill(collections=[str(s) for s in specs], archive=str(tmp_path / "archive"), max_credits=7)
    assert emulator.stats()["predictions"] == 0 and "run" not in emulator.stats()["requests"]
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").glob("*/*/report.json"))


@pytest.mark.slow
async def test_a_backfill_keeps_its_collections_within_one_limit(prefect_server, make_emulator, env_for,
                                                                 monkeypatch, tmp_path):
    import flows.collection
    from flows.backfill import backfill

    events: list[dict] = []
    emit = flows.collection.emit_event

    def record(**event):
        events.append(event)
        return emit(**event)

    monkeypatch.setattr(flows.collection, "emit_event", record)
    emulator = make_emulator(time_scale=TIME_SCALE)
    env_for(emulator, TIME_SCALE)
    # Three collections of 4 items, no pair in common (nothing reused): each plan fits the limit
    # alone, together they are over it.
    specs = [write_collection(tmp_path / f"c{i}", name=f"c{i}", garments=2, models=2, variant=i) for i in range(3)]
    state = await backfill(collections=[str(s) for s in specs], archive=str(tmp_path / "archive"), max_credits=7,
                           partial=True, max_concurrent=3, return_state=True)
    assert state.is_completed(), state.message
    stats = emulator.stats()
    assert stats["predictions"] <= 7 and stats["credits_charged"] <= 7
    reports = [json.loads(p.read_text()) for p in (tmp_path / "archive").glob("*/tryon-v1.6/report.json")]
    assert len(reports) == 3
    archived = sum(r["totals"]["archived"] for r in reports)
    unfunded = [e for r in reports for e in r["items"] if e["state"] == "unfunded"]
    assert archived == stats["predictions"] and archived + len(unfunded) == 12
    assert all(e["credits_needed"] == 1 for e in unfunded) and len(unfunded) >= 5
    reached = [e for e in events if e["event"] == "tryon.collection.budget-reached"]
    assert reached and all(e["payload"]["max_credits"] == 7 for e in reached)
