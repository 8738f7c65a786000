"""The ``tryon`` command: help, validation and dry runs answer without starting Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.collections import write_collection
from tests.fixtures.emulator import TEST_KEY

ROOT = Path(__file__).resolve().parents[1]
# Runs the CLI, then reports whether prefect was ever imported.
PROBE = ("import sys; from flows.cli import app\n"
         "try:\n    code = app(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
         "print('PREFECT_IMPORTED' if 'prefect' in sys.modules else 'NO_PREFECT')\nsys.exit(code or 0)")


def tryon(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_help_lists_the_commands():
    result = tryon("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "demo", "emulator"):
        assert command in result.stdout
    assert "NO_PREFECT" in result.stdout


def test_validate_reports_every_problem_without_prefect(tmp_path):
    spec = write_collection(tmp_path, garments=1, models=1, inputs={"mode": "turbo", "num_samples": 9})
    result = tryon("validate", str(spec))
    assert result.returncode == 2
    assert "mode" in result.stderr and "turbo" in result.stderr and "num_samples" in result.stderr
    assert "NO_PREFECT" in result.stdout


def test_dry_run_lists_items_credits_and_balance_and_submits_nothing(emulator, tmp_path):
    emulator.reset()
    spec = write_collection(tmp_path, garments=2, models=2, inputs={"mode": "performance", "num_samples": 3})
    result = tryon("run", str(spec), "--dry-run", "--archive", str(tmp_path / "archive"),
                   env={"FASHN_API_KEY": TEST_KEY, "FASHN_BASE_URL": emulator.url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("submit ") == 4
    assert "at most 12 credits" in result.stdout and "balance:" in result.stdout
    assert "NO_PREFECT" in result.stdout
    assert "run" not in emulator.stats()["requests"]


def test_missing_api_key_is_a_clear_error_before_anything_is_sent(tmp_path):
    spec = write_collection(tmp_path, garments=1, models=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHN_")}
    result = subprocess.run([sys.executable, "-c", PROBE, "run", str(spec), "--dry-run"], cwd=tmp_path,
                            capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 2 and "FASHN_API_KEY" in result.stderr


@pytest.mark.slow
def test_a_run_says_what_it_waits_for_and_where_its_report_is(prefect_server, emulator, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from tests.fixtures.emulator import TIME_SCALE, flow_env

    emulator.reset()
    spec = write_collection(tmp_path, garments=2, models=1, inputs={"mode": "performance", "seed": 34})
    result = tryon("run", str(spec), "--archive", str(tmp_path / "archive"), "--report", str(tmp_path / "r.json"),
                   env={**flow_env(emulator, TIME_SCALE), "PREFECT_API_URL": PREFECT_API_URL.value(),
                        "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Prefect: {PREFECT_API_URL.value()}" in result.stdout and "Prefect ready" in result.stdout
    assert "done: 2 archived" in result.stdout and "report: " in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["archived"] == 2, "copied from where the run said"


@pytest.mark.slow
async def test_a_run_submits_its_first_items_before_its_flow_run_exists(prefect_server, make_emulator, tmp_path):
    """``tryon run`` begins its items while it imports Prefect; the flow run it then starts takes
    them over: one prediction per item, the report whole."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL

    from tests.fixtures.emulator import TIME_SCALE, flow_env

    key = f"fa-at-once-{uuid.uuid4().hex}"  # alone on its key: no other run's share to wait out
    emulator = make_emulator(keys={key: 1000})
    spec = write_collection(tmp_path, name="at-once", garments=3, models=2, inputs={"mode": "performance", "seed": 35})
    result = tryon("run", str(spec), "--archive", str(tmp_path / "archive"), "--report", str(tmp_path / "r.json"),
                   env={**flow_env(emulator, TIME_SCALE), "FASHN_API_KEY": key,
                        "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = emulator.predictions()
    first = min(p["created"] for p in predictions) + time.time() - time.monotonic()  # the emulator's clock is monotonic
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["tryon-collection"])))
        flow_run = next(run for run in runs if run.parameters.get("spec") == str(spec))
    assert first < flow_run.created.timestamp(), "the first prediction was created before the flow run"
    assert flow_run.state.is_completed()
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(predictions) == 6 and report["totals"]["archived"] == 6, "each item paid once, reported once"
    labels = sorted(f"g{g}__m{m}" for g in range(3) for m in range(2))
    assert sorted(item["label"] for item in report["items"]) == labels


async def test_the_bar_counts_items_that_ended_before_the_flow_run_took_them():
    """Items begun while Prefect starts may all end before the flow run reports any: the bar counts
    them then, and the flow run's report takes over once it has as many."""
    import asyncio
    import io

    from rich.console import Console
    from rich.progress import Progress

    from flows.console import ConsoleWatcher
    from tryon.report import ItemReport, RunReport

    def entry(label: str) -> ItemReport:
        return ItemReport(label=label, garment_id="g", model_id="m", state="archived", key="k" * 64, collection="c",
                          model_name="tryon-v1.6")

    with Progress(console=Console(file=io.StringIO())) as bar:
        watcher = ConsoleWatcher(bar, total=3)
        lives = [asyncio.get_running_loop().create_future() for _ in range(3)]
        watcher.begun(lives)
        lives[0].set_result(entry("a"))
        lives[1].set_exception(OSError("the archive"))  # retried by its task: not counted as ended
        await asyncio.sleep(0)
        assert bar.tasks[0].completed == 1
        report = RunReport.start("c", "tryon-v1.6")
        await watcher.progress(report)  # the flow run has reported nothing yet: the bar stays
        assert bar.tasks[0].completed == 1
        for label in "abc":
            report.add(entry(label))
        await watcher.progress(report)
        assert bar.tasks[0].completed == 3 and "3 archived" in bar.tasks[0].fields["counts"]


def test_a_plan_refused_before_spending_starts_no_prefect(emulator, tmp_path):
    """Without a server of the user's, a run refused by its spend limit says so at once: its
    embedded Prefect server is started only once the run is open."""
    from tests.fixtures.emulator import TIME_SCALE, flow_env

    spec = write_collection(tmp_path, name="refused", garments=2, models=2)
    result = tryon("run", str(spec), "--max-credits", "1", "--archive", str(tmp_path / "archive"),
                   env={**flow_env(emulator, TIME_SCALE), "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "home"),
                        "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and "over the limit of 1 credits" in result.stderr, result.stderr[-2000:]
    assert "NO_PREFECT" in result.stdout and not (tmp_path / "home" / "prefect.db").exists()
