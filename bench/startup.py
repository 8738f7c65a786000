"""How soon a person's small run starts and ends, beside the naive SDK script, at real timing.

    uv run --locked python bench/startup.py            # every case below (~10 min on an idle machine)
    uv run --locked python bench/startup.py --cases server,used

Each case runs ``tryon run`` on 6 items (3 garments × 2 models) as a person would, in a process of
its own, against the emulator at real timing (8 s balanced predictions, the documented limits),
then the naive SDK script (``fashn``'s ``predictions.subscribe`` under ``asyncio.gather`` with a
semaphore of the in-flight limit) in a process of its own on the same emulator. The product is told
the key and the emulator's URL, nothing else. Measured: wall time from launching the process to its
exit, the first submission after the launch, and the API span (the first prediction created to
the last one ended, as the emulator saw them), and the CPU time of the process and its children
(the embedded server's included: what an idle machine cannot shorten); for ``tryon run``, where
the time before the first submission went: process start and the imports it opens its run with
(timed alone, the least of three processes of their own, just before) and opening the run
(validation, the key's membership, through Prefect's REST API when a server runs, and the plan:
the rest); and when Prefect was ready, the flow run created to take the items over (the CLI
prints it).

- ``server``: a Prefect server already runs (``prefect server start``, as on a worker);
- ``fresh``: no server, a fresh ``PREFECT_HOME`` (a first run ever: the embedded server creates
  its database);
- ``used``: no server, the ``PREFECT_HOME`` of ``fresh``, as long after that run (the key's
  membership file, which would count the ``fresh`` run W + D after its last admission, removed);
- ``after-leave``: on the server, a run starts half a window after another left the key;
- ``after-kill``: on the server, a run starts as soon as another, killed with SIGKILL during its
  first predictions, stops;
- ``embedded``: the embedded server's start alone, with Prefect's defaults and with the CLI's
  (``flows.console.PREFECT_DEFAULTS``), in a fresh home and twice more in it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEY = "fa-bench-startup"
WINDOW = 60.0  # the run limit's window
VARIANTS = count()
CASES = ("server", "fresh", "used", "after-leave", "after-kill", "embedded")
# The embedded server alone: Prefect's own start of it, to healthy, with the server's CPU seconds.
EMBEDDED = r"""
import os, time
from prefect.server.api.server import SubprocessASGIServer
began = time.monotonic()
server = SubprocessASGIServer()
server.start(timeout=900)
stat = open(f"/proc/{server.server_process.pid}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
print(f"wall {time.monotonic() - began:5.1f} s, server CPU {cpu:4.1f} s")
server.stop()
"""
# What a server running for a while has answered before (its first answer on each path is slow).
WARM_UP = [("GET", "/csrf-token?client=warm-up"), ("GET", "/admin/version"), ("POST", "/flows/filter"),
           ("POST", "/flow_runs/filter"), ("POST", "/v2/concurrency_limits/filter"),
           ("GET", "/v2/concurrency_limits/warm-up")]
TRYON = "import sys; from flows.cli import main; sys.argv[0] = 'tryon'; main()"  # `tryon` as a person types it
IMPORTS = "import flows.cli, flows.console, flows.opening, rich.progress"  # what `tryon run` opens its run with
NAIVE = """
import asyncio, sys
from fashn import AsyncFashn

async def main(url, count, in_flight):
    gate = asyncio.Semaphore(in_flight)
    async with AsyncFashn(api_key=sys.argv[4], base_url=url) as sdk:
        async def one(i):
            async with gate:
                await sdk.predictions.subscribe(model_name="tryon-v1.6", inputs={
                    "model_image": f"{url}/_assets/m{i % 2}.jpg", "garment_image": f"{url}/_assets/g{i}.png",
                    "mode": "balanced"})
        await asyncio.gather(*(one(i) for i in range(count)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def launch(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True), time.monotonic()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(emulator, process: subprocess.Popen, launched: float) -> dict:
    cpu = children_cpu()
    out, err = process.communicate()
    wall, cpu = time.monotonic() - launched, children_cpu() - cpu  # with the embedded server's
    assert process.returncode == 0, err[-3000:]
    predictions = [p for p in emulator.predictions() if p["created"] >= launched]
    first = min(p["created"] for p in predictions)
    row = {"wall": wall, "cpu": cpu, "first": first - launched, "span": max(p["ends"] for p in predictions) - first,
           "429": sum(emulator.stats()["too_many_requests"].values())}
    if ready := re.search(r"Prefect ready \(([\d.]+) s\)", out):
        row["server"] = float(ready.group(1))
    return row


def imports_seconds(env: dict[str, str], folder: Path) -> float:
    """Process start and imports of `tryon run`, alone in a process of its own: the least of three
    (what else the machine was doing at the time left out)."""
    seconds = []
    for _ in range(3):
        process, launched = launch([sys.executable, "-c", IMPORTS], env, folder)
        process.communicate()
        seconds.append(time.monotonic() - launched)
    return min(seconds)


def tryon(emulator, folder: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    from tests.collections import write_collection

    spec = write_collection(folder / name, name=name, garments=3, models=2, inputs={"mode": "balanced"},
                            variant=next(VARIANTS))  # no pair shared with an earlier run: nothing reused
    return launch([sys.executable, "-c", TRYON, "run", str(spec), "--archive", str(folder / "archive")], env, folder)


def naive(emulator, folder: Path) -> dict:
    emulator.reset()
    argv = [sys.executable, "-c", NAIVE, emulator.url, "6", "6", KEY]
    return measure(emulator, *launch(argv, dict(os.environ), folder))


def show(case: str, row: dict, script: dict | None) -> None:
    parts = (f"wall {row['wall']:6.1f} s  CPU {row['cpu']:5.1f} s  first submission {row['first']:5.1f} s"
             f"  API span {row['span']:5.1f} s  429 {row['429']}")
    if script:
        parts += (f"  | naive: wall {script['wall']:5.1f} s, CPU {script['cpu']:4.1f} s,"
                  f" first {script['first']:4.1f} s, span {script['span']:4.1f} s  => {row['wall'] / script['wall']:.2f}x")
    if "imports" in row:
        parts += (f"  | before the first: process and imports {row['imports']:.1f}, opening the run"
                  f" {row['first'] - row['imports']:.1f} s | Prefect ready after {row['server']:.1f} s")
    print(f"{case:12} {parts}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    args = parser.parse_args()
    cases = args.cases.split(",")

    from tryon.emulator import EmulatorConfig, EmulatorServer

    folder = Path(tempfile.mkdtemp(prefix="tryon-startup-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FASHN_"))}
    base |= {"PYTHONPATH": str(ROOT), "FASHN_API_KEY": KEY, "DO_NOT_TRACK": "1"}
    server = None
    if {"server", "after-leave", "after-kill"} & set(cases):
        port = 4300 + os.getpid() % 1000
        server_env = {**base, "PREFECT_HOME": str(folder / "server-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=server_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/api"
        import httpx

        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "the Prefect server did not start"
            time.sleep(0.5)
        for method, path in WARM_UP:  # as on a worker: a server that has answered requests before
            httpx.request(method, f"{url}{path}", json={} if method == "POST" else None, timeout=30)
    if "embedded" in cases:
        from flows.console import PREFECT_DEFAULTS

        for name, settings in (("Prefect's defaults", {}), ("the CLI's", PREFECT_DEFAULTS)):
            env = {**base, **settings, "PREFECT_HOME": str(folder / f"embedded-{len(settings)}")}
            for start in ("fresh", "used", "used"):
                out = subprocess.run([sys.executable, "-c", EMBEDDED], env=env, cwd=folder, capture_output=True,
                                     text=True).stdout.strip()
                print(f"embedded server, {name}, {start} home: {out}", flush=True)
    try:
        with EmulatorServer(EmulatorConfig(time_scale=1.0, keys={KEY: 10**6})) as emulator:
            base["FASHN_BASE_URL"] = emulator.url
            on_server = {**base, "PREFECT_API_URL": url} if server else base
            home = {**base, "PREFECT_HOME": str(folder / "home")}  # the embedded server's home
            for case in cases:
                emulator.reset()
                if case == "used":  # a home used long ago: its key's membership (W + D) has expired
                    shutil.rmtree(folder / "home" / "tryon-keys", ignore_errors=True)
                if case in ("server", "fresh", "used"):
                    env = on_server if case == "server" else home
                    imports = imports_seconds(env, folder)
                    row = {**measure(emulator, *tryon(emulator, folder, case, env)), "imports": imports}
                    show(case, row, naive(emulator, folder))
                elif case == "after-leave":
                    measure(emulator, *tryon(emulator, folder, "leaver", on_server))
                    time.sleep(WINDOW / 2)
                    emulator.reset()
                    show(case, measure(emulator, *tryon(emulator, folder, case, on_server)), None)
                elif case == "after-kill":
                    victim, _ = tryon(emulator, folder, "victim", on_server)
                    while not emulator.predictions():
                        time.sleep(0.1)
                    victim.send_signal(signal.SIGKILL)
                    victim.communicate()
                    show(case, measure(emulator, *tryon(emulator, folder, case, on_server)), None)
                    print(json.dumps({"most_in_window": emulator.stats()["most_in_window"]}), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
