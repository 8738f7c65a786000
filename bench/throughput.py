"""Throughput of the real collection flow against the emulator, beside the naive SDK loop.

    uv run --locked python bench/throughput.py                 # every regime below (~50 min)
    uv run --locked python bench/throughput.py --modes default,slow --no-naive

Each regime runs the flow in its own process against a Prefect server and an emulator, then
the naive baseline on the same emulator settings: the official ``fashn`` SDK's
``predictions.subscribe`` under ``asyncio.gather`` with a semaphore of the in-flight limit (its
1 s default poll interval divided by the time scale, as the SDK would poll a real key). The
product is told the key's limits (their windows divided by the time scale: configuration, as a
raised key's limits are) and nothing about latency: it starts from the published times (8 s
for a balanced try-on) and learns the rest. Figures are in API time (wall time × time scale),
so they compare with a real key.

- ``default``: the documented limits (runs 50/60 s, status 50/10 s, 6 in flight), 10×, 300 items;
- ``real``: the same at real timing (8 s predictions), 600 items (at 120, filling and draining the
  slots alone hold any polling policy to 96.0 %: ``polling_bound.py --items 120``);
- ``slow``: a slow model, 40 s mean latency (five times the prior), emulated at 10×, 120 items;
- ``drift``: 10×, 300 items, latency doubled for the middle third of the predictions created
  (the provider's queue grows), then back;
- ``raised``: 30 in flight and 250 runs per minute, status still 50/10 s, where the status
  budget becomes the scarce resource; at 2× (at 10× its ceiling needs more CPU than this 2-core
  machine has), 900 items (with 30 slots, 300 items are only ten rounds);
- ``two`` (not run by default): the default limits, two flow processes on one key at once
  (each half the items), coordinated through the Prefect server, 10×.

The ceiling of a key is min(run rate, in-flight ÷ mean latency, status rate ÷ 1 poll per
prediction), with the mean latency the emulator observed (±25 % jitter around each mode's
mean, the drift included). Two rates are printed: ``e2e``, items over the whole flow run
(Prefect's flow-run start, validation, planning and the report included: ≈2 s that the time
scale does not shrink), and ``api``, items over the span in which the key was used (the first
prediction created to the last one ended, as the emulator saw them): that is what traffic
control decides. ``steady`` is the ratio in that span without its first and last two mean
latencies (filling and draining the slots). ``status/pred`` is status calls per prediction;
``notice`` the mean delay from a prediction's end to the status call that first saw it, as a
share of the mean latency. ``turn s d+r`` splits the time a slot stays idle between two
predictions (API seconds): ``d`` from a prediction's end to the status call that first saw it,
``r`` from that answer to the next creation. CPU per item counts the flow process(es) and the
Prefect server together (process CPU time during the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tryon-bench-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
from flows.console import EMBEDDED_SERVER_TUNING, set_env_defaults  # noqa: E402

set_env_defaults(EMBEDDED_SERVER_TUNING)  # the embedded server, as the product runs it

KEY = "fa-bench-key"
MODES = {  # name: (run limit, status limit, in flight, processes, time scale, items, emulator settings)
    "default": ((50, 60), (50, 10), 6, 1, 10.0, 300, {}),
    "real": ((50, 60), (50, 10), 6, 1, 1.0, 600, {}),
    "slow": ((50, 60), (50, 10), 6, 1, 10.0, 120, {"latencies": {"balanced": 40.0}}),
    "drift": ((50, 60), (50, 10), 6, 1, 10.0, 300, {"latency_steps": "thirds"}),
    "raised": ((250, 60), (50, 10), 30, 1, 2.0, 900, {}),
    "two": ((50, 60), (50, 10), 6, 2, 10.0, 300, {}),
    "max": ((50, 60), (50, 10), 6, 1, 10.0, 120, {}),
}
VARIANTS = {"off": (False,), "on": (True,), "both": (False, True)}
LABELS = {"default": "default 10x", "real": "real 1x", "slow": "slow 40s 10x", "drift": "drift 10x",
          "raised": "raised 2x", "two": "2 procs 10x", "max": "tryon-max 10x"}
# The collection each mode runs: model name and inputs (tryon-max: its own mode input; the official
# SDK has no tryon-max, so that mode has no naive row).
SPECS = {"max": ("tryon-max", {"generation_mode": "balanced"})}
DEFAULT_SPEC = ("tryon-v1.6", {"mode": "balanced"})


def ceiling_per_min(latency: float, run: tuple[int, float], status: tuple[int, float], in_flight: int) -> float:
    return 60 * min(run[0] / run[1], in_flight / latency, status[0] / status[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_main(spec: str, archive: str) -> None:
    """One flow run in this process; prints its timings as JSON."""
    import logging

    from flows.collection import tryon_collection

    logging.basicConfig(format="%(relativeCreated)8.0f ms %(process)d %(name)s: %(message)s")
    logging.getLogger("tryon.coordination").setLevel(logging.INFO)  # joins, acknowledgements, leaves

    start, cpu = time.monotonic(), time.process_time()
    state = asyncio.run(tryon_collection(spec=spec, archive=archive, return_state=True))
    print(json.dumps({"start": start, "end": time.monotonic(), "cpu": time.process_time() - cpu,
                      "completed": state.is_completed(), "message": state.message}))


def run_flows(specs: list[Path], archive: Path, env: dict[str, str]) -> tuple[float, float, list[dict]]:
    """The flow on each spec, each in its own process, all at once: (wall, flow CPU, results)."""
    children = [subprocess.Popen([sys.executable, __file__, "--child", str(spec), str(archive)], env=env,
                                 stdout=subprocess.PIPE, text=True) for spec in specs]
    results = []
    for child in children:
        out, _ = child.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["completed"] for r in results), [r["message"] for r in results]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return wall, sum(r["cpu"] for r in results), results


async def naive(url: str, count: int, scale: float, in_flight: int) -> None:
    from fashn import AsyncFashn

    gate = asyncio.Semaphore(in_flight)
    # Closed inside the loop: an SDK client left to the garbage collector closes its connections
    # after asyncio.run has closed the loop, and prints "Event loop is closed" tracebacks.
    async with AsyncFashn(api_key=KEY, base_url=url) as sdk:

        async def one(i: int) -> None:
            async with gate:
                await sdk.predictions.subscribe(model_name="tryon-v1.6", poll_interval=int(1000 / scale), inputs={
                    "model_image": f"{url}/_assets/m{i % 7}.jpg", "garment_image": f"{url}/_assets/g{i}.png",
                    "mode": "balanced"})

        await asyncio.gather(*(one(i) for i in range(count)))


def slot_turn(predictions: list[dict], in_flight: int, scale: float) -> tuple[float, float]:
    """Where a slot's time goes between two predictions, in API seconds: (detect, resubmit).

    detect: a prediction's end to the status call that first answered it; resubmit: that answer
    to the next creation (the k-th noticed end frees the slot of the (k + in_flight)-th creation).
    """
    noticed = sorted((p["noticed"], p["ends"]) for p in predictions if p["noticed"] is not None)
    created = sorted(p["created"] for p in predictions)[in_flight:]
    pairs = list(zip(noticed, created, strict=False))
    if not pairs:
        return 0.0, 0.0
    detect = sum(seen - end for (seen, end), _ in pairs) / len(pairs)
    resubmit = sum(next_created - seen for (seen, _), next_created in pairs) / len(pairs)
    return detect * scale, resubmit * scale


HEADER = (f"{'run':<24} {'items':>5} {'ceiling':>8} {'e2e/min':>8} {'ratio':>6} {'api/min':>8} {'ratio':>6} {'steady':>6} "
          f"{'429 by endpoint:code':>22} {'status/pred':>11} {'notice':>6} {'ms CPU f+s':>11} {'flight':>6} {'turn s d+r':>10}")


def steady_rate(predictions: list[dict], first: float, last: float, mean_latency: float, scale: float) -> float:
    """Completions per API minute between the first creation + 2 mean latencies and the last
    end - 2 mean latencies (the whole span if that leaves nothing)."""
    lo, hi = first + 2 * mean_latency / scale, last - 2 * mean_latency / scale
    if hi <= lo:
        lo, hi = first, last
    ended = sum(1 for p in predictions if lo <= p["ends"] < hi)
    return ended / ((hi - lo) * scale) * 60


def row(name: str, items: int, wall: float, scale: float, emulator, limits,
        cpu: tuple[float, float] | None) -> str:
    run, status, in_flight = limits
    stats, predictions = emulator.stats(), emulator.predictions()
    ceiling = ceiling_per_min(stats["mean_latency"] or 8.0, run, status, in_flight)
    e2e = items / (wall * scale) * 60
    first, last = min(p["created"] for p in predictions), max(p["ends"] for p in predictions)
    api = len(predictions) / ((last - first) * scale) * 60
    steady = steady_rate(predictions, first, last, stats["mean_latency"] or 8.0, scale)
    too_many = ", ".join(f"{endpoint}:{code[4:]} {n}" for endpoint, codes in stats["requests"].items()
                         for code, n in codes.items() if code.startswith("429:")) or "0"
    detect, resubmit = slot_turn(predictions, in_flight, scale)
    seen = [p["noticed"] - p["ends"] for p in predictions if p["noticed"] is not None]
    notice = sum(seen) / len(seen) * scale / (stats["mean_latency"] or 8.0) if seen else 0.0
    cpu_text = f"{cpu[0] / items * 1000:5.0f} +{cpu[1] / items * 1000:4.0f}" if cpu is not None else f"{'-':>11}"
    return (f"{name:<24} {items:>5} {ceiling:>8.1f} {e2e:>8.1f} {e2e / ceiling:>6.0%} {api:>8.1f} {api / ceiling:>6.1%} {steady / ceiling:>6.1%} "
            f"{too_many:>22} {stats['status_calls_per_prediction'] or 0:>11.2f} {notice:>6.1%} {cpu_text} "
            f"{stats['most_in_flight']:>6} {detect:>5.2f}+{resubmit:.2f}")


def where_429s_were(emulator, scale: float) -> str:
    """When each of the first 429s came, in API seconds from the first creation to the last end,
    and how the window it met was filled (to tell a join, the steady state and a leave apart)."""
    stats, predictions = emulator.stats(), emulator.predictions()
    first, last = min(p["created"] for p in predictions), max(p["ends"] for p in predictions)
    return "\n".join(
        f"  429 on {r['endpoint']} at {(r['at'] - first) * scale:.1f} of {(last - first) * scale:.1f} API s; its window "
        f"held {len(r['window'])}, the oldest {(r['at'] - r['window'][0]) * scale:.2f} s before"
        for r in stats["rejections"] if r["window"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="default,real,slow,drift,raised,max",
                        help="comma-separated, in this order: " + ", ".join(MODES))
    parser.add_argument("--items", type=int, help="items of every mode (default: each mode's own)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive SDK baseline")
    parser.add_argument("--webhooks", choices=VARIANTS, default="off",
                        help="off; on: the flow's in-process receiver gets each completion; both: each mode twice")
    parser.add_argument("--webhook-loss", type=float, default=0.0, help="share of webhooks the emulator loses")
    parser.add_argument("--dump", type=Path, help="write each mode's emulator records (JSON) to this folder")
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "ARCHIVE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(*args.child)

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.collections import write_collection
    from tryon.emulator import EmulatorConfig, EmulatorServer

    models = 10
    loss = f", {args.webhook_loss:.0%} lost" if args.webhook_loss else ""
    print(HEADER)
    with prefect_test_harness(server_startup_timeout=120):
        server_pid = SubprocessASGIServer._instances[None].server_process.pid
        for mode in args.modes.split(","):
            for hooks in VARIANTS[args.webhooks]:
                run, status, in_flight, processes, scale, wanted, extra = MODES[mode]
                wanted = args.items or wanted
                if extra.get("latency_steps") == "thirds":  # doubled for the middle third of the creations
                    extra = {**extra, "latency_steps": [(wanted // 3, 2.0), (2 * wanted // 3, 1.0)]}
                config = EmulatorConfig(time_scale=scale, keys={KEY: 10**7}, run_limit=f"{run[0]}/{run[1]}",
                                        status_limit=f"{status[0]}/{status[1]}", max_in_flight=in_flight, **extra,
                                        faults={"webhook_lost_rate": args.webhook_loss} if hooks else {})
                with EmulatorServer(config) as emulator:
                    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT),
                           "FASHN_API_KEY": KEY, "FASHN_BASE_URL": emulator.url,
                           "FASHN_RUN_LIMIT": f"{run[0]}/{run[1] / scale:g}",
                           "FASHN_STATUS_LIMIT": f"{status[0]}/{status[1] / scale:g}",
                           "FASHN_CREDITS_LIMIT": f"30/{10 / scale:g}", "FASHN_MAX_IN_FLIGHT": str(in_flight)}
                    if hooks:  # the flow process runs the receiver; the emulator posts to it
                        env["TRYON_WEBHOOK_LISTEN"] = "127.0.0.1:0"
                    folder = Path(tempfile.mkdtemp(prefix=f"tryon-bench-{mode}-"))
                    garments = max(1, wanted // models // processes)
                    model_name, inputs = SPECS.get(mode, DEFAULT_SPEC)
                    specs = [write_collection(folder / f"p{p}", name=f"bench-{mode}-{p}", garments=garments, models=models,
                                              model_name=model_name, inputs=inputs, variant=p)  # no pair shared
                             for p in range(processes)]
                    items = garments * models * processes
                    server_cpu = cpu_seconds(server_pid)
                    wall, flow_cpu, results = run_flows(specs, folder / "archive", env)
                    if processes > 1:  # how they overlapped: a late start or early end shows here
                        first = min(r["start"] for r in results)
                        print("  processes (wall s from the first start): " + ", ".join(
                            f"{r['start'] - first:.1f}-{r['end'] - first:.1f}" for r in results), file=sys.stderr)
                    server_cpu = cpu_seconds(server_pid) - server_cpu
                    label = f"tryon-flows {LABELS[mode]}" + (f" + webhooks{loss}" if hooks else "")
                    print(row(label, items, wall, scale, emulator, (run, status, in_flight), (flow_cpu, server_cpu)),
                          flush=True)
                    if where := where_429s_were(emulator, scale):
                        print(where, file=sys.stderr)
                    if args.dump:
                        args.dump.mkdir(parents=True, exist_ok=True)
                        (args.dump / f"{mode}-{scale:g}x.json").write_text(json.dumps(
                            {"scale": scale, "in_flight": in_flight, "predictions": emulator.predictions()}))
                    if not args.no_naive and processes == 1 and mode not in SPECS and not hooks:
                        emulator.reset()
                        start = time.monotonic()
                        try:
                            asyncio.run(naive(emulator.url, items, scale, in_flight))
                        except Exception as exc:  # the SDK gives up on 429s after its retries: the run fails
                            print(f"naive SDK {LABELS[mode]}: failed after {emulator.stats()['predictions']} predictions "
                                  f"({type(exc).__name__}: {str(exc)[:80]})", flush=True)
                            continue
                        print(row(f"naive SDK {LABELS[mode]}", items, time.monotonic() - start, scale, emulator,
                                  (run, status, in_flight), None), flush=True)
    print(f"peak RSS: this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
          f"largest flow process {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB; "
          "ms CPU f+s = flow process(es) + Prefect server, per item")


if __name__ == "__main__":
    main()
