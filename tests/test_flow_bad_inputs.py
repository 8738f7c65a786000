"""Bad input and a hostile provider, through the real flow (emulator over HTTP, Prefect server).

Each case ends with a clear error naming the place, or with every item in the report (archived,
or failed with its reason), and with nothing spent that did not have to be. Spec-level problems
(malformed files, ids, images, values, a huge streamed CSV) are in test_collection.py and
test_images.py; these are the ones only a run can show.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.fixtures.emulator import TEST_KEY
from tests.test_flow_faults import run_flow, url_collection
from tryon.archive import Archive, SubmissionRecord, utcnow
from tryon.spec.items import iter_items
from tryon.spec.loaders import load_spec


def report_of(archive: Path, name: str) -> dict:
    return json.loads((archive / name / "tryon-v1.6" / "report.json").read_text())


def calls(emulator) -> dict[str, dict[str, int]]:
    return emulator.stats()["requests"]


async def test_a_bad_spec_fails_the_run_before_any_call(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["a", "b"])
    spec.write_text(spec.read_text().replace("mode: performance", "mode: fastest\n  num_samples: 9"))
    state = await run_flow(spec=str(spec), archive=str(tmp_path / "archive"))
    assert state.is_failed()
    assert "inputs.mode: 'fastest'" in state.message and "inputs.num_samples: 9" in state.message
    assert calls(emulator) == {}, "not even the balance was asked"


async def test_missing_api_key_is_refused_before_any_call(prefect_server, make_emulator, env_for, tmp_path,
                                                          monkeypatch):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    monkeypatch.delenv("FASHN_API_KEY")
    monkeypatch.chdir(tmp_path)  # no .env to fall back on
    state = await run_flow(spec=str(url_collection(tmp_path, emulator, garments=["a"])), archive="archive")
    assert state.is_failed() and "FASHN_API_KEY" in state.message
    assert calls(emulator) == {}


async def test_a_wrong_key_stops_at_the_first_401(prefect_server, make_emulator, env_for, tmp_path, monkeypatch):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    monkeypatch.setenv("FASHN_API_KEY", "fa-wrong-key")
    state = await run_flow(spec=str(url_collection(tmp_path, emulator, garments=["a", "b", "c"])),
                           archive=str(tmp_path / "archive"))
    assert state.is_failed() and "UnauthorizedAccess" in state.message
    assert calls(emulator) == {"credits": {"401": 1}}, "one call, then nothing"
    assert "fa-wrong-key" not in state.message


async def test_a_key_revoked_mid_run_stops_every_further_call(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator(latencies={"balanced": 40.0})  # 2 s per prediction here
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=[f"g{i}" for i in range(4)], models=4)  # 16 items
    run = asyncio.create_task(run_flow(spec=str(spec), archive=str(tmp_path / "archive")))
    while calls(emulator).get("run", {}).get("200", 0) < 3:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(emulator.configure, keys={})  # revoked
    state = await run
    assert state.is_failed()
    after = calls(emulator)
    unauthorized = sum(codes.get("401", 0) for codes in after.values())
    assert 1 <= unauthorized <= 6, f"only the calls already on the wire when the first 401 came back ({after})"
    await asyncio.sleep(0.5)
    assert calls(emulator) == after, "nothing more is sent afterwards"
    report = report_of(tmp_path / "archive", "faults")
    assert len(report["items"]) == 16, "no item dropped"
    assert {e["error_name"] for e in report["items"] if e["state"] == "failed"} == {"UnauthorizedAccess"}


async def test_out_of_credits_mid_run_finishes_what_is_in_flight(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator(latencies={"balanced": 40.0})
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=[f"g{i}" for i in range(4)], models=4)
    run = asyncio.create_task(run_flow(spec=str(spec), archive=str(tmp_path / "archive")))
    while calls(emulator).get("run", {}).get("200", 0) < 6:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(emulator.configure, keys={TEST_KEY: 0})  # the balance is gone
    state = await run
    assert state.is_failed()
    runs = calls(emulator)["run"]
    report = report_of(tmp_path / "archive", "faults")
    archived = [e for e in report["items"] if e["state"] == "archived"]
    failed = [e for e in report["items"] if e["state"] == "failed"]
    assert len(archived) == runs["200"] >= 6, "every prediction already started was finished and archived"
    assert len(archived) + len(failed) == 16
    assert {e["error_name"] for e in failed} == {"OutOfCredits"}
    assert 1 <= runs.get("429:OutOfCredits", 0) <= 6, f"one per request already on the wire, no storm ({runs})"


async def test_a_balance_too_small_refuses_to_start(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator(keys={TEST_KEY: 3})
    env_for(emulator, 20.0)
    state = await run_flow(spec=str(url_collection(tmp_path, emulator, garments=["a", "b"], models=2)),
                           archive=str(tmp_path / "archive"))
    assert state.is_failed() and "needs up to 4 credits but the balance is 3" in state.message
    assert "run" not in calls(emulator)


async def test_an_archive_that_cannot_be_written_is_found_before_any_credit(prefect_server, make_emulator, env_for,
                                                                            tmp_path, s3):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["a"])
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive's folder should be")
    for archive in (str(blocker / "archive"), "s3://no-such-bucket-here/archive"):
        state = await run_flow(spec=str(spec), archive=archive)
        assert state.is_failed() and "is not writable" in state.message and archive in state.message
    assert calls(emulator) == {}


async def test_a_prediction_the_provider_forgot_is_submitted_once_more(prefect_server, make_emulator, env_for,
                                                                       tmp_path):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["a", "b"])
    archive = Archive(str(tmp_path / "archive"))
    from tryon.spec.key import item_key

    collection = await load_spec(spec)
    forgotten = next(iter_items(collection))
    await archive.record_pending(forgotten, await item_key(forgotten), SubmissionRecord(
        prediction_id="pred-unknown-to-the-provider", submitted_at=utcnow(), attempt=1))
    state = await run_flow(spec=str(spec), archive=str(tmp_path / "archive"))
    assert state.is_completed(), state.message
    report = report_of(tmp_path / "archive", "faults")
    entry = next(e for e in report["items"] if e["garment_id"] == forgotten.garment_id)
    assert entry["state"] == "archived" and entry["resubmitted_after_404"]
    assert "unknown to the provider (404); submitted again" in entry["note"]
    assert calls(emulator)["status"].get("404") == 1 and calls(emulator)["run"] == {"200": 2}
    result = json.loads((tmp_path / "archive/faults/tryon-v1.6" / forgotten.label / "result.json").read_text())
    assert result["resubmitted_after_404"] is True


async def test_an_expired_base64_output_fails_the_item_with_its_reason(prefect_server, make_emulator, env_for,
                                                                       tmp_path):
    emulator = make_emulator(base64_retention=0.001)  # gone as soon as the prediction completes
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["a"])
    spec.write_text(spec.read_text().replace("mode: performance", "mode: performance\n  return_base64: true"))
    state = await run_flow(spec=str(spec), archive=str(tmp_path / "archive"))
    assert state.is_failed()
    entry = report_of(tmp_path / "archive", "faults")["items"][0]
    assert entry["state"] == "failed" and entry["error_name"] == "OutputExpired", entry
    assert calls(emulator)["run"] == {"200": 1}, "not resubmitted: a new prediction would be paid again"
    assert not any(p.name.startswith("output_") for p in (tmp_path / "archive").rglob("*"))
    assert os.environ["FASHN_API_KEY"] not in json.dumps(entry)


async def test_without_resubmitting_ambiguous_answers_the_item_fails_flagged_after_one_post(
        prefect_server, make_emulator, env_for, tmp_path, monkeypatch):
    emulator = make_emulator(faults={"server_error_after_rate": 1.0})  # every POST creates, then answers 500
    env_for(emulator, 20.0)
    monkeypatch.setenv("FASHN_RESUBMIT_AMBIGUOUS", "false")
    state = await run_flow(spec=str(url_collection(tmp_path, emulator, garments=["a"])),
                           archive=str(tmp_path / "archive"))
    assert state.is_failed()
    [entry] = report_of(tmp_path / "archive", "faults")["items"]
    assert entry["state"] == "failed" and entry["error_name"] == "AmbiguousSubmission"
    assert entry["possible_duplicate_charge"] is True
    # One POST: answered 500, which the emulator also tags as created first.
    assert calls(emulator)["run"] == {"500": 1, "500_after_create": 1}, "sent once, never again"
    assert emulator.stats()["predictions"] == 1
