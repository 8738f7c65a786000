"""End to end through Prefect as users run it: ``prefect server start``, a process work pool,
``prefect --no-prompt deploy --all`` from the project's prefect.yaml, a worker, and runs
triggered with ``prefect deployment run ... --param`` against the emulator and moto's S3.

Slow (a server, a worker and a subprocess per flow run) but CI runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.collections import write_collection
from tests.fixtures.emulator import TEST_KEY, TIME_SCALE
from tests.fixtures.s3 import _free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class PrefectStack:
    """A Prefect server and a process worker in their own PREFECT_HOME, and the CLI against them."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                    "DO_NOT_TRACK": "1", "PREFECT_WORKER_QUERY_SECONDS": "1",
                    "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def start(self, *args: str, name: str) -> subprocess.Popen:
        log = self.home / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=self.env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((proc, log))
        return proc

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"prefect server did not start:\n{self.logs()}")

    def run_deployment(self, name: str, **params: object) -> str:
        args = [f"--param={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()]
        out = self.cli("deployment", "run", name, *args)
        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert match, out
        return match.group(1)

    def wait_terminal(self, flow_run_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.http.get(f"/flow_runs/{flow_run_id}").json()
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {flow_run_id} did not finish: {run['state_type']}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}" for _, log in self.processes)

    def stop(self) -> None:
        for proc, _ in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.http.close()


@contextmanager
def _stack(tmp_path_factory, emulator, **extra_env: str) -> Iterator[PrefectStack]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FASHN_", "TRYON_"))}
    env.update({"FASHN_API_KEY": TEST_KEY, "FASHN_BASE_URL": emulator.url, "PYTHONPATH": str(ROOT)})
    for name, (count, seconds) in {"RUN": (50, 60), "STATUS": (50, 10), "CREDITS": (30, 10)}.items():
        env[f"FASHN_{name}_LIMIT"] = f"{count}/{seconds / TIME_SCALE:g}"
    stack = PrefectStack(tmp_path_factory.mktemp("prefect-e2e-home"), env)
    stack.env.update(extra_env)
    try:
        stack.start("server", "start", "--host", "127.0.0.1", "--port", str(stack.port), name="server")
        stack.wait_healthy()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(tmp_path_factory, emulator, s3_server) -> Iterator[PrefectStack]:
    with _stack(tmp_path_factory, emulator) as stack:
        yield stack


@pytest.fixture
def pg_stack(tmp_path_factory, emulator, s3_server, postgres_url) -> Iterator[PrefectStack]:
    """The production shape: the server's database in PostgreSQL."""
    with _stack(tmp_path_factory, emulator, PREFECT_API_DATABASE_CONNECTION_URL=postgres_url) as stack:
        yield stack


def upload_collection(s3, local: Path, folder: str, **kwargs) -> str:
    spec = write_collection(local / folder, **kwargs)
    s3.fs().put(str(local / folder) + "/", s3.url(folder) + "/", recursive=True)
    return s3.url(folder, spec.name)


def archived_outputs(s3, archive: str) -> list[str]:
    """Every output object in the archive."""
    fs = s3.fs()
    fs.invalidate_cache()
    return [p for p in fs.find(archive) if re.search(r"/output_\d+\.\w+$", p)]


def check_report(s3, emulator, archive: str, name: str, items: int, samples: int = 1) -> None:
    """Every item archived, each output byte for byte what the emulator served for its prediction."""
    fs = s3.fs()
    report = json.loads(fs.cat(f"{archive}/{name}/tryon-v1.6/report.json"))
    assert report["totals"] == {"archived": items, "reused": 0, "failed": 0, "skipped": 0}, name
    for entry in report["items"]:
        served = emulator.prediction(entry["prediction_id"])["output_sha256"]
        assert len(entry["outputs"]) == len(served) == samples
        for output in entry["outputs"]:
            assert hashlib.sha256(fs.cat(output["url"])).hexdigest() == served[output["index"]]


def test_deploy_run_backfill_and_sweep_on_a_real_server_and_worker(stack, emulator, s3, tmp_path):
    emulator.reset()
    archive = s3.url("archive")
    inputs = {"mode": "performance"}
    single = upload_collection(s3, tmp_path, "specs/2026-11-01", name="autumn", garments=2, models=2, inputs=inputs)
    upload_collection(s3, tmp_path, "specs/2026-11-02", name="denim", garments=2, models=1, inputs=inputs)
    # Images of their own (variant): collections sharing pairs would reuse each other's outputs.
    upload_collection(s3, tmp_path, "specs/2026-11-03", name="knits", garments=1, models=2, inputs=inputs, variant=1)
    upload_collection(s3, tmp_path, "specs/2025-01-01", name="old", garments=1, models=1, inputs=inputs)

    stack.cli("work-pool", "create", "tryon", "--type", "process")
    deployed = stack.cli("--no-prompt", "deploy", "--all")
    for name in ("tryon-collection/collection", "tryon-sweep-inbox/sweep", "tryon-backfill/backfill"):
        assert name in deployed, deployed
    stack.start("worker", "start", "--pool", "tryon", "--limit", "4", name="worker")

    # The sweep's cron schedule is registered on the server.
    sweep = stack.http.get("/deployments/name/tryon-sweep-inbox/sweep").json()
    assert [s["schedule"].get("cron") for s in sweep["schedules"]] == ["*/15 * * * *"]
    assert all(s["active"] for s in sweep["schedules"])

    # A UI-style run with typed parameters, and a backfill chosen by prefix and date range.
    one = stack.run_deployment("tryon-collection/collection", spec=single, archive=archive, num_samples=2)
    many = stack.run_deployment("tryon-backfill/backfill", pattern=s3.url("specs") + "/", archive=archive,
                                date_from="2026-11-02", date_to="2026-11-30")
    for run_id in (one, many):
        run = stack.wait_terminal(run_id)
        assert run["state_type"] == "COMPLETED", f"{run['state']}\n{stack.logs()}"

    fs = s3.fs()
    for name, items, samples in (("autumn", 4, 2), ("denim", 2, 1), ("knits", 2, 1)):
        check_report(s3, emulator, archive, name, items, samples)
    assert not fs.exists(f"{archive}/old"), "the backfill's date range excludes 2025-01-01"
    assert len(archived_outputs(s3, archive)) == 4 * 2 + 2 + 2, "every image archived once"
    assert emulator.stats()["requests"]["run"] == {"200": 8}, "one submission per item, none twice"

    # The same backfill again starts no paid work; a new inbox spec is swept once, then never again.
    again = stack.run_deployment("tryon-backfill/backfill", pattern=s3.url("specs") + "/", archive=archive,
                                 date_from="2026-11-02")
    assert stack.wait_terminal(again)["state_type"] == "COMPLETED"
    upload_collection(s3, tmp_path, "inbox/drop-1", name="inbox-coll", garments=1, models=2, inputs=inputs,
                      variant=2)
    for expected_new in (2, 0):
        before = sum(emulator.stats()["requests"].get("run", {}).values())
        run_id = stack.run_deployment("tryon-sweep-inbox/sweep", inbox=s3.url("inbox"), archive=archive)
        run = stack.wait_terminal(run_id)
        assert run["state_type"] == "COMPLETED", f"{run['state']}\n{stack.logs()}"
        assert sum(emulator.stats()["requests"]["run"].values()) - before == expected_new
    check_report(s3, emulator, archive, "inbox-coll", 2, 1)
    assert len(archived_outputs(s3, archive)) == 4 * 2 + 2 + 2 + 2


def test_three_runs_at_once_on_one_key_two_workers_and_postgresql(pg_stack, emulator, s3, tmp_path):
    # A backfill, a UI-style run and a sweep started together on one key, picked up by two process
    # workers of one pool, against a server whose database is PostgreSQL.
    stack = pg_stack
    emulator.reset()
    archive = s3.url("pg-archive")
    inputs = {"mode": "balanced"}
    sizes = {"spring": (3, 2), "linen": (2, 2), "ui-run": (3, 2), "swept": (2, 2)}  # garments, models
    # Images of their own (no pair shared: each is paid for, none reused from another collection).
    upload_collection(s3, tmp_path, "pg-specs/a", name="spring", garments=3, models=2, inputs=inputs, variant=11)
    upload_collection(s3, tmp_path, "pg-specs/b", name="linen", garments=2, models=2, inputs=inputs, variant=12)
    single = upload_collection(s3, tmp_path, "pg-ui", name="ui-run", garments=3, models=2, inputs=inputs,
                               variant=13)
    upload_collection(s3, tmp_path, "pg-inbox/drop", name="swept", garments=2, models=2, inputs=inputs, variant=14)

    stack.cli("work-pool", "create", "tryon", "--type", "process")
    stack.cli("--no-prompt", "deploy", "--all")
    for worker in ("worker-1", "worker-2"):
        stack.start("worker", "start", "--pool", "tryon", "--limit", "2", "--name", worker, name=worker)
    runs = [stack.run_deployment("tryon-backfill/backfill", pattern=s3.url("pg-specs") + "/", archive=archive),
            stack.run_deployment("tryon-collection/collection", spec=single, archive=archive),
            stack.run_deployment("tryon-sweep-inbox/sweep", inbox=s3.url("pg-inbox"), archive=archive)]
    finished = [stack.wait_terminal(run_id, timeout=300) for run_id in runs]
    assert [run["state_type"] for run in finished] == ["COMPLETED"] * 3, f"{finished}\n{stack.logs()}"

    for name, (garments, models) in sizes.items():
        check_report(s3, emulator, archive, name, garments * models)
    items = sum(g * m for g, m in sizes.values())
    stats = emulator.stats()
    assert stats["too_many_requests"] == {}, stats["too_many_requests"]
    assert stats["requests"]["run"] == {"200": items}, "one submission per item, none twice"
    assert len(archived_outputs(s3, archive)) == items, "every image archived once"
    took = {log.name: sum(run_id in log.read_text(errors="replace") for run_id in runs)
            for _, log in stack.processes if log.name.startswith("worker")}
    assert len(took) == 2 and all(took.values()), f"both workers ran some: {took}"


@pytest.fixture
def ui_stack(tmp_path_factory, emulator) -> Iterator[PrefectStack]:
    with _stack(tmp_path_factory, emulator, PREFECT_UI_ENABLED="true") as stack:
        yield stack


async def test_the_run_form_is_ready_to_type_in_a_real_browser(ui_stack):
    # The deployment's run page as a person opens it: every field an input or a select, the model and
    # mode dropdowns from the registry, no "str / None" type toggle. The screenshot is kept in
    # test-artifacts/ (TRYON_TEST_ARTIFACTS).
    import asyncio

    from tests.browser import Browser, chromium_path
    from tryon.models import ACCEPTED_MODES, MODELS

    if chromium_path() is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("chromium is not installed (scripts/_system.sh)")
    stack = ui_stack
    stack.cli("work-pool", "create", "tryon", "--type", "process")
    stack.cli("--no-prompt", "deploy", "--all")
    deployment = stack.http.get("/deployments/name/tryon-collection/collection").json()["id"]
    page_url = stack.api.removesuffix("/api") + f"/deployments/deployment/{deployment}/run"
    artifacts = Path(os.environ.get("TRYON_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    async with Browser(width=1400, height=2400, timeout=60) as page:
        await page.open(page_url)
        form = None
        for _ in range(300):  # the form renders after the page's scripts fetched the deployment
            form = await page.evaluate("""(() => {
                const text = document.body.innerText;
                if (!text.includes('archive_block')) return null;
                return {text, selects: Array.from(document.querySelectorAll('select')).map(
                            s => Array.from(s.options).map(o => o.textContent.trim())),
                        fields: document.querySelectorAll('input, textarea').length};
            })()""")
            if form:
                break
            await asyncio.sleep(0.1)
        await page.screenshot(artifacts / "run-form.png")
    assert form, "the run form never rendered"
    assert 'Property is type "None"' not in form["text"] and "is a const" not in form["text"], form["text"]
    choices = [options for options in form["selects"] if options and options[0] == "as in the spec"]
    assert [*MODELS] in [options[1:] for options in choices], form["selects"]
    assert [*ACCEPTED_MODES] in [options[1:] for options in choices], form["selects"]
    assert form["fields"] >= 6, "spec, the inline spec's name and date, archive, num_samples and the block names"
