"""What one Prefect task run costs in CPU, flow process and server together: the floor under
``bench/throughput.py``'s CPU per item, since each item is one task run.

    uv run --locked python bench/task_cost.py --tasks 300

In one flow run, in a child process against the same kind of Prefect server as the throughput
benchmark (``prefect_test_harness``), ``--tasks`` calls of an async function that only sleeps
``--sleep`` seconds (0.8 by default: a balanced try-on at a 10x time scale), six at a time (the
default in-flight limit): first as plain coroutines (the baseline),
then as Prefect task runs (``cache_policy=NO_CACHE``, as ``flows.tasks.tryon_item``). Prints
the CPU per call of each (flow process + server) and the task run's cost over the baseline. The
server runs as the product embeds it (``flows.console.EMBEDDED_SERVER_TUNING``: its task-run
recorder batched), or with Prefect's defaults (``--untuned``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Its import sets the benchmarks' environment (a private PREFECT_HOME, the embedded server's tuning).
from bench.throughput import cpu_seconds  # noqa: E402
from flows.console import EMBEDDED_SERVER_TUNING  # noqa: E402


def child_main(calls: int, as_tasks: bool, sleep: float) -> None:
    """One flow run making ``calls`` calls; prints the flow process's CPU seconds during them."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    async def work(i: int) -> int:
        await asyncio.sleep(sleep)
        return i

    step = task(work, name="work", cache_policy=NO_CACHE) if as_tasks else work

    @flow(name="task-cost")
    async def calls_flow(n: int) -> float:
        gate = asyncio.Semaphore(6)

        async def one(i: int) -> int:
            async with gate:
                return await step(i)

        start = time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.process_time() - start

    print(json.dumps({"flow_cpu": asyncio.run(calls_flow(calls))}))


def settled(server_pid: int) -> float:
    """The server's CPU seconds once it is idle (it handles a flow's events after they are sent)."""
    last = cpu_seconds(server_pid)
    while True:
        time.sleep(1.0)
        now = cpu_seconds(server_pid)
        if now - last < 0.02:
            return now
        last = now


def measure(calls: int, as_tasks: bool, sleep: float, server_pid: int) -> tuple[float, float]:
    """CPU seconds per call: (flow process, server), the server's over the child's whole life
    (its start-up included, the same in both) until the server is idle again."""
    before = settled(server_pid)
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, __file__, "--child", str(calls), str(int(as_tasks)), str(sleep)],
                           capture_output=True, text=True, check=True, env=env)
    server = settled(server_pid) - before
    flow_cpu = json.loads(child.stdout.strip().splitlines()[-1])["flow_cpu"]
    return flow_cpu / calls, server / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300, help="calls per run (default 300)")
    parser.add_argument("--sleep", type=float, default=0.8, help="seconds each call waits (default 0.8)")
    parser.add_argument("--untuned", action="store_true",
                        help="the server with Prefect's defaults, not the embedded server's tuning (flows.console)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(int(args.child[0]), bool(int(args.child[1])), float(args.child[2]))

    if args.untuned:  # before prefect is imported: its settings are read then
        for name in EMBEDDED_SERVER_TUNING:
            os.environ.pop(name, None)
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        server_pid = SubprocessASGIServer._instances[None].server_process.pid
        plain = measure(args.tasks, False, args.sleep, server_pid)
        tasks = measure(args.tasks, True, args.sleep, server_pid)
    print(f"{'calls':24} {'n':>5} {'ms CPU flow':>12} {'+ server':>9} {'= total':>8}")
    for label, (flow_ms, server_ms) in (("plain coroutines", plain), ("Prefect task runs", tasks)):
        print(f"{label:24} {args.tasks:5} {flow_ms * 1000:12.1f} {server_ms * 1000:9.1f} "
              f"{(flow_ms + server_ms) * 1000:8.1f}")
    extra = (sum(tasks) - sum(plain)) * 1000
    print(f"server: {'Prefect defaults' if args.untuned else 'tuned as embedded (flows.console)'}; "
          f"one task run costs {extra:.1f} ms CPU over a plain call "
          f"({sum(tasks) / max(sum(plain), 1e-9):.1f}x the baseline's total per call)")


if __name__ == "__main__":
    main()
