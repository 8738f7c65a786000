"""The collection flow over real parts: the emulator, moto's S3 server, a Prefect server."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from prefect.states import State

from tests.collections import write_collection
from tests.fixtures.emulator import TEST_KEY, TIME_SCALE


@pytest.fixture
def fashn_env(monkeypatch, emulator):
    monkeypatch.setenv("FASHN_API_KEY", TEST_KEY)
    monkeypatch.setenv("FASHN_BASE_URL", emulator.url)
    for name, (count, seconds) in {"RUN": (50, 60), "STATUS": (50, 10), "CREDITS": (30, 10)}.items():
        monkeypatch.setenv(f"FASHN_{name}_LIMIT", f"{count}/{seconds / TIME_SCALE:g}")
    emulator.reset()
    return emulator


async def run_flow(**params) -> State:
    from flows.collection import tryon_collection

    return await tryon_collection(**params, return_state=True)


async def test_collection_archived_to_s3_with_the_emulators_sha256(prefect_server, fashn_env, s3, tmp_path):
    spec = write_collection(tmp_path, garments=2, models=2, inputs={"mode": "performance", "num_samples": 2})
    state = await run_flow(spec=str(spec), archive=s3.url("archive"))
    assert state.is_completed(), state.message
    fs = s3.fs()
    report = json.loads(fs.cat(s3.url("archive", "test-coll", "tryon-v1.6", "report.json")))
    assert report["totals"] == {"archived": 4, "reused": 0, "failed": 0, "skipped": 0}
    for entry in report["items"]:
        assert len(entry["outputs"]) == 2
        served = fashn_env.prediction(entry["prediction_id"])["output_sha256"]
        for output in entry["outputs"]:
            data = fs.cat(output["url"])
            assert hashlib.sha256(data).hexdigest() == output["sha256"] == served[output["index"]]
    stats = fashn_env.stats()
    assert stats["requests"]["run"] == {"200": 4}
    assert stats["credits_charged"] == 8

    # A second run of the same spec pays for nothing.
    fashn_env.reset()
    state = await run_flow(spec=str(spec), archive=s3.url("archive"))
    assert state.is_completed()
    assert (await state.aresult())["skipped"] == 4
    assert "run" not in fashn_env.stats()["requests"]


async def test_flow_takes_its_key_and_archive_from_blocks(prefect_server, emulator, s3, tmp_path, monkeypatch):
    from pydantic import SecretStr

    from blocks import FashnCredentials, TryonArchive

    for name in ("FASHN_API_KEY", "FASHN_BASE_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    emulator.reset()
    await FashnCredentials(api_key=SecretStr(TEST_KEY), base_url=emulator.url, run_limit=f"50/{60 / TIME_SCALE:g}",
                           status_limit=f"50/{10 / TIME_SCALE:g}").save("test-key", overwrite=True)
    await TryonArchive(url=s3.url("from-block"), storage_options=s3.storage_options).save("test-archive",
                                                                                          overwrite=True)
    spec = write_collection(tmp_path, name="blocks", garments=1, models=1)
    state = await run_flow(spec=str(spec), credentials_block="test-key", archive_block="test-archive")
    assert state.is_completed(), state.message
    assert s3.fs().exists(s3.url("from-block", "blocks", "tryon-v1.6", "g0__m0", "output_0.png"))
    assert emulator.stats()["requests"]["run"] == {"200": 1}
    loaded = await FashnCredentials.aload("test-key")
    assert isinstance(loaded.api_key, SecretStr) and TEST_KEY not in repr(loaded)


async def test_run_publishes_progress_table_and_summary_artifacts(prefect_server, fashn_env, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    spec = write_collection(tmp_path, name="artifacts", garments=2, models=1)
    state = await run_flow(spec=str(spec), archive=str(tmp_path / "archive"))
    assert state.is_completed(), state.message
    async with get_client() as client:
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_type = {a.type: a for a in artifacts}
    assert set(by_type) >= {"progress", "table", "markdown"}
    assert by_type["progress"].data == 100.0
    table = json.loads(by_type["table"].data) if isinstance(by_type["table"].data, str) else by_type["table"].data
    assert sorted((row["garment"], row["state"]) for row in table) == [("g0", "archived"), ("g1", "archived")]
    assert "2 archived" in by_type["markdown"].data and "report.json" in by_type["markdown"].data
    assert "artifacts/tryon-v1.6/index.html" in by_type["markdown"].data


async def test_inline_spec_with_run_overrides_and_a_dry_run_that_spends_nothing(prefect_server, fashn_env, tmp_path):
    from flows.params import InlineCollection

    write_collection(tmp_path, garments=1, models=2)  # images only
    inline = InlineCollection(name="typed-in", garments=[{"id": "g0", "image": str(tmp_path / "img/g0.png")}],
                              models=[{"id": f"m{i}", "image": str(tmp_path / f"img/m{i}.png")} for i in range(2)])
    archive = str(tmp_path / "archive")
    dry = await run_flow(inline_spec=inline, archive=archive, num_samples=3, mode="performance", dry_run=True)
    assert dry.is_completed(), dry.message
    assert (await dry.aresult())["credits_needed"] == 6
    assert "run" not in fashn_env.stats()["requests"]

    state = await run_flow(inline_spec=inline, archive=archive, num_samples=3, mode="performance")
    assert state.is_completed(), state.message
    report = json.loads((tmp_path / "archive/typed-in/tryon-v1.6/report.json").read_text())
    assert [len(e["outputs"]) for e in report["items"]] == [3, 3]
    assert fashn_env.stats()["credits_charged"] == 6


async def test_flow_refuses_both_or_neither_spec(prefect_server, fashn_env):
    state = await run_flow(archive="memory://x")
    assert state.is_failed() and "exactly one of spec" in state.message


async def test_progress_updates_never_hold_up_the_item_that_finished(monkeypatch):
    # On SQLite a Prefect write can wait seconds behind others: the worker must not wait with it.
    from types import SimpleNamespace

    from flows import artifacts
    from tryon.traffic.clock import FakeClock

    release, calls = asyncio.Event(), []

    async def slow_update(artifact_id, progress, description=None):
        calls.append(progress)
        await release.wait()

    monkeypatch.setattr(artifacts, "aupdate_progress_artifact", slow_update)
    tracker = artifacts.ProgressTracker("artifact", total=4, interval=0.0)
    report = SimpleNamespace(total=1, summary_line=lambda: "1 of 4")
    await asyncio.wait_for(tracker.update(report), timeout=1)  # returns while the update is pending
    await FakeClock.settle()  # every task blocked: the update waits on the server
    report.total = 2
    await tracker.update(report)  # one in flight already: skipped, not queued
    assert calls == [25.0]
    report.total = 4
    final = asyncio.ensure_future(tracker.update(report, force=True))  # the last one is waited for
    await FakeClock.settle()
    assert not final.done() and calls == [25.0], "the final update waits for the one in flight"
    release.set()
    await asyncio.wait_for(final, timeout=1)
    assert calls == [25.0, 100.0]


# -- many collections, over moto's S3 server ----------------------------------------------------

def s3_json(fs, url: str) -> dict:
    return json.loads(fs.cat(url))


@pytest.mark.timeout(300)
async def test_a_backfill_over_five_overlapping_collections_pays_for_each_pair_once(prefect_server, fashn_env, s3,
                                                                                   tmp_path):
    from flows.backfill import backfill

    # Collection k has g0..g(k-1) × m0, m1: 30 items, 10 distinct pairs, run two at a time.
    specs = [write_collection(tmp_path / f"c{k}", name=f"c{k}", garments=k, models=2) for k in range(1, 6)]
    state = await backfill(collections=[str(s) for s in specs], archive=s3.url("archive"), return_state=True)
    assert state.is_completed(), state.message
    stats = fashn_env.stats()
    assert len(stats["created_per_hash"]) == 10 and stats["duplicate_hashes"] == 0
    assert stats["credits_charged"] == 10
    fs = s3.fs()
    totals = [s3_json(fs, s3.url("archive", f"c{k}", "tryon-v1.6", "report.json"))["totals"] for k in range(1, 6)]
    assert [t["archived"] + t["reused"] for t in totals] == [2, 4, 6, 8, 10]
    assert sum(t["archived"] for t in totals) == 10 and not any(t["failed"] for t in totals)
