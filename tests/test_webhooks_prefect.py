"""Webhooks through Prefect, over real parts: one standalone receiver (`tryon webhooks serve`, its
own process) publishes what the emulator posts to it as Prefect events on the session's server,
and two `tryon run` processes on one key, each subscribed, are both served by it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.collections import write_collection

ROOT = Path(__file__).resolve().parent.parent
SECRET = "tryon-webhook-secret-CANARY-5f1e"
TRYON = (sys.executable, "-c", "from flows.cli import main; main()")  # the `tryon` command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _until_listening(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)  # the receiver's process is still importing
            continue
        writer.close()
        return
    raise AssertionError("the receiver never listened")


@pytest.fixture
def receiver(prefect_server):
    """`tryon webhooks serve` in its own process, publishing to the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "TRYON_WEBHOOK_SECRET": SECRET, "PREFECT_LOGGING_LEVEL": "WARNING"}
    process = subprocess.Popen([*TRYON, "webhooks", "serve", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield port, process
    process.terminate()
    out, err = process.communicate(timeout=30)
    assert SECRET not in out + err


async def test_two_runs_on_one_key_are_served_by_one_standalone_receiver(receiver, make_emulator, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from tests.fixtures.emulator import TIME_SCALE, flow_env

    port, process = receiver
    await _until_listening(port, process)
    key = f"fa-hooks-{uuid.uuid4().hex}"
    emulator = make_emulator(keys={key: 10**6})
    env = {**os.environ, **flow_env(emulator, TIME_SCALE), "FASHN_API_KEY": key, "PYTHONPATH": str(ROOT),
           "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING",
           "TRYON_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks", "TRYON_WEBHOOK_SECRET": SECRET}
    env.pop("TRYON_WEBHOOK_LISTEN", None)
    runs = {}
    for n, name in enumerate(("first", "second")):
        spec = write_collection(tmp_path / name, name=name, garments=4, models=3, variant=n)  # no pair shared
        runs[name] = subprocess.Popen(
            [*TRYON, "run", str(spec), "--archive", str(tmp_path / "archive"), "--report", str(tmp_path / f"{name}.json")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, run in runs.items():
        out, err = await asyncio.to_thread(run.communicate, timeout=300)
        assert run.returncode == 0, err[-3000:]
        assert SECRET not in out + err
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["totals"].get("archived") == 12, report["totals"]
    predictions = emulator.predictions()
    assert len(predictions) == 24, "every item submitted once"
    # Every completion was pushed, then confirmed by one status call: polling was only the fallback.
    assert sum(p["status_calls"] for p in predictions) <= 1.5 * len(predictions), [p["status_calls"] for p in predictions]
    stats = emulator.stats()
    assert not stats["too_many_requests"], stats["too_many_requests"]
    for path in (tmp_path / "archive").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


async def test_the_standalone_receiver_answers_404_without_detail_to_a_wrong_or_missing_token(receiver):
    port, process = receiver
    await _until_listening(port, process)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for path in ("/hooks/not-the-token?item=x&attempt=1", "/hooks?item=x&attempt=1", "/"):
            answer = await client.post(path, json={"id": "p", "status": "completed"})
            assert answer.status_code == 404 and answer.content in (b"", b"Not Found"), (path, answer.text)
