"""Several runs on one key: combined throughput, and what a join and a leave cost.

    uv run --locked python bench/shared_key.py --items 600 --third-items 240 --time-scale 5

Two flow processes of ``--items`` each start together on one key (default limits, time-scaled
emulator), and a third of ``--third-items`` starts once they have run ``--third-after`` of their
expected span, so it joins and leaves while they run. They share the key by the rule of
``tryon.traffic.share`` through one Prefect server. Printed, in API time (wall time × time scale):

- the combined rate over the span in which the key was used (first prediction created to last
  ended) against the key's ceiling (min of run rate, in-flight ÷ observed mean latency, status
  rate), and every 429 the emulator answered, of any kind;
- the cost of the third's join and of its leave, in seconds of key capacity: over the window from
  ``W + D`` before its first prediction to one mean latency after it (the join), and from its last
  prediction's end to ``W + D`` plus one mean latency later (the leave), the capacity not used,
  less what the two runs left unused per second before the join (their steady state).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
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

set_env_defaults(EMBEDDED_SERVER_TUNING)

KEY = "fa-bench-shared-key"
RUN, STATUS, CREDITS, IN_FLIGHT = (50, 60.0), (50, 10.0), (30, 10.0), 6
MODELS = 10


def unused(predictions: list[dict], lo: float, hi: float, per_second: float) -> float:
    """Seconds of key capacity not used in [lo, hi): its length less what ended in it at the ceiling."""
    ended = sum(1 for p in predictions if lo <= p["ends"] < hi)
    return (hi - lo) - ended / per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=600, help="items of each of the two long runs")
    parser.add_argument("--third-items", type=int, default=240)
    parser.add_argument("--time-scale", type=float, default=5.0)
    parser.add_argument("--third-after", type=float, default=0.3, help="share of the expected span")
    parser.add_argument("--dump", type=Path, help="write the emulator's records and the runs' times (JSON) here")
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.collections import write_collection
    from tryon.emulator import EmulatorConfig, EmulatorServer
    from tryon.settings import Limit
    from tryon.traffic import SlidingWindowLimiter
    from tryon.traffic.share import default_staleness

    scale = args.time_scale
    limits = {name: Limit(count, seconds / scale) for name, (count, seconds) in
              {"run": RUN, "status": STATUS, "credits": CREDITS}.items()}
    window = max(SlidingWindowLimiter(limit, answers=True).window for limit in limits.values())
    span = window + default_staleness(window)  # W + D, wall seconds
    with prefect_test_harness(server_startup_timeout=120):
        config = EmulatorConfig(time_scale=scale, keys={KEY: 10**7}, run_limit=f"{RUN[0]}/{RUN[1]}",
                                status_limit=f"{STATUS[0]}/{STATUS[1]}", max_in_flight=IN_FLIGHT)
        with EmulatorServer(config) as emulator:
            env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT),
                   "FASHN_API_KEY": KEY, "FASHN_BASE_URL": emulator.url, "FASHN_MAX_IN_FLIGHT": str(IN_FLIGHT),
                   **{f"FASHN_{name.upper()}_LIMIT": str(limit) for name, limit in limits.items()}}
            folder = Path(tempfile.mkdtemp(prefix="tryon-bench-shared-"))
            specs = [write_collection(folder / f"p{i}", name=f"shared-{i}", garments=args.items // MODELS,
                                      models=MODELS, inputs={"mode": "balanced", "seed": i}) for i in range(2)]
            third = write_collection(folder / "p2", name="shared-2", garments=args.third_items // MODELS,
                                     models=MODELS, inputs={"mode": "balanced", "seed": 2}, garment_size=(72, 72))
            # The third's predictions, told apart by their garment images (a size of their own).
            prefixes = {("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())[:200]
                        for path in (folder / "p2" / "img").glob("g*.png")}

            def start(spec: Path) -> subprocess.Popen:
                # One flow run in its own process, as throughput.py runs them (it prints its times as JSON).
                return subprocess.Popen([sys.executable, str(ROOT / "bench" / "throughput.py"), "--child", str(spec),
                                         str(folder / "archive")], env=env, stdout=subprocess.PIPE, text=True)

            children = [start(spec) for spec in specs]
            expected = 2 * args.items / (IN_FLIGHT / 8.0) / scale  # wall seconds at the in-flight ceiling
            time.sleep(args.third_after * expected)
            children.append(start(third))
            results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
            assert all(r["completed"] for r in results), [r["message"] for r in results]
            stats, predictions = emulator.stats(), emulator.predictions()

    if args.dump:
        args.dump.write_text(json.dumps({"stats": stats, "predictions": predictions, "results": results}))
    latency = stats["mean_latency"] / scale  # the emulator reports API seconds; wall from here on
    per_second = min(RUN[0] / RUN[1], IN_FLIGHT / stats["mean_latency"], STATUS[0] / STATUS[1]) * scale
    first, last = min(p["created"] for p in predictions), max(p["ends"] for p in predictions)
    ratio = len(predictions) / (last - first) / per_second
    theirs = [p for p in predictions if p["images"]["garment_image"] in prefixes]
    joined_at, left_at = min(p["created"] for p in theirs) - span, max(p["ends"] for p in theirs)
    steady = unused(predictions, first + 2 * latency, joined_at, per_second) / (joined_at - first - 2 * latency)
    join = unused(predictions, joined_at, joined_at + span + latency, per_second) - steady * (span + latency)
    leave = unused(predictions, left_at, left_at + span + latency, per_second) - steady * (span + latency)
    too_many = stats["too_many_requests"] or {}
    print(f"{'runs':<28} {'items':>5} {'ceiling/min':>11} {'api/min':>8} {'ratio':>6} {'429s':>6} "
          f"{'join cost':>10} {'leave cost':>10} {'W + D':>6}")
    print(f"{'2 x ' + str(args.items) + ' + 1 x ' + str(len(theirs)):<28} {len(predictions):>5} "
          f"{per_second * 60 / scale:>11.1f} {len(predictions) / ((last - first) * scale) * 60:>8.1f} {ratio:>6.1%} "
          f"{sum(too_many.values()):>6} {join * scale:>8.1f} s {leave * scale:>8.1f} s {span * scale:>5.0f}s")
    print(f"  429s by code: {too_many or 'none'}; steady unused before the join: {steady:.1%} of the key; "
          f"costs in API seconds of the whole key's capacity", file=sys.stderr)


if __name__ == "__main__":
    main()
