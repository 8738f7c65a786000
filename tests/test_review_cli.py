"""The review loop without Prefect's UI, over real parts: ``tryon run`` (a flow on a Prefect test
server), ``tryon review --reject`` and ``tryon approve --publish`` (no Prefect), a regeneration
round killed with SIGKILL and resumed: no take is paid for twice."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.collections import write_collection
from tests.fixtures.emulator import flow_env
from tests.test_cli import PROBE, ROOT

MODEL = "tryon-v1.6"


def new_takes(archive) -> list:
    """The top result.json files of a take 2 (written whole, by rename)."""
    return [p for p in archive.rglob("result.json") if "takes" not in p.parts
            and json.loads(p.read_text()).get("take") == 2]


@pytest.mark.slow
async def test_review_kill_resume_approve_and_rerun_pay_for_each_take_once(prefect_server, make_emulator, tmp_path):
    import prefect.settings

    time_scale = 4.0  # performance ≈ 1.25 s per prediction: the kill lands mid-way
    emulator = make_emulator(time_scale=time_scale, seed=3)
    spec = write_collection(tmp_path, name="looks", garments=4, models=3)
    archive, shop = tmp_path / "archive", tmp_path / "shop"
    env = {**os.environ, **flow_env(emulator, time_scale), "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}
    run = [sys.executable, "-m", "flows.cli", "run", str(spec), "--archive", str(archive)]

    def tryon(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-c", PROBE, *args, "--archive", str(archive)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "NO_PREFECT" in done.stdout, done.stdout + done.stderr
        return done

    first = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    assert emulator.stats()["predictions"] == 12
    rejected = ["g0__m0", "g1__m1", "g2__m2", "g3__m0", "g3__m1", "g3__m2"]
    listed = tryon("review", str(spec), "--reject", *rejected, "--reason", "cut off", "--by", "ana").stdout
    assert "g0__m0  take 2  not made yet" in listed and "g0__m1  take 1  checks passed" in listed

    process = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # killed once some new takes exist, each with its id recorded
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "the regeneration ended before it could be killed"
            assert time.monotonic() < deadline, "no quiet moment to kill the run in"
            created = emulator.stats()["predictions"] - 12
            pending, made = len(list(archive.rglob("prediction.json"))), len(new_takes(archive))
            if created >= 2 and pending + made >= created:
                break
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(new_takes(archive)) < 6, "the kill lands before every new take was archived"

    resumed = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    stats = emulator.stats()
    assert stats["predictions"] == 18 and stats["duplicate_hashes"] == 0, "0 paid twice"
    assert sorted(p["seed"] for p in emulator.predictions()[12:]) == [43] * 6

    tryon("approve", str(spec), "--publish", str(shop), "--by", "ana")
    again = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and emulator.stats()["predictions"] == 18, "a re-run pays for no take again"
    approved = json.loads((archive / "looks" / MODEL / "approved.json").read_text())
    assert {i["label"]: i["take"] for i in approved["items"]} == {
        f"g{g}__m{m}": 2 if f"g{g}__m{m}" in rejected else 1 for g in range(4) for m in range(3)}
    by_id = {p["id"]: p for p in emulator.predictions()}
    for item in approved["items"]:
        result = json.loads((archive / "looks" / MODEL / item["label"] / "result.json").read_text())
        copy = (shop / "looks" / f"{item['label']}_0.png").read_bytes()
        assert hashlib.sha256(copy).hexdigest() == item["sha256"][0] == by_id[result["prediction_id"]]["output_sha256"][0]
    for label in rejected:
        assert (archive / "looks" / MODEL / label / "takes" / "1" / "result.json").exists()
    assert "approved by ana" in tryon("review", str(spec)).stdout
