"""The review gate (flows/review.py): its form, and over real parts a flow run of a deployment
served by ``flow.serve`` that suspends (its process exits), is resumed through Prefect's API with
three rejected labels, waits again for its second round, and is approved. The form renders in
headless Chromium as a multi-select (screenshot in test-artifacts/)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from flows.review import review_form, review_labels

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["shirt__ava", "coat__ava", "dress__ava", "shirt__bo", "coat__bo", "dress__bo"]
FLAGGED = {"coat__bo": ["blank (near-uniform)"], "dress__ava": ["size 432×648, the model makes 864×1296"]}


def test_flagged_labels_come_first_in_collection_order():
    assert review_labels(LABELS, FLAGGED) == ["dress__ava", "coat__bo", "shirt__ava", "coat__ava", "shirt__bo",
                                              "dress__bo"]


def test_the_form_is_a_multi_select_of_the_labels_with_the_flags_described():
    from prefect._internal.pydantic.v2_schema import create_v2_schema

    form = review_form(LABELS, FLAGGED)
    schema = create_v2_schema(form.__name__, model_base=form)  # what Prefect stores for the UI
    reject = schema["properties"]["reject"]
    assert reject["type"] == "array" and reject["items"]["enum"] == review_labels(LABELS, FLAGGED)
    assert set(schema["properties"]) == {"reject", "reason", "approve_all"}
    assert "`coat__bo`: blank" in form._description and "432×648" in form._description
    assert form(reject=["coat__bo"]).reject == ["coat__bo"]
    with pytest.raises(ValueError, match="coat__zed"):
        form(reject=["coat__zed"])
    with pytest.raises(ValueError, match="at least one label"):
        review_form([], {})


# -- over a real server, a served deployment and a browser ----------------------------------------

def _exits(pid: int, timeout: float = 60) -> bool:
    """True once process ``pid`` is gone (the run's state turns Suspended just before its process ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


class Served:
    """The gate's probe flow and the collection flow (tests/review_served.py) served on a Prefect
    server with its UI, the collection flow's runs pointed at the shared test emulator."""

    def __init__(self, stack, deployment: str, collection: str, serve_pid: int) -> None:
        self.stack, self.deployment = stack, deployment
        self.collection, self.serve_pid = collection, serve_pid  # the collection flow's deployment; serve's pid

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One call to the server; a 503 (SQLite busy on a loaded machine) is tried again, as
        Prefect's own client does."""
        for _ in range(20):
            response = self.stack.http.request(method, path, **kwargs)
            if response.status_code != 503:
                response.raise_for_status()
                return response
            time.sleep(0.5)
        response.raise_for_status()
        return response

    def start_run(self, out: Path) -> str:
        out.mkdir(parents=True, exist_ok=True)
        return self.api("POST", f"/deployments/{self.deployment}/create_flow_run", json={
            "parameters": {"labels": LABELS, "flagged": FLAGGED, "out": str(out)}}).json()["id"]

    def state_name(self, run_id: str) -> str:
        return self.api("GET", f"/flow_runs/{run_id}").json()["state_name"]

    def wait(self, run_id: str, state_name: str, runs: int, out: Path, timeout: float = 240) -> dict:
        """Wait until the run is in ``state_name`` after its ``runs``-th process started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/flow_runs/{run_id}").json()
            log = out / "processes.log"
            started = len(log.read_text().split()) if log.exists() else 0
            if run["state_name"] == state_name and started == runs:
                return run
            time.sleep(0.3)
        raise AssertionError(f"{run_id} never reached {state_name} in its run {runs}: {run['state_name']}\n"
                             f"{self.stack.logs()}")

    def pids(self, out: Path) -> list[int]:
        return [int(p) for p in (out / "processes.log").read_text().split()]


@pytest.fixture(scope="module")
def served(tmp_path_factory, emulator) -> Iterator[Served]:
    from tests.fixtures.emulator import TIME_SCALE, flow_env
    from tests.test_deployments_e2e import PrefectStack

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FASHN_", "TRYON_"))}
    env.update(flow_env(emulator, TIME_SCALE), PYTHONPATH=str(ROOT))
    stack = PrefectStack(tmp_path_factory.mktemp("prefect-review-home"), env)
    stack.env.update(PREFECT_UI_ENABLED="true", PREFECT_RUNNER_POLL_FREQUENCY="1")
    try:
        stack.start("server", "start", "--host", "127.0.0.1", "--port", str(stack.port), name="server")
        stack.wait_healthy(timeout=400)  # a busy 2-core machine takes minutes for the first migration
        log = stack.home / "serve.log"
        proc = subprocess.Popen([sys.executable, "-m", "tests.review_served"], cwd=ROOT, env=stack.env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        stack.processes.append((proc, log))
        deadline = time.monotonic() + 180
        while (answer := stack.http.get("/deployments/name/review-gate-probe/review")).status_code != 200 or \
                (collection := stack.http.get("/deployments/name/tryon-collection/review")).status_code != 200:
            assert time.monotonic() < deadline and proc.poll() is None, f"serve did not start\n{stack.logs()}"
            time.sleep(0.5)
        yield Served(stack, answer.json()["id"], collection.json()["id"], proc.pid)
    finally:
        stack.stop()


async def _resume(api: str, run_id: str, run_input: dict) -> None:
    """Resume as a script or an automation would: Prefect's own ``resume_flow_run``."""
    from prefect.flow_runs import aresume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        await aresume_flow_run(UUID(run_id), run_input=run_input)


def _events(served: Served, run_id: str) -> list[dict]:
    """The gate's events of this flow run, oldest first (stored asynchronously: the caller waits)."""
    return served.api("POST", "/events/filter", json={"filter": {
        "event": {"prefix": ["tryon.review."]}, "related": {"id": [f"prefect.flow-run.{run_id}"]},
        "order": "ASC"}, "limit": 50}).json()["events"]


@pytest.mark.slow
async def test_a_suspended_review_holds_no_process_and_gets_the_rejected_labels_on_resume(served, tmp_path):
    stack, out = served.stack, tmp_path / "probe"
    run_id = served.start_run(out)
    run = served.wait(run_id, "Suspended", runs=1, out=out)
    assert run["state"]["state_details"]["pause_key"] == "review-1"
    assert _exits(served.pids(out)[0]), "the flow run's process ends while it waits"
    assert served.state_name(run_id) == "Suspended"
    schema = served.api("GET", f"/flow_runs/{run_id}/input/suspended-review-1-schema").json()
    assert schema["properties"]["reject"]["items"]["enum"][:2] == ["dress__ava", "coat__bo"]

    rejected = ["coat__bo", "dress__ava", "shirt__ava"]
    await _resume(stack.api, run_id, {"reject": rejected, "reason": "hands wrong"})
    served.wait(run_id, "Suspended", runs=2, out=out)  # the first round answered; the second waits
    assert all(_exits(pid) for pid in served.pids(out))
    assert served.state_name(run_id) == "Suspended", "still waiting, no process"
    with pytest.raises(RuntimeError, match="Reason"):  # the server checks the input against the form
        await _resume(stack.api, run_id, {"reject": ["not-a-label"]})
    await _resume(stack.api, run_id, {"approve_all": True})
    served.wait(run_id, "Completed", runs=3, out=out)

    decisions = json.loads((out / "decisions.json").read_text())
    assert decisions == [
        {"round": 1, "approved": False, "rejected": rejected, "reason": "hands wrong"},
        {"round": 2, "approved": True, "rejected": [], "reason": ""}]
    for _ in range(60):  # one "waiting" per round, none again when a resumed run replays the first round
        events = _events(served, run_id)
        if len(events) >= 3:
            break
        await asyncio.sleep(0.5)
    assert [(e["event"], e["payload"]["round"]) for e in events] == [
        ("tryon.review.waiting", 1), ("tryon.review.waiting", 2), ("tryon.review.approved", 2)]
    assert events[0]["resource"]["prefect.resource.id"] == "tryon.collection.autumn.tryon-v1.6"
    assert events[0]["payload"]["flagged"] == FLAGGED


@pytest.mark.slow
async def test_the_review_form_renders_as_a_multi_select_in_a_real_browser(served, tmp_path):
    from tests.browser import Browser, chromium_path

    if chromium_path() is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("chromium is not installed (scripts/_system.sh)")
    out = tmp_path / "probe"
    run_id = served.start_run(out)
    served.wait(run_id, "Suspended", runs=1, out=out)
    artifacts = Path(os.environ.get("TRYON_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    page_url = served.stack.api.removesuffix("/api") + f"/runs/flow-run/{run_id}"
    async with Browser(width=1400, height=1400, timeout=60) as page:
        await page.open(page_url)
        form = None
        for _ in range(300):  # the page's scripts fetch the run, then the Resume button opens the form
            form = await page.evaluate("""(() => {
                const resume = Array.from(document.querySelectorAll('button'))
                    .find(b => b.textContent.trim() === 'Resume');
                const dialog = document.querySelector('[role=dialog]');
                if (!dialog) { if (resume) resume.click(); return null; }
                const select = dialog.querySelector('select[multiple]');
                if (!select) return null;
                return {text: dialog.innerText, options: Array.from(select.options).map(o => o.value),
                        fields: dialog.querySelectorAll('input, textarea, select[multiple]').length};
            })()""") or form
            if form and "Approve All" in form["text"] and "Flagged" in form["text"]:  # description fetched too
                break
            await asyncio.sleep(0.2)
        await page.screenshot(artifacts / "review-form.png", beyond_viewport=False)
    await _resume(served.stack.api, run_id, {"approve_all": True})  # leave nothing waiting
    assert form, "the review form never rendered"
    assert form["options"] == review_labels(LABELS, FLAGGED), "a multi-select, flagged labels first"
    assert "Flagged by the automatic checks" in form["text"] and "coat__bo: blank" in form["text"]
    assert "Reason" in form["text"] and "Approve All" in form["text"] and form["fields"] >= 3


# -- the collection flow under review, over the emulator -------------------------------------------

def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _suspended_at(served: Served, run_id: str, key: str, timeout: float = 240) -> bool:
    """Wait until the run is suspended on ``key`` and no process runs it; whether one was seen
    running it (a child of serve) before."""
    deadline, seen = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        seen = seen or bool(_children(served.serve_pid))
        run = served.api("GET", f"/flow_runs/{run_id}").json()
        if run["state_name"] in ("Failed", "Crashed", "Completed"):
            raise AssertionError(f"{run['state_name']}: {run['state']['message']}\n{served.stack.logs()}")
        if run["state_name"] == "Suspended" and run["state"]["state_details"].get("pause_key") == key \
                and not _children(served.serve_pid):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{run_id} never suspended on {key} with no process: {run['state_name']}\n"
                         f"{served.stack.logs()}")


@pytest.mark.slow
async def test_a_collection_under_review_makes_new_takes_of_rejected_items_then_approves_and_publishes(
        served, emulator, tmp_path):
    from tests.test_flow_faults import url_collection

    emulator.reset()
    emulator.configure(faults={"output_faults": {"blank-shirt": "blank", "small-shirt": "wrong_size"}})
    try:
        spec = url_collection(tmp_path, emulator, garments=["shirt", "blank-shirt", "small-shirt"], models=2,
                              name="autumn")
        archive, shop = tmp_path / "archive", tmp_path / "shop"
        run_id = served.api("POST", f"/deployments/{served.collection}/create_flow_run", json={"parameters": {
            "spec": str(spec), "archive": str(archive), "review": True, "publish": str(shop)}}).json()["id"]
        assert _suspended_at(served, run_id, "review-1"), "a process of serve ran the flow, then ended"
        assert len(emulator.predictions()) == 6
        schema = served.api("GET", f"/flow_runs/{run_id}/input/suspended-review-1-schema").json()
        flagged = ["blank-shirt__m0", "blank-shirt__m1", "small-shirt__m0", "small-shirt__m1"]
        assert schema["properties"]["reject"]["items"]["enum"][:4] == flagged, "flagged first"

        rejected = ["blank-shirt__m0", "small-shirt__m1", "shirt__m0"]
        await _resume(served.stack.api, run_id, {"reject": rejected, "reason": "hand wrong"})
        assert _suspended_at(served, run_id, "review-2"), "resumed in a new process, ended again"
        predictions = emulator.predictions()
        new = predictions[6:]
        assert len(new) == 3 and all(p["seed"] == 43 for p in new), "one new take each, seed 42 + 1"
        assert sorted(p["images"]["garment_image"].rsplit("/", 1)[1] for p in new) == \
            ["blank-shirt.png", "shirt.png", "small-shirt.png"]
        folder = archive / "autumn" / "tryon-v1.6"
        for label in rejected:
            assert (folder / label / "takes/1/output_0.png").exists(), "the earlier take stays archived"
            verdicts = json.loads((folder / label / "verdicts.json").read_text())["verdicts"]
            assert [(v["take"], v["verdict"], v["reason"]) for v in verdicts] == [(1, "rejected", "hand wrong")]

        await _resume(served.stack.api, run_id, {"approve_all": True})
        deadline = time.monotonic() + 240
        while (state := served.state_name(run_id)) != "Completed":
            assert state not in ("Failed", "Crashed") and time.monotonic() < deadline, served.stack.logs()
            time.sleep(0.3)
        assert len(emulator.predictions()) == 9, "runs started again on resume paid for nothing"
        approved = json.loads((folder / "approved.json").read_text())
        takes = {i["label"]: i["take"] for i in approved["items"]}
        assert takes == {label: 2 if label in rejected else 1 for label in takes} and len(takes) == 6
        served_sha = {p["id"]: p["output_sha256"] for p in emulator.predictions()}
        for entry in approved["items"]:
            result = json.loads((folder / entry["label"] / "result.json").read_text())
            assert entry["sha256"] == served_sha[result["prediction_id"]] == [o["sha256"] for o in result["outputs"]]
            copy = (shop / "autumn" / f"{entry['label']}_0.png").read_bytes()
            assert hashlib.sha256(copy).hexdigest() == entry["sha256"][0]
    finally:
        emulator.configure(faults={"output_faults": {}})
