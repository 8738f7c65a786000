"""Soak: a large collection through the real flow, every fault at once, a SIGKILL, a resume.

    uv run --locked python bench/soak.py --items 1000 --time-scale 50 --seed 1

The emulator runs in this process with every fault it can inject: prediction failures of each
retryable and non-retryable name (by rate; one garment always fails with PipelineError, one
has an image that is not an image), 5xx and dropped connections on ``POST /v1/run`` before and
after creating the prediction, 5xx on ``GET /v1/status``, slow answers and expired outputs.
The archive is ``flaky://`` (bench/flakyfs.py): a share of its writes fail, half of them after
the object was written. The flow runs in a child process (``tryon run`` against a Prefect
server this process starts, or the one given), is killed with SIGKILL once a random number of
predictions exist, and is started again to the end. Then the soak prints and checks, against
the emulator's own records:

- every item is archived (its outputs on disk, result.json) or failed with its reason: 0 lost;
- predictions created twice for the same inputs: each one explained (the earlier one failed
  with a retryable name, or ``POST /v1/run`` answered 5xx / dropped the connection after
  creating it, and then the item is flagged ``possible_duplicate_charge``, or the earlier one
  was created just before the SIGKILL and its id never reached the archive); 0 unexplained;
- every archived image's sha256 equals what the emulator served for that prediction;
- 0 × 429 (the emulator is told to inject none).

With ``--webhooks`` the flow runs its receiver in-process and the emulator posts to it (a share
lost, duplicated and out of order too). Then also: every ambiguous answer whose webhook was
delivered is recovered (its prediction adopted, not paid again) unless the SIGKILL cut the wait,
and the items flagged ``recovered_ambiguous`` match the emulator's records.

``tests/test_soak.py`` runs it reduced (120 items) in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "fa-soak-key-0123456789"
COLLECTION = "soak"
MODEL_NAME = "tryon-v1.6"
MAX_RESUBMITS = 2
# A prediction created up to KILL_WINDOW s before the SIGKILL may lose its id to it; so may one
# created up to KILL_LATE s after it, from a request sent before it (the next run needs seconds
# to start Python and Prefect: it cannot have sent anything that early).
KILL_WINDOW = 3.0
KILL_LATE = 1.0
STUBBORN = "stubborn"  # a garment whose every prediction fails with PipelineError
NOT_AN_IMAGE = "notimg"  # a garment whose image URL serves text/plain -> ImageLoadError


def fault_config(items: int) -> dict[str, Any]:
    """Every fault the emulator can inject, at rates that give a few of each even when reduced."""
    from tryon.errors import NON_RETRYABLE_FAILURES, RETRYABLE_FAILURES

    failure_rates = {name: 0.012 for name in sorted(RETRYABLE_FAILURES)}
    failure_rates.update({name: 0.006 for name in sorted(NON_RETRYABLE_FAILURES)})
    return {
        "failure_rates": failure_rates,
        "fail_inputs": {STUBBORN: "PipelineError"},
        "server_error_before_rate": 0.025,
        "server_error_after_rate": 0.025,
        "drop_before_rate": 0.025,
        "drop_after_rate": 0.025,
        "status_error_rate": 0.03,
        "slow_rate": 0.05,
        "slow_seconds": 15.0,
        "expired_output_rate": max(0.01, 3 / max(items, 1)),
    }


# -- the collection -------------------------------------------------------------------------------

def write_spec(folder: Path, base_url: str, items: int) -> tuple[Path, list[str]]:
    """``garments × models`` items whose images are URLs on the emulator; returns the spec and labels."""
    import yaml

    models = 10 if items >= 50 else max(1, items // 5)
    garments = max(2, math.ceil(items / models))
    garment_rows = []
    for g in range(garments):
        gid = f"g{g:04d}" + (f"-{STUBBORN}" if g == 1 else f"-{NOT_AN_IMAGE}" if g == 2 else "")
        ext = "txt" if g == 2 else "png"
        row: dict[str, Any] = {"id": gid, "image": f"{base_url}/_assets/{gid}.{ext}"}
        inputs: dict[str, Any] = {}
        if g % 4 == 3:
            inputs["num_samples"] = 2
        if g % 3 == 0:
            inputs["mode"] = "performance"
        if inputs:
            row["inputs"] = inputs
        garment_rows.append(row)
    model_rows = [{"id": f"m{m:02d}", "image": f"{base_url}/_assets/m{m:02d}.jpg"} for m in range(models)]
    spec = {"name": COLLECTION, "model_name": MODEL_NAME, "inputs": {"mode": "balanced"},
            "garments": garment_rows, "models": model_rows, "pairs": "all"}
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    labels = [f"{g['id']}__{m['id']}" for g in garment_rows for m in model_rows]
    return path, labels


# -- the flow process -----------------------------------------------------------------------------

def child_env(base_url: str, scale: float, prefect_api_url: str, workdir: Path, seed: int, run: int,
              webhooks: bool = False) -> dict[str, str]:
    env = {**os.environ, "FASHN_API_KEY": KEY, "FASHN_BASE_URL": base_url,
           "FASHN_MAX_RESUBMITS": str(MAX_RESUBMITS), "PREFECT_API_URL": prefect_api_url,
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "FLAKY_FS_SEED": f"{seed}:{run}", "FLAKY_FS_LOG": str(workdir / "flaky-writes.log"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    for name, (count, seconds) in {"RUN": (50, 60), "STATUS": (50, 10), "CREDITS": (30, 10)}.items():
        env[f"FASHN_{name}_LIMIT"] = f"{count}/{seconds / scale:g}"
    env.setdefault("FLAKY_FS_RATE", "0.05")
    if webhooks:
        env["TRYON_WEBHOOK_LISTEN"] = "127.0.0.1:0"
    return env


def start_flow(spec: Path, archive_url: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec), archive_url]
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def child_main(spec: str, archive_url: str) -> None:
    """The flow process: ``tryon run`` with the flaky filesystem registered."""
    import bench.flakyfs  # noqa: F401  (registers flaky://)
    from flows.cli import app

    sys.exit(app(["run", spec, "--archive", archive_url]))


# -- the run --------------------------------------------------------------------------------------

@dataclass
class SoakResult:
    items: int
    time_scale: float
    seed: int
    labels: list[str]
    archive: Path
    kill_target: int  # predictions created when the SIGKILL is sent
    killed: bool = False
    kill_time: float | None = None  # emulator clock (time.monotonic in this process)
    kill_after: float | None = None  # seconds into the first run
    created_at_kill: int = 0
    recorded_at_kill: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)  # rc, seconds, log tail
    wall: float = 0.0
    predictions: list[dict[str, Any]] = field(default_factory=list)  # the emulator's records
    stats: dict[str, Any] = field(default_factory=dict)
    flaky_writes: Counter = field(default_factory=Counter)
    report: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> result.json
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> prediction.json left over
    garment_of: dict[str, str] = field(default_factory=dict)  # image URL -> id
    model_of: dict[str, str] = field(default_factory=dict)
    webhooks: bool = False


def _emulator_state(emulator) -> Any:
    return emulator._server.config.app.state.emulator.state  # same process: a cheap look


def _recorded(archive: Path) -> int:
    return sum(1 for _ in archive.rglob("prediction.json")) + sum(1 for _ in archive.rglob("result.json"))


def run_soak(items: int = 1000, time_scale: float = 50.0, seed: int = 1, *, kill: bool = True,
             workdir: Path | None = None, prefect_api_url: str | None = None, timeout: float = 1800.0,
             verbose: bool = True, webhooks: bool = False) -> SoakResult:
    """Run the soak; ``prefect_api_url`` None: use the current Prefect settings' server, or start one."""
    if prefect_api_url is None:
        import prefect.settings

        prefect_api_url = prefect.settings.PREFECT_API_URL.value()
        if not prefect_api_url:
            from prefect.testing.utilities import prefect_test_harness

            with prefect_test_harness(server_startup_timeout=120):
                return run_soak(items, time_scale, seed, kill=kill, workdir=workdir, timeout=timeout, verbose=verbose,
                                prefect_api_url=prefect.settings.PREFECT_API_URL.value(), webhooks=webhooks)

    from tryon.emulator import EmulatorConfig, EmulatorServer

    workdir = Path(workdir or tempfile.mkdtemp(prefix="tryon-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / "archive"
    rng = random.Random(seed)
    say = print if verbose else (lambda *a, **k: None)
    faults = fault_config(items)
    if webhooks:
        faults.update(webhook_lost_rate=0.05, webhook_duplicate_rate=0.05, webhook_out_of_order_rate=0.05)
    config = EmulatorConfig(time_scale=time_scale, keys={KEY: 10**8}, seed=seed,
                            faults=faults)  # type: ignore[arg-type]
    start = time.monotonic()
    with EmulatorServer(config) as emulator:
        spec, labels = write_spec(workdir, emulator.url, items)
        result = SoakResult(items=len(labels), time_scale=time_scale, seed=seed, labels=labels, archive=archive,
                            kill_target=rng.randint(max(1, len(labels) * 15 // 100), max(2, len(labels) * 60 // 100)))
        state = _emulator_state(emulator)
        archive_url = f"flaky://{archive}"
        deadline = start + timeout
        for run in (1, 2):
            env = child_env(emulator.url, time_scale, prefect_api_url, workdir, seed, run, webhooks)
            log = workdir / f"run{run}.log"
            began = time.monotonic()
            process = start_flow(spec, archive_url, env, log)
            say(f"run {run}: flow process {process.pid} started (log {log})")
            try:
                while process.poll() is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"run {run} did not end within {timeout:g} s; see {log}")
                    if run == 1 and kill and len(state.predictions) >= result.kill_target:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        result.killed, result.kill_time = True, time.monotonic()
                        result.kill_after = result.kill_time - began
                        result.created_at_kill = len(state.predictions)
                        result.recorded_at_kill = _recorded(archive)
                        say(f"run 1: SIGKILL after {result.kill_after:.1f} s, {result.created_at_kill} "
                            f"predictions created, {result.recorded_at_kill} items recorded in the archive")
                        break
                    time.sleep(0.005)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            text = log.read_text(errors="replace")
            result.runs.append({"run": run, "rc": process.returncode, "seconds": round(time.monotonic() - began, 1),
                                "started": began, "tail": text[-3000:]})
            if run == 1 and not result.killed:
                say("run 1 ended before the kill point: no SIGKILL this time")
            say(f"run {run}: exit {process.returncode} after {result.runs[-1]['seconds']} s")
        result.wall = time.monotonic() - start
        result.predictions = emulator.predictions()
        result.stats = emulator.stats()
    (workdir / "soak.json").write_text(json.dumps({
        "items": result.items, "time_scale": time_scale, "seed": seed, "labels": labels,
        "kill_target": result.kill_target, "killed": result.killed, "kill_time": result.kill_time,
        "kill_after": result.kill_after, "created_at_kill": result.created_at_kill,
        "recorded_at_kill": result.recorded_at_kill, "runs": result.runs, "wall": result.wall,
        "predictions": result.predictions, "stats": result.stats, "webhooks": webhooks}))
    return load(workdir)


def load(workdir: Path) -> SoakResult:
    """A finished soak from its folder (``soak.json``, the spec, the archive), to analyse again."""
    import yaml

    workdir = Path(workdir)
    saved = json.loads((workdir / "soak.json").read_text())
    archive = workdir / "archive"
    labels = saved["labels"]
    result = SoakResult(
        items=saved["items"], time_scale=saved["time_scale"], seed=saved["seed"], labels=labels, archive=archive,
        kill_target=saved["kill_target"], killed=saved["killed"], kill_time=saved["kill_time"],
        kill_after=saved["kill_after"], created_at_kill=saved["created_at_kill"],
        recorded_at_kill=saved["recorded_at_kill"], runs=saved["runs"], wall=saved["wall"],
        predictions=saved["predictions"], stats=saved["stats"], webhooks=saved.get("webhooks", False))
    data = yaml.safe_load((workdir / "soak.yaml").read_text())
    result.garment_of = {g["image"]: g["id"] for g in data["garments"]}
    result.model_of = {m["image"]: m["id"] for m in data["models"]}
    log = workdir / "flaky-writes.log"
    if log.exists():
        result.flaky_writes = Counter(line.split(" ", 1)[0] for line in log.read_text().splitlines() if line)
    folder = archive / COLLECTION / MODEL_NAME
    report = folder / "report.json"
    result.report = json.loads(report.read_text()) if report.exists() else None
    for label in labels:
        for name, target in (("result.json", result.results), ("prediction.json", result.pending)):
            path = folder / label / name
            if path.exists():
                target[label] = json.loads(path.read_text())
    return result


# -- the checks -----------------------------------------------------------------------------------

def analyse(result: SoakResult) -> dict[str, Any]:
    """The figures the soak prints, and the problems it finds (``figures["problems"]``)."""
    from tryon.errors import RETRYABLE_FAILURES

    problems: list[str] = []
    folder = result.archive / COLLECTION / MODEL_NAME
    entries = {e["label"]: e for e in (result.report or {}).get("items", [])}
    if result.report is None:
        problems.append("no report.json after the last run")
    for run in result.runs:
        if run["rc"] not in (0, 1) and not (run["run"] == 1 and result.killed):
            problems.append(f"run {run['run']} crashed with exit {run['rc']}: {run['tail'][-600:]}")

    # Every item archived or failed with its reason.
    states: Counter[str] = Counter()
    failed_by_reason: Counter[str] = Counter()
    lost: list[str] = []
    sha_checked = 0
    sha_mismatches: list[str] = []
    predictions = {p["id"]: p for p in result.predictions}
    for label in result.labels:
        res, entry = result.results.get(label), entries.get(label)
        if res is not None and res["state"] == "archived":
            if entry is None or entry["state"] not in ("archived", "skipped"):
                lost.append(f"{label}: archived in the archive but {entry and entry['state']} in the report")
                continue
            missing = [o["name"] for o in res["outputs"] if not (folder / label / o["name"]).exists()]
            if missing or not res["outputs"]:
                lost.append(f"{label}: result.json says archived but outputs {missing or 'none'} are missing")
                continue
            states["archived"] += 1
            served = predictions.get(res["prediction_id"])
            for output in res["outputs"]:
                sha_checked += 1
                digest = hashlib.sha256((folder / label / output["name"]).read_bytes()).hexdigest()
                on_server = (served or {}).get("served_sha256", [])
                index = output["index"]
                if served is None or index >= len(on_server):
                    sha_mismatches.append(f"{label}/{output['name']}: the emulator has no prediction "
                                          f"{res['prediction_id']} output {index}")
                elif digest != output["sha256"] or digest not in on_server[index]:
                    sha_mismatches.append(f"{label}/{output['name']}: archived {digest[:12]}, recorded "
                                          f"{output['sha256'][:12]}, served {[s[:12] for s in on_server[index]]}")
        elif res is not None and res["state"] == "failed" and res.get("error_name"):
            if entry is None or entry["state"] != "failed" or entry.get("error_name") != res["error_name"]:
                lost.append(f"{label}: failed {res['error_name']} in the archive but "
                            f"{entry and (entry['state'], entry.get('error_name'))} in the report")
                continue
            states["failed"] += 1
            failed_by_reason[res["error_name"]] += 1
        elif entry is not None and entry["state"] == "failed" and entry.get("error_name"):
            states["failed (report only)"] += 1
            failed_by_reason[f"{entry['error_name']} (no result.json)"] += 1
        else:
            lost.append(f"{label}: no result.json and report entry {entry and entry['state']}")
    if lost:
        problems.append(f"{len(lost)} items lost: " + "; ".join(lost[:10]))
    if sha_mismatches:
        problems.append(f"{len(sha_mismatches)} archived outputs differ from what the emulator served: "
                        + "; ".join(sha_mismatches[:10]))
    if len(entries) != len(result.labels):
        problems.append(f"the last report lists {len(entries)} items, the collection has {len(result.labels)}")

    # Predictions per input: every one after the first explained.
    recorded_ids: set[str] = set()
    for record in (*result.results.values(), *result.pending.values()):
        recorded_ids.update(record.get("prediction_ids") or [])
        if record.get("prediction_id"):
            recorded_ids.add(record["prediction_id"])
    for entry in entries.values():
        recorded_ids.update(entry.get("prediction_ids") or [])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in result.predictions:
        images = p["images"]
        label = f"{result.garment_of.get(images['garment_image'], '?')}__{result.model_of.get(images['model_image'], '?')}"
        groups[label].append(p)
    explained: Counter[str] = Counter()
    unexplained: list[str] = []
    unflagged: list[str] = []
    flag_lost_in_kill = 0
    kill_ages: list[float] = []
    duplicate_groups = 0
    charged_twice = 0
    recovered = 0  # items with an ambiguous answer whose prediction was adopted (with webhooks)
    resubmitted_despite_webhook: list[str] = []
    for label, group in groups.items():
        if label not in entries and label not in result.results:
            unexplained.append(f"{label}: predictions for inputs outside the collection")
            continue
        group.sort(key=lambda p: p["created"])
        if len(group) > 1:
            duplicate_groups += 1
        if sum(1 for p in group if p["status"] == "completed") > 1:
            charged_twice += 1
        flagged = bool((result.results.get(label) or {}).get("possible_duplicate_charge")
                       or (entries.get(label) or {}).get("possible_duplicate_charge"))
        after_404 = bool((result.results.get(label) or {}).get("resubmitted_after_404")
                         or (entries.get(label) or {}).get("resubmitted_after_404"))
        # An ambiguous answer's id reaches the archive only when its webhook named it (adopted).
        recovered += any(p["answer"] != "ok" and p["id"] in recorded_ids for p in group)
        for before, after in pairwise(group):
            failure = before["failure"][0] if before["failure"] and before["status"] == "failed" else None
            # The one window no client closes: created just before the SIGKILL, and the id (or the
            # ambiguous answer) not yet written to the archive when the process died.
            # A request already sent when the process died may still be handled just after the kill.
            age = result.kill_time - before["created"] if result.kill_time is not None else None
            in_kill_window = (age is not None and -KILL_LATE <= age <= KILL_WINDOW
                              and after["created"] > result.kill_time + KILL_LATE)
            adopted_then_failed = failure in RETRYABLE_FAILURES and before["id"] in recorded_ids
            if before["answer"] != "ok" and not adopted_then_failed:
                explained[f"ambiguous answer ({before['answer']})"] += 1
                if result.webhooks and before.get("webhook") == "delivered" and not in_kill_window:
                    resubmitted_despite_webhook.append(f"{label}: {before['id']}")
                if not flagged:
                    if in_kill_window:
                        flag_lost_in_kill += 1
                        kill_ages.append(age)
                    else:
                        unflagged.append(f"{label}: {before['answer']} on {before['id']} but no "
                                         "possible_duplicate_charge in result.json or the report")
            elif failure in RETRYABLE_FAILURES:
                explained[f"retryable failure ({failure})"] += 1
            elif in_kill_window and before["id"] not in recorded_ids:
                explained["created just before the SIGKILL, id not recorded"] += 1
                kill_ages.append(age)
            elif after_404:
                explained["404 on resume"] += 1
            else:
                unexplained.append(f"{label}: {after['id']} after {before['id']} ({before['status']}, "
                                   f"failure {before['failure']}, answer {before['answer']}, "
                                   f"{'recorded' if before['id'] in recorded_ids else 'never recorded'})")
    if unexplained:
        problems.append(f"{len(unexplained)} unexplained duplicate predictions: " + "; ".join(unexplained[:10]))
    if unflagged:
        problems.append(f"{len(unflagged)} possible duplicate charges missing from the report: "
                        + "; ".join(unflagged[:10]))

    flagged_recovered = sum(1 for r in result.results.values() if r.get("recovered_ambiguous"))
    if result.webhooks:
        if resubmitted_despite_webhook:
            problems.append(f"{len(resubmitted_despite_webhook)} ambiguous answers paid again although their "
                            "webhook came: " + "; ".join(resubmitted_despite_webhook[:10]))
        # The flag is recorded with the adopted prediction's id, so a resumed run reports it too.
        if flagged_recovered != recovered:
            problems.append(f"{flagged_recovered} items flagged recovered_ambiguous, but the emulator shows "
                            f"{recovered} items whose ambiguous answer's prediction was not paid again")

    too_many = result.stats.get("too_many_requests") or {}
    if too_many:
        problems.append(f"429s the emulator was not told to inject: {too_many}")

    injected = dict(result.stats.get("injected", {}))
    injected.update({f"archive_write_{k}": v for k, v in result.flaky_writes.items()})
    return {
        "items": result.items, "archived": states["archived"], "failed": states["failed"] + states["failed (report only)"],
        "failed_by_reason": dict(sorted(failed_by_reason.items())), "lost": len(lost),
        "predictions": len(result.predictions), "inputs_with_duplicates": duplicate_groups,
        "charged_twice": charged_twice, "duplicates_explained": dict(explained),
        "duplicates_unexplained": len(unexplained), "duplicate_flag_lost_in_kill": flag_lost_in_kill,
        "ambiguous_recovered": recovered, "recovered_ambiguous_flagged": flagged_recovered,
        "possible_duplicate_charges_flagged": sum(1 for r in result.results.values() if r.get("possible_duplicate_charge")),
        "sha256_checked": sha_checked, "sha256_mismatches": len(sha_mismatches),
        "too_many_requests": too_many, "injected": dict(sorted(injected.items())),
        "requests": result.stats.get("requests"), "most_in_flight": result.stats.get("most_in_flight"),
        "wall_seconds": round(result.wall, 1), "runs": [{k: r[k] for k in ("run", "rc", "seconds")} for r in result.runs],
        "kill": {"killed": result.killed, "target_predictions": result.kill_target,
                 "after_seconds": round(result.kill_after, 1) if result.kill_after else None,
                 "predictions_created": result.created_at_kill, "items_recorded": result.recorded_at_kill,
                 "lost_to_the_kill": len(kill_ages),
                 "created_s_before_kill": [round(min(kill_ages), 3), round(max(kill_ages), 3)] if kill_ages else None},
        "problems": problems,
    }


def check(result: SoakResult) -> list[str]:
    """The problems found (empty: the soak passed)."""
    return analyse(result)["problems"]


def print_figures(figures: dict[str, Any]) -> None:
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        if name == "problems":
            continue
        print(f"{name:<{width}}  {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    if figures["problems"]:
        print(f"PROBLEMS ({len(figures['problems'])}):")
        for problem in figures["problems"]:
            print(f"  - {problem}")
    else:
        print("OK: 0 lost, 0 unexplained duplicates, 0 sha256 mismatches, 0 × 429")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--time-scale", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--webhooks", action="store_true", help="the flow receives webhooks (some lost)")
    parser.add_argument("--no-kill", action="store_true", help="run once to the end, without the SIGKILL")
    parser.add_argument("--workdir", type=Path, help="keep the archive and logs here (default: a temp folder)")
    parser.add_argument("--analyse", type=Path, metavar="WORKDIR", help="print the figures of a finished soak again")
    args = parser.parse_args()
    if args.analyse:
        figures = analyse(load(args.analyse))
        print_figures(figures)
        sys.exit(1 if figures["problems"] else 0)
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tryon-soak-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    result = run_soak(args.items, args.time_scale, args.seed, kill=not args.no_kill, workdir=args.workdir,
                      webhooks=args.webhooks)
    figures = analyse(result)
    print(f"archive: {result.archive}")
    print_figures(figures)
    sys.exit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
