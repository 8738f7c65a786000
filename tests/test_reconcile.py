"""The reconciler over real parts: the emulator as an HTTP server and a local archive; records left
pending as a killed run leaves them (prediction.json naming an owner whose lease is gone)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from tests.collections import write_collection
from tests.fixtures.emulator import TEST_KEY, flow_env
from tests.life import runtime_over
from tryon.archive import Archive, SubmissionRecord, utcnow
from tryon.batch import Plan, load_and_validate, plan, run_items
from tryon.client import FashnClient
from tryon.lease import LEASES, RunLease, is_live
from tryon.reconcile import pending_folders, reconcile
from tryon.report import RunReport
from tryon.settings import FashnSettings
from tryon.spec.items import iter_items
from tryon.spec.key import item_key
from tryon.traffic import TrafficController

TIME_SCALE = 20.0


def settings_for(emulator, monkeypatch, time_scale: float = TIME_SCALE) -> FashnSettings:
    for name, value in flow_env(emulator, time_scale).items():
        monkeypatch.setenv(name, value)
    return FashnSettings()


async def leave_pending(emulator, archive: Archive, tmp_path: Path, *, name: str, count: int,
                        owner: str = "run-killed") -> list[str]:
    """Submit ``count`` items of a new collection and record each prediction as a killed run does
    (its lease never written, or long expired); their folders."""
    spec = write_collection(tmp_path / name, name=name, garments=count, models=1)
    collection = await load_and_validate(str(spec))
    folders = []
    async with FashnClient(TEST_KEY, emulator.url) as client:
        for item in iter_items(collection):
            request = await client.prepare_run(item.model_name, item.inputs, base_dir=item.base_dir)
            prediction_id = await client.start(request)
            submission = SubmissionRecord(prediction_id=prediction_id, submitted_at=utcnow(), attempt=1)
            await archive.record_pending(item, await item_key(item), submission, owner=owner)
            folders.append(f"{name}/{item.model_name}/{item.label}")
    return folders


async def run_reconcile(archive: Archive, settings: FashnSettings):
    traffic = TrafficController.from_settings(settings)
    async with FashnClient.from_settings(settings, gate=traffic) as client:
        return await reconcile(archive, client, traffic, lease_term=5.0, prediction_timeout=60.0)


def check_archived(emulator, archive: Archive, folder: str) -> dict:
    result = json.loads(Path(archive.root, folder, "result.json").read_bytes())
    assert result["state"] == "archived", result
    served = emulator.prediction(result["prediction_id"])["output_sha256"]
    assert [hashlib.sha256(Path(archive.root, folder, o["name"]).read_bytes()).hexdigest()
            for o in result["outputs"]] == served
    assert not Path(archive.root, folder, "prediction.json").exists()
    return result


async def test_two_reconcilers_at_once_archive_each_item_once_for_0_credits(make_emulator, monkeypatch, tmp_path):
    emulator = make_emulator(max_in_flight=20)
    archive = Archive(str(tmp_path / "archive"))
    folders = await leave_pending(emulator, archive, tmp_path, name="left", count=8)
    submitted = emulator.stats()["requests"]["run"]
    settings = settings_for(emulator, monkeypatch)

    first, second = await asyncio.gather(run_reconcile(archive, settings), run_reconcile(archive, settings))

    assert emulator.stats()["requests"]["run"] == submitted == {"200": 8}, "the reconcilers never submit"
    assert sorted(first.recovered + second.recovered) == sorted(folders), "each item recovered by one of them"
    assert not set(first.recovered) & set(second.recovered)
    for folder in folders:
        check_archived(emulator, archive, folder)
    assert await pending_folders(archive) == []
    report = RunReport.model_validate(await archive.read_report("left", "tryon-v1.6"))
    assert report.totals["archived"] == 8, "the collection's report names every item it finished"
    assert all("reconciler" in entry.note for entry in report.items)


async def test_unknown_and_expired_predictions_are_reported_lost_with_their_reason(make_emulator, monkeypatch,
                                                                                   tmp_path):
    emulator = make_emulator(faults={"expired_output_rate": 1.0})
    archive = Archive(str(tmp_path / "archive"))
    unknown = await leave_pending(emulator, archive, tmp_path, name="unknown", count=1)
    emulator.reset()  # the provider forgets every prediction: 404 on its status
    emulator.configure(faults={"expired_output_rate": 1.0})
    expired = await leave_pending(emulator, archive, tmp_path, name="expired", count=2)
    settings = settings_for(emulator, monkeypatch)

    done = await run_reconcile(archive, settings)

    assert done.recovered == []
    assert sorted(done.lost) == sorted(expired + unknown)
    assert all("OutputExpired" in done.lost[folder] for folder in expired), done.lost
    assert all("NotFound" in done.lost[folder] and "no longer knows" in done.lost[folder] for folder in unknown)
    for folder in expired + unknown:
        result = json.loads(Path(archive.root, folder, "result.json").read_bytes())
        assert result["state"] == "failed" and result["error_message"], "recorded with its reason"
    assert emulator.stats()["requests"]["run"] == {"200": 2}, "nothing submitted to replace them"
    assert "lost" in done.text()


async def test_a_reconciler_leaves_alone_every_item_a_live_run_works_on(make_emulator, monkeypatch, tmp_path):
    # A run on a slow key (every prediction takes seconds) while a reconciler passes over the archive.
    emulator = make_emulator(time_scale=2.0)
    settings = settings_for(emulator, monkeypatch, time_scale=2.0)
    archive = Archive(str(tmp_path / "archive"))
    spec = write_collection(tmp_path / "live", name="live", garments=6, models=1)
    collection = await load_and_validate(str(spec))
    planned: Plan = await plan(collection, archive)
    report = RunReport.start("live", collection.model_name, "run-live")

    async def run() -> None:
        async for entry in run_items(runtime, planned):
            report.add(entry)

    async with runtime_over(emulator, archive) as runtime, RunLease(archive, "run-live", 5.0):
        runtime.owner = "run-live"
        running = asyncio.create_task(run())
        while len(await pending_folders(archive)) < 3:  # the run has predictions in flight
            await asyncio.sleep(0.05)
        done = await run_reconcile(archive, settings)
        await running
    assert not await is_live(archive, "run-live")
    assert not list(Path(archive.root, "_tryon", LEASES).glob("*.json")), "a released lease is deleted"

    assert done.recovered == [] and done.lost == {} and len(done.live) >= 3, done
    assert report.totals["archived"] == 6
    for entry in report.items:  # archived by the run itself: the reconciler wrote nothing
        assert "reconciler" not in entry.note
        check_archived(emulator, archive, f"live/{collection.model_name}/{entry.label}")
    assert emulator.stats()["requests"]["run"] == {"200": 6}
