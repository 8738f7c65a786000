"""The flow's promises under failure that only Prefect can show, over real parts: a Prefect task
retried after its submission polls the same prediction; the flow run ends Failed when any item
failed, and emits its events. Every path of the item's life itself (a run killed with SIGKILL
included) is in the test_life_*.py files, without Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def url_collection(folder: Path, emulator, *, garments: list[str], models: int = 1, name: str = "faults") -> Path:
    """A spec whose images are URLs on the emulator, so faults can target one garment by name."""
    spec = {"name": name, "model_name": "tryon-v1.6", "inputs": {"mode": "performance"},
            "garments": [{"id": g, "image": f"{emulator.url}/_assets/{g}.png"} for g in garments],
            "models": [{"id": f"m{i}", "image": f"{emulator.url}/_assets/model{i}.jpg"} for i in range(models)],
            "pairs": "all"}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def refuse_pending_and_first_output(monkeypatch) -> list[str]:
    """Break the archive on purpose: no pending record is ever written, and the first output
    write fails (after its submission). Returns the list the refusal is recorded in."""
    from tryon.archive import Archive, ArchiveError

    write_output = Archive.write_output
    refused: list[str] = []

    async def refuse_pending(self, *args, **kwargs):
        raise ArchiveError("injected: the pending record could not be written")

    async def refuse_first_output(self, *args, **kwargs):
        if not refused:
            refused.append("output")
            raise ArchiveError("injected: the archive refused the first output")
        return await write_output(self, *args, **kwargs)

    monkeypatch.setattr(Archive, "record_pending", refuse_pending)
    monkeypatch.setattr(Archive, "write_output", refuse_first_output)
    return refused


async def run_flow(**params):
    from flows.collection import tryon_collection

    return await tryon_collection(**params, return_state=True)


def report_of(archive: Path, name: str) -> dict:
    return json.loads((archive / name / "tryon-v1.6" / "report.json").read_text())


async def test_an_item_retried_after_its_submission_polls_the_same_prediction(prefect_server, make_emulator,
                                                                              env_for, monkeypatch, tmp_path):
    """One Prefect task per item, retried: a retry must go on with the prediction it started, even
    when its id never reached the archive and the run forces resubmission of archived items."""
    emulator = make_emulator()
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["good"])
    refused = refuse_pending_and_first_output(monkeypatch)
    state = await run_flow(spec=str(spec), archive=str(tmp_path / "archive"), force=True)
    assert state.is_completed(), state.message
    assert refused == ["output"], "the first attempt failed after its submission"
    entry = report_of(tmp_path / "archive", "faults")["items"][0]
    assert entry["state"] == "archived", entry
    assert emulator.stats()["requests"]["run"] == {"200": 1}, "the retry polled the prediction it had started"


async def read_events(prefix: str, resource_id: str, want: int, timeout: float = 30.0) -> list[dict]:
    """Events stored by the server (written asynchronously, so wait for them)."""
    import asyncio

    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for _ in range(int(timeout / 0.1)):
            response = await client._client.post("/events/filter", json={"filter": {
                "event": {"prefix": [prefix]}, "resource": {"id": [resource_id]}}, "limit": 50})
            events = response.json()["events"]
            if len(events) >= want:
                return events
            await asyncio.sleep(0.1)
    return events


async def test_completed_and_failed_runs_emit_events_with_counts(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator(faults={"fail_inputs": {"posey": "PoseError"}})
    env_for(emulator, 20.0)
    good = url_collection(tmp_path, emulator, garments=["good"], models=2, name="events-good")
    bad = url_collection(tmp_path, emulator, garments=["good", "posey"], name="events-bad")
    assert (await run_flow(spec=str(good), archive=str(tmp_path / "archive"))).is_completed()
    state = await run_flow(spec=str(bad), archive=str(tmp_path / "archive"))
    assert state.is_failed() and "1 failed" in state.message, state.message
    failed = [e for e in report_of(tmp_path / "archive", "events-bad")["items"] if e["state"] == "failed"]
    assert [(e["garment_id"], e["error_name"]) for e in failed] == [("posey", "PoseError")]
    done = await read_events("tryon.collection", "tryon.collection.events-good.tryon-v1.6", 1)
    failed = await read_events("tryon.collection", "tryon.collection.events-bad.tryon-v1.6", 1)
    assert [e["event"] for e in done] == ["tryon.collection.completed"]
    assert [e["event"] for e in failed] == ["tryon.collection.failed"]
    assert done[0]["payload"]["archived"] == 2 and done[0]["payload"]["failed"] == 0
    # The pair good × m0 was archived by events-good: events-bad reuses it.
    assert failed[0]["payload"]["reused"] == 1 and failed[0]["payload"]["failed"] == 1
    assert failed[0]["payload"]["gallery"].endswith("events-bad/tryon-v1.6/index.html")


async def test_wait_and_archive_tasks_retry_unless_the_error_is_final(prefect_server):
    """The retry condition is awaited by Prefect's async engine: ``state.result()`` there returns a
    coroutine instead of raising, so a condition built on it must be awaited to ever answer True."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.tasks import retry_unless
    from tryon.archive import ArchiveError
    from tryon.errors import OutputExpired

    calls: list[str] = []

    @task(retries=2, retry_delay_seconds=0, cache_policy=NO_CACHE, retry_condition_fn=retry_unless(OutputExpired))
    async def flaky(name: str, fail: type[Exception], times: int) -> str:
        calls.append(name)
        if calls.count(name) <= times:
            raise fail("injected")
        return name

    @flow
    async def both() -> tuple[str, str | None]:
        transient = await flaky("transient", ArchiveError, 2)
        try:
            final = await flaky("final", OutputExpired, 1)
        except OutputExpired:
            final = None
        return transient, final

    assert await both() == ("transient", None)
    assert calls.count("transient") == 3, "a transient error is retried"
    assert calls.count("final") == 1, "a final error is not"
