"""Every path of an item's life, without Prefect: resume, retry, 404, ambiguous answers, out of
credits, expired output. Each runs the core (``tryon.batch`` plan and run_items, ``tryon.item``)
against the emulator in this process and a local archive, in a fraction of a second, and checks
what the emulator saw (predictions created, charges) and what the archive holds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.collections import write_collection
from tests.life import local_emulator, run_spec, sha256, until
from tryon.archive import Archive, ArchiveError


def item_dir(root: Path, label: str, collection: str = "test-coll") -> Path:
    return root / collection / "tryon-v1.6" / label


def result_of(root: Path, label: str) -> dict:
    return json.loads((item_dir(root, label) / "result.json").read_text())


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def archive(root) -> Archive:
    return Archive(str(root))


async def test_outputs_are_the_emulators_bytes_and_a_rerun_pays_nothing(tmp_path, root, archive):
    spec = write_collection(tmp_path, garments=2, models=1, inputs={"mode": "performance", "num_samples": 2})
    async with local_emulator() as emulator:
        planned, report = await run_spec(emulator, spec, archive)
        assert planned.as_dict()["submit"] == 2
        assert report.totals == {"archived": 2, "reused": 0, "failed": 0, "skipped": 0}
        served = {p["id"]: p["output_sha256"] for p in await emulator.predictions()}
        for entry in report.items:
            result = result_of(root, entry.label)
            files = [sha256(item_dir(root, entry.label) / o["name"]) for o in result["outputs"]]
            assert files == [o["sha256"] for o in result["outputs"]] == served[result["prediction_id"]]
            assert not (item_dir(root, entry.label) / "prediction.json").exists(), "the pending record is tidied"
        assert (await emulator.stats())["credits_charged"] == 4

        again, rerun = await run_spec(emulator, spec, archive)
        assert again.as_dict()["skip"] == 2 and rerun.totals["skipped"] == 2
        assert (await emulator.stats())["requests"]["run"] == {"200": 2}, "nothing submitted again"


async def kill_after_submission(emulator, spec: Path, root: Path, archive: Archive) -> str:
    """Run ``spec`` (one item) and kill the run once its prediction's id is in the archive,
    before its outputs are; the id of that prediction."""
    run = asyncio.create_task(run_spec(emulator, spec, archive))
    pending = item_dir(root, "g0__m0") / "prediction.json"

    async def recorded() -> bool:
        return pending.exists()

    await until(recorded)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    [prediction] = await emulator.predictions()
    assert json.loads(pending.read_text())["prediction_ids"] == [prediction["id"]]
    assert not (item_dir(root, "g0__m0") / "result.json").exists()
    return prediction["id"]


SLOW = {"latencies": {"performance": 60.0}}  # 0.3 s: time to kill the run before it archives


async def test_a_killed_runs_prediction_is_polled_by_the_next_run_not_paid_again(tmp_path, root, archive):
    spec = write_collection(tmp_path, garments=1, models=1)
    async with local_emulator(**SLOW) as emulator:
        started = await kill_after_submission(emulator, spec, root, archive)

        planned, report = await run_spec(emulator, spec, archive)
        assert planned.as_dict()["resume"] == 1 and planned.credits_needed == 0
        [entry] = report.items
        assert (entry.state, entry.prediction_id) == ("archived", started)
        stats = await emulator.stats()
        assert stats["requests"]["run"] == {"200": 1} and stats["predictions"] == 1
        result = result_of(root, "g0__m0")
        [served] = (await emulator.predictions())[0]["output_sha256"]
        assert sha256(item_dir(root, "g0__m0") / "output_0.png") == result["outputs"][0]["sha256"] == served


async def test_a_prediction_the_provider_forgot_is_submitted_once_more_and_flagged(tmp_path, root, archive):
    spec = write_collection(tmp_path, garments=1, models=1)
    async with local_emulator(**SLOW) as emulator:
        forgotten = await kill_after_submission(emulator, spec, root, archive)
        await emulator.reset()  # the provider no longer knows the id

        planned, report = await run_spec(emulator, spec, archive)
        assert planned.as_dict()["resume"] == 1
        [entry] = report.items
        assert entry.state == "archived" and entry.flags.resubmitted_after_404
        assert f"prediction {forgotten} unknown to the provider (404); submitted again" in entry.note
        requests = (await emulator.stats())["requests"]
        assert requests["status"]["404"] == 1 and requests["run"] == {"200": 1}, "one 404, one submission more"
        result = result_of(root, "g0__m0")
        assert result["resubmitted_after_404"] is True and result["prediction_id"] != forgotten


@pytest.mark.parametrize("error, posts", [("PipelineError", 3), ("PoseError", 1)])
async def test_a_failure_is_resubmitted_up_to_max_resubmits_only_when_retrying_can_help(tmp_path, root, archive,
                                                                                       error, posts):
    spec = write_collection(tmp_path, garments=1, models=1)
    async with local_emulator(faults={"failure_rates": {error: 1.0}}) as emulator:
        _, report = await run_spec(emulator, spec, archive, max_resubmits=2)
        [entry] = report.items
        assert (entry.state, entry.error_name, entry.attempts) == ("failed", error, posts)
        assert f"injected {error}" in entry.error_message
        stats = await emulator.stats()
        assert stats["requests"]["run"] == {"200": posts} and stats["credits_charged"] == 0
        result = result_of(root, "g0__m0")
        assert (result["state"], result["error_name"], result["attempts"]) == ("failed", error, posts)
        assert not list(item_dir(root, "g0__m0").glob("output_*"))

        again, rerun = await run_spec(emulator, spec, archive, max_resubmits=2)
        assert again.as_dict()["failed"] == 1 and rerun.items[0].error_name == error
        assert (await emulator.stats())["requests"]["run"] == {"200": posts}, "a later run does not pay again"


async def test_a_failure_whose_record_cannot_be_written_keeps_its_reason_and_is_polled_again(tmp_path, root, archive,
                                                                                            monkeypatch):
    spec = write_collection(tmp_path, garments=1, models=1)
    write_result = Archive.write_result

    async def refuse_failed_results(self, item, result):
        if result.state == "failed":
            raise ArchiveError("injected: the archive refused result.json")
        return await write_result(self, item, result)

    monkeypatch.setattr(Archive, "write_result", refuse_failed_results)
    async with local_emulator(faults={"failure_rates": {"PoseError": 1.0}}) as emulator:
        _, report = await run_spec(emulator, spec, archive)
        [entry] = report.items
        assert (entry.state, entry.error_name) == ("failed", "PoseError")
        assert "result.json could not be written: injected" in entry.note
        assert not list(root.rglob("result.json"))
        polls = (await emulator.stats())["requests"]["status"]["200"]

        monkeypatch.setattr(Archive, "write_result", write_result)  # the archive is healthy again
        planned, _ = await run_spec(emulator, spec, archive)
        assert planned.as_dict()["resume"] == 1
        requests = (await emulator.stats())["requests"]
        assert requests["run"] == {"200": 1} and requests["status"]["200"] > polls, "the same prediction polled"
        assert result_of(root, "g0__m0")["error_name"] == "PoseError"


AMBIGUOUS = ["server_error_after_rate", "drop_after_rate"]  # a 500, or no answer, after the prediction was created


@pytest.mark.parametrize("fault", AMBIGUOUS)
async def test_an_ambiguous_answer_is_resubmitted_and_flagged_as_a_possible_duplicate_charge(tmp_path, archive,
                                                                                           fault):
    spec = write_collection(tmp_path, garments=1, models=1)
    async with local_emulator(faults={fault: 1.0}) as emulator:
        _, report = await run_spec(emulator, spec, archive, max_resubmits=1)
        [entry] = report.items
        assert (entry.state, entry.error_name, entry.attempts) == ("failed", "AmbiguousSubmission", 2)
        assert entry.flags.possible_duplicate_charge and report.totals["failed"] == 1
        stats = await emulator.stats()
        assert stats["predictions"] == 2 and stats["duplicate_hashes"] == 1, "both POSTs created a prediction"
        assert [p["answer"] for p in await emulator.predictions()] == [fault_answer(fault)] * 2


def fault_answer(fault: str) -> str:
    return {"server_error_after_rate": "500_after_create", "drop_after_rate": "dropped_after_create"}[fault]


@pytest.mark.parametrize("fault", AMBIGUOUS)
async def test_without_resubmitting_an_ambiguous_answer_fails_after_one_post_and_the_next_run_keeps_the_flag(
        tmp_path, root, archive, fault):
    spec = write_collection(tmp_path, garments=1, models=1)
    async with local_emulator(faults={fault: 1.0}) as emulator:
        _, report = await run_spec(emulator, spec, archive, resubmit_ambiguous=False)
        [entry] = report.items
        assert (entry.state, entry.error_name, entry.flags.possible_duplicate_charge) == ("failed", "AmbiguousSubmission",
                                                                                    True)
        assert (await emulator.stats())["predictions"] == 1, "sent once, never again"
        assert json.loads((item_dir(root, "g0__m0") / "prediction.json").read_text())["possible_duplicate_charge"]

        await emulator.configure(faults={fault: 0.0})
        planned, rerun = await run_spec(emulator, spec, archive, resubmit_ambiguous=False)
        assert planned.as_dict()["submit"] == 1
        [entry] = rerun.items
        assert entry.state == "archived" and entry.flags.possible_duplicate_charge, "the earlier answer is still reported"
        assert result_of(root, "g0__m0")["possible_duplicate_charge"] is True
        stats = await emulator.stats()
        assert stats["predictions"] == 2 and stats["duplicate_hashes"] == 1


async def test_running_out_of_credits_finishes_what_was_accepted_and_fails_the_rest(tmp_path, root, archive):
    from tests.fixtures.emulator import TEST_KEY

    spec = write_collection(tmp_path, garments=2, models=2)
    async with local_emulator(keys={TEST_KEY: 2}) as emulator:
        _, report = await run_spec(emulator, spec, archive)
        archived = [e for e in report.items if e.state == "archived"]
        failed = [e for e in report.items if e.state == "failed"]
        assert len(archived) == 2 and len(failed) == 2, "every item ends in the report"
        assert {e.error_name for e in failed} == {"OutOfCredits"}
        stats = await emulator.stats()
        assert stats["requests"]["run"]["200"] == 2 and 1 <= stats["requests"]["run"]["429:OutOfCredits"] <= 2
        assert stats["credits_charged"] == 2
        for entry in archived:
            assert result_of(root, entry.label)["outputs"][0]["sha256"] == \
                sha256(item_dir(root, entry.label) / "output_0.png")


@pytest.mark.parametrize("config, inputs", [
    ({"faults": {"expired_output_rate": 1.0}}, {}),  # the CDN no longer has it
    ({"base64_retention": 0.001}, {"return_base64": True}),  # the status answers <base64>_expired
])
async def test_an_expired_output_fails_the_item_and_is_never_paid_for_again(tmp_path, root, archive, config, inputs):
    spec = write_collection(tmp_path, garments=1, models=1, inputs={"mode": "performance", **inputs})
    async with local_emulator(**config) as emulator:
        _, report = await run_spec(emulator, spec, archive)
        [entry] = report.items
        assert (entry.state, entry.error_name) == ("failed", "OutputExpired")
        assert result_of(root, "g0__m0")["error_name"] == "OutputExpired"
        assert not list(item_dir(root, "g0__m0").glob("output_*"))

        again, _ = await run_spec(emulator, spec, archive)
        assert again.as_dict()["failed"] == 1
        assert (await emulator.stats())["requests"]["run"] == {"200": 1}, "a new prediction would be paid again"


async def test_a_key_revoked_mid_run_stops_every_further_call(tmp_path, root, archive):
    spec = write_collection(tmp_path, garments=4, models=2)  # 8 items
    async with local_emulator(**SLOW) as emulator:
        # Three at a time: each probes the latency (a fourth would wait for the published one).
        run = asyncio.create_task(run_spec(emulator, spec, archive, max_in_flight=3))

        async def one_seen_done() -> bool:  # the latency learned: the others are polled on time
            return any(p["noticed"] is not None for p in await emulator.predictions())

        await until(one_seen_done)
        await emulator.configure(keys={})  # revoked
        _, report = await run
        requests = (await emulator.stats())["requests"]
        unauthorized = sum(codes.get("401", 0) for codes in requests.values())
        assert 1 <= unauthorized <= 6, f"only the calls already on the wire when the first 401 came back ({requests})"
        assert len(report.items) == 8, "no item dropped"
        assert {e.error_name for e in report.items if e.state == "failed"} == {"UnauthorizedAccess"}
