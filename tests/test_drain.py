"""A cancel that drains, over real parts: the emulator at real speed (each prediction takes
seconds), 10 in flight at most, a 30-item collection stopped after its first 10 submissions.

The cancel through Prefect's API reaches an in-process run by its own-state watcher; Ctrl-C reaches
``tryon run`` as SIGINT (a subprocess on the session's Prefect server). A SIGKILLed run is finished
by ``tryon reconcile``. The runner's SIGTERM path is in tests/test_drain_e2e.py (slow).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.collections import write_collection
from tests.fixtures.emulator import flow_env
from tests.life import local_emulator, runtime_over
from tests.life import until as life_until
from tryon.archive import Archive
from tryon.batch import load_and_validate, plan, run_items
from tryon.drain import Drain
from tryon.report import RunReport

ROOT = Path(__file__).resolve().parent.parent
SLOWEST = 10.0  # s: the longest a "balanced" prediction takes at real speed (8 s ± 25 %)
MARGIN = 30.0  # s: polling, archiving, the report and Prefect's calls on a busy machine
ITEMS, IN_FLIGHT = 30, 10


@pytest.fixture
def slow_key(make_emulator, monkeypatch):
    """An emulator at real speed allowing 10 predictions in flight, and this process's settings for it."""
    # A key of its own: runs killed by earlier tests stay members of theirs until their leases lapse.
    key = f"drain-{uuid.uuid4().hex[:8]}"
    emulator = make_emulator(time_scale=1.0, max_in_flight=IN_FLIGHT, keys={key: 1_000_000})
    env = {**flow_env(emulator, 1.0), "FASHN_API_KEY": key, "FASHN_MAX_IN_FLIGHT": str(IN_FLIGHT),
           "TRYON_RUN_LEASE": "3"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return emulator, env


def submitted(emulator) -> int:
    return emulator.stats()["requests"].get("run", {}).get("200", 0)


async def until(condition, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def spec_of(tmp_path: Path, name: str) -> Path:
    return write_collection(tmp_path / name, name=name, garments=6, models=5, inputs={"mode": "balanced"})


def check_drained(emulator, archive: Path, name: str, submissions: int) -> dict:
    """Every item submitted archived with the emulator's bytes, every other cancelled."""
    report = json.loads((archive / name / "tryon-v1.6" / "report.json").read_bytes())
    assert report["totals"]["archived"] == submissions, report["totals"]
    assert report["totals"]["cancelled"] == ITEMS - submissions, report["totals"]
    for entry in report["items"]:
        folder = archive / name / "tryon-v1.6" / entry["label"]
        if entry["state"] == "archived":
            served = emulator.prediction(entry["prediction_id"])["output_sha256"]
            assert [hashlib.sha256((folder / o["name"]).read_bytes()).hexdigest() for o in entry["outputs"]] == served
        else:
            assert entry["state"] == "cancelled" and not folder.exists(), "nothing written for a cancelled item"
    return report


async def test_a_run_cancelled_through_prefects_api_drains_and_ends_cancelled(prefect_server, slow_key, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    from flows.collection import tryon_collection

    emulator, _ = slow_key
    archive = tmp_path / "archive"
    run = asyncio.create_task(tryon_collection(spec=str(spec_of(tmp_path, "api-cancel")), archive=str(archive),
                                               return_state=True))
    await until(lambda: submitted(emulator) >= IN_FLIGHT)
    async with get_client() as client:
        running = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
        # This run (a killed run of another test stays Running on the server).
        (flow_run,) = [r for r in running if str(r.parameters.get("spec", "")).endswith("api-cancel.yaml")]
        asked = time.monotonic()
        await client.set_flow_run_state(flow_run.id, State(type=StateType.CANCELLING))  # `prefect flow-run cancel`
        at_cancel = submitted(emulator)
        state = await run
        took = time.monotonic() - asked
        final = (await client.read_flow_run(flow_run.id)).state

    assert at_cancel >= IN_FLIGHT and submitted(emulator) == at_cancel, "no submission after the cancel request"
    assert state.is_cancelled() and final.is_cancelled(), (state, final)
    assert took < SLOWEST + MARGIN, f"drained in {took:.1f} s"
    check_drained(emulator, archive, "api-cancel", at_cancel)


async def test_a_drain_submits_nothing_more_and_archives_everything_it_paid_for(tmp_path):
    # The core without Prefect: the run is asked to drain once its first predictions are recorded.
    spec = write_collection(tmp_path / "core", name="core", garments=6, models=4)
    archive = Archive(str(tmp_path / "archive"))
    collection = await load_and_validate(str(spec))
    planned = await plan(collection, archive)
    report = RunReport.start("core", collection.model_name)
    async with local_emulator(time_scale=50.0) as emulator, runtime_over(emulator, archive, max_in_flight=4) as runtime:
        drain = Drain(runtime.traffic)

        async def run() -> None:
            async for entry in run_items(runtime, planned, drain=drain):
                report.add(entry)

        running = asyncio.create_task(run())
        await life_until(lambda: recorded(archive, 4))
        drain.request("asked in a test")
        await running
        created = await emulator.predictions()
        drain.release()
        assert runtime.traffic.submissions_stopped is None, "released: the process may run others"

    totals = report.totals
    assert 4 <= totals["archived"] < 24 and totals["archived"] + totals["cancelled"] == 24, totals
    assert len(created) == totals["archived"], "every prediction paid for is archived"
    assert sorted(p["id"] for p in created) == sorted(e.prediction_id for e in report.items if e.state == "archived")
    for entry in report.items:
        if entry.state == "cancelled":
            assert "asked in a test" in entry.note and entry.credits_used == 0
            assert not (tmp_path / "archive" / "core" / collection.model_name / entry.label).exists()
    assert "cancelled" in report.summary_line()


async def recorded(archive: Archive, count: int) -> bool:
    return len(list(Path(archive.root).glob("*/*/*/prediction.json"))) >= count


def start_cli(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, list[str]]:
    """``tryon`` in a subprocess on the session's Prefect server; its output lines as they come."""
    from prefect.settings import PREFECT_API_URL

    full = {**os.environ, **env, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


async def wait_exit(proc: subprocess.Popen, lines: list[str], timeout: float) -> int:
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("".join(lines[-60:])) from None


async def test_ctrl_c_of_tryon_run_drains(prefect_server, slow_key, tmp_path):
    emulator, env = slow_key
    archive = tmp_path / "archive"
    proc, lines = start_cli(env, "run", str(spec_of(tmp_path, "ctrl-c")), "--archive", str(archive))
    await until(lambda: submitted(emulator) >= IN_FLIGHT, timeout=240)
    asked = time.monotonic()
    proc.send_signal(signal.SIGINT)
    at_cancel = submitted(emulator)
    code = await wait_exit(proc, lines, SLOWEST + MARGIN + 30)
    took = time.monotonic() - asked

    out = "".join(lines)
    assert code == 1 and "cancelled: interrupted (Ctrl-C)" in out, out[-3000:]
    assert at_cancel >= IN_FLIGHT and submitted(emulator) == at_cancel, "no submission after Ctrl-C"
    assert took < SLOWEST + MARGIN, f"drained in {took:.1f} s"
    check_drained(emulator, archive, "ctrl-c", at_cancel)


async def test_a_second_ctrl_c_exits_at_once_keeping_the_pending_records(prefect_server, slow_key, tmp_path):
    emulator, env = slow_key
    archive = tmp_path / "archive"
    proc, lines = start_cli(env, "run", str(spec_of(tmp_path, "twice")), "--archive", str(archive))
    await until(lambda: submitted(emulator) >= IN_FLIGHT, timeout=240)
    proc.send_signal(signal.SIGINT)
    await until(lambda: any("draining" in line for line in lines))
    proc.send_signal(signal.SIGINT)
    await wait_exit(proc, lines, 30)

    folder = archive / "twice" / "tryon-v1.6"
    pending = sorted(folder.glob("*/prediction.json"))
    assert submitted(emulator) == IN_FLIGHT
    assert len(pending) + len(list(folder.glob("*/result.json"))) == IN_FLIGHT, "every submission recorded"
    assert pending, "stopped before the predictions ended: their records are kept for the reconciler"


async def test_a_run_killed_mid_way_is_finished_by_one_reconcile(prefect_server, slow_key, tmp_path):
    emulator, env = slow_key
    archive = tmp_path / "archive"
    proc, lines = start_cli(env, "run", str(spec_of(tmp_path, "killed")), "--archive", str(archive))
    records = archive / "killed" / "tryon-v1.6"
    # Killed once the ids of its first 10 submissions are recorded (before that, the one window).
    await until(lambda: len(list(records.glob("*/prediction.json"))) >= IN_FLIGHT, timeout=240)
    proc.kill()  # SIGKILL: nothing of the run's own runs again
    await wait_exit(proc, lines, 10)
    paid = submitted(emulator)
    left = sorted(p.parent.name for p in records.glob("*/prediction.json"))
    assert len(left) == paid == IN_FLIGHT, "every submission it made is pending"

    reconciler, out = start_cli(env, "reconcile", str(archive))
    assert await wait_exit(reconciler, out, 120) == 0, "".join(out)

    assert f"{paid} recovered, 0 lost" in "".join(out), "".join(out)
    assert submitted(emulator) == paid, "0 new predictions"
    report = json.loads((archive / "killed" / "tryon-v1.6" / "report.json").read_bytes())
    assert sorted(e["label"] for e in report["items"] if e["state"] == "archived") == left
    for entry in report["items"]:
        served = emulator.prediction(entry["prediction_id"])["output_sha256"]
        folder = archive / "killed" / "tryon-v1.6" / entry["label"]
        assert [hashlib.sha256((folder / o["name"]).read_bytes()).hexdigest() for o in entry["outputs"]] == served
