"""The runner's cancel and the reconcile deployment, as operators meet them: a Prefect server, a
process worker, ``prefect.yaml`` deployed, ``prefect flow-run cancel`` (the runner's SIGTERM), and
a run killed mid-way finished by the ``reconcile`` deployment. Slow."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.emulator import TEST_KEY
from tests.test_deployments_e2e import ROOT, PrefectStack, _stack
from tests.test_drain import IN_FLIGHT, MARGIN, SLOWEST, check_drained, spec_of, submitted

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_stack(tmp_path_factory, make_emulator) -> Iterator[tuple[PrefectStack, object]]:
    """A server and a process worker on an emulator at real speed, 10 predictions in flight."""
    emulator = make_emulator(time_scale=1.0, max_in_flight=IN_FLIGHT)
    env = {"FASHN_BASE_URL": emulator.url, "FASHN_API_KEY": TEST_KEY, "FASHN_RUN_LIMIT": "50/60",
           "FASHN_STATUS_LIMIT": "50/10", "FASHN_CREDITS_LIMIT": "30/10", "FASHN_MAX_IN_FLIGHT": str(IN_FLIGHT),
           "TRYON_RUN_LEASE": "3"}
    with _stack(tmp_path_factory, emulator, **env) as stack:
        stack.cli("work-pool", "create", "tryon", "--type", "process")
        deployed = stack.cli("--no-prompt", "deploy", "--all")
        assert "tryon-reconcile/reconcile" in deployed, deployed
        stack.start("worker", "start", "--pool", "tryon", name="worker")
        yield stack, emulator


def wait_for(condition, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_run_cancelled_drains_and_the_reconcile_deployment_finishes_a_killed_one(slow_stack, tmp_path):
    stack, emulator = slow_stack
    archive = tmp_path / "archive"

    # `prefect flow-run cancel`: the runner sends SIGTERM; the run drains within the 30 s grace.
    run_id = stack.run_deployment("tryon-collection/collection", spec=str(spec_of(tmp_path, "worker-cancel")),
                                  archive=str(archive))
    wait_for(lambda: submitted(emulator) >= IN_FLIGHT)
    asked = time.monotonic()
    stack.cli("flow-run", "cancel", run_id)  # a few seconds on a busy machine: slots freed meanwhile refill
    at_cancel = submitted(emulator)
    run = stack.wait_terminal(run_id, timeout=SLOWEST + MARGIN + 60)
    took = time.monotonic() - asked
    assert run["state_type"] == "CANCELLED", f"{run['state']}\n{stack.logs()}"
    assert at_cancel >= IN_FLIGHT and submitted(emulator) == at_cancel, "no submission after the cancel"
    assert took < SLOWEST + MARGIN, f"drained in {took:.1f} s"
    check_drained(emulator, archive, "worker-cancel", at_cancel)

    # The hourly reconciler is scheduled; run now, it finishes what a killed run left pending.
    reconcile = stack.http.get("/deployments/name/tryon-reconcile/reconcile").json()
    assert [s["schedule"].get("cron") for s in reconcile["schedules"]] == ["0 * * * *"]
    # A `tryon run` on the same server, SIGKILLed after its first submissions.
    before = submitted(emulator)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(spec_of(tmp_path, "killed")),
                             "--archive", str(archive)], cwd=ROOT, env=stack.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = archive / "killed" / "tryon-v1.6"
    # Killed once its first ids are recorded (before that, the one window). The cancelled run stays a
    # member of the key for a window after its last submission, so this one has half the slots.
    wait_for(lambda: len(recorded := list(folder.glob("*/prediction.json"))) >= IN_FLIGHT // 2
             and len(recorded) == submitted(emulator) - before)
    proc.kill()
    proc.wait(30)
    paid = submitted(emulator)
    left = sorted(p.parent.name for p in folder.glob("*/prediction.json"))
    assert len(left) == paid - before >= IN_FLIGHT // 2
    leases = list((archive / "_tryon" / "leases").glob("*.json"))
    assert leases, "a killed run's lease stays until it expires"
    wait_for(lambda: all(dt.datetime.fromisoformat(json.loads(p.read_bytes())["expires_at"]) < now() for p in leases))

    run = stack.wait_terminal(stack.run_deployment("tryon-reconcile/reconcile", archive=str(archive)))
    assert run["state_type"] == "COMPLETED", f"{run['state']}\n{stack.logs()}"
    assert submitted(emulator) == paid, "the reconciler never submits"
    report = json.loads((folder / "report.json").read_bytes())
    assert sorted(e["label"] for e in report["items"] if e["state"] == "archived") == left
    for entry in report["items"]:
        served = emulator.prediction(entry["prediction_id"])["output_sha256"]
        outputs = [hashlib.sha256((folder / entry["label"] / o["name"]).read_bytes()).hexdigest()
                   for o in entry["outputs"]]
        assert outputs == served


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
