"""Throughput of the real collection flow against the emulator, beside the naive SDK loop.

    uv run python bench/throughput.py --items 300 --time-scale 10

Both runs use the same emulator settings (default limits and latencies, ±25 % jitter, all
divided by the time scale). Figures are in API time (wall time × time scale), so they compare
directly with the real key's ceiling = min(run rate, in-flight ÷ mean latency, status rate).
The naive baseline is the official ``fashn`` SDK: ``predictions.subscribe`` under
``asyncio.gather`` with ``Semaphore(6)``; its default 1 s poll interval is divided by the time
scale so that it behaves as it would at real time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tryon-bench-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from tests.collections import write_collection  # noqa: E402
from tryon.emulator import EmulatorConfig, EmulatorServer  # noqa: E402

KEY = "fa-bench-key"


def ceiling_per_min(stats: dict, run_limit=(50, 60), in_flight=6, status_limit=(50, 10)) -> float:
    latency = stats["mean_latency"] or 8.0
    return 60 * min(run_limit[0] / run_limit[1], in_flight / latency, status_limit[0] / status_limit[1])


def row(name: str, items: int, wall: float, scale: float, stats: dict, cpu: float | None) -> str:
    rate = items / (wall * scale) * 60
    ceiling = ceiling_per_min(stats)
    cpu_text = f"{cpu / items * 1000:6.0f}" if cpu is not None else "     -"
    return (f"{name:<12} {items:>5} {rate:>9.1f} {ceiling:>8.1f} {rate / ceiling:>6.0%} "
            f"{str(stats['too_many_requests'] or 0):>18} {stats['status_calls_per_prediction'] or 0:>9.2f} "
            f"{cpu_text} {stats['duplicate_hashes']:>4}")


async def naive(emulator: EmulatorServer, count: int, scale: float) -> None:
    from fashn import AsyncFashn

    sdk = AsyncFashn(api_key=KEY, base_url=emulator.url)
    gate = asyncio.Semaphore(6)

    async def one(i: int) -> None:
        async with gate:
            await sdk.predictions.subscribe(model_name="tryon-v1.6", poll_interval=int(1000 / scale), inputs={
                "model_image": f"{emulator.url}/_assets/m{i % 7}.jpg",
                "garment_image": f"{emulator.url}/_assets/g{i}.png", "mode": "balanced"})

    await asyncio.gather(*(one(i) for i in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--time-scale", type=float, default=10.0)
    args = parser.parse_args()
    scale, models = args.time_scale, 10
    garments = max(1, args.items // models)
    items = garments * models
    print(f"{'run':<12} {'items':>5} {'items/min':>9} {'ceiling':>8} {'ratio':>6} {'429 by code':>18} "
          f"{'status/pred':>9} {'ms CPU':>6} {'dup':>4}")
    with EmulatorServer(EmulatorConfig(time_scale=scale, keys={KEY: 10**7})) as emulator:
        os.environ.update({"FASHN_API_KEY": KEY, "FASHN_BASE_URL": emulator.url, "FASHN_LATENCY_SCALE": str(scale),
                           "FASHN_RUN_LIMIT": f"50/{60 / scale:g}", "FASHN_STATUS_LIMIT": f"50/{10 / scale:g}",
                           "FASHN_CREDITS_LIMIT": f"30/{10 / scale:g}"})
        from prefect.testing.utilities import prefect_test_harness

        folder = Path(tempfile.mkdtemp(prefix="tryon-bench-"))
        spec = write_collection(folder, name="bench", garments=garments, models=models, inputs={"mode": "balanced"})
        with prefect_test_harness(server_startup_timeout=120):
            from flows.collection import tryon_collection

            start, cpu = time.monotonic(), time.process_time()
            state = asyncio.run(tryon_collection(spec=str(spec), archive=str(folder / "archive"), return_state=True))
            wall, cpu = time.monotonic() - start, time.process_time() - cpu
        assert state.is_completed(), state.message
        print(row("tryon-flows", items, wall, scale, emulator.stats(), cpu))
        emulator.reset()
        start = time.monotonic()
        asyncio.run(naive(emulator, items, scale))
        print(row("naive SDK", items, time.monotonic() - start, scale, emulator.stats(), None))
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          "ms CPU = flow process only (the Prefect server runs in its own process)")


if __name__ == "__main__":
    main()
