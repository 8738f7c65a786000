"""The item's life without Prefect: plan, submit, wait, archive over the emulator on loopback.

These run in seconds, so a change to :mod:`tryon.item` or :mod:`tryon.batch` can be checked
without a Prefect server; the flows' tests cover the same paths through Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.collections import write_collection
from tests.test_flow_faults import refuse_pending_and_first_output, url_collection
from tests.life import runtime_over
from tryon import batch, item
from tryon.archive import Archive, ArchiveError, Flags, SubmissionRecord, utcnow
from tryon.report import ItemReport, RunReport

TIME_SCALE = 20.0


async def run_collection(emulator, spec: Path, archive: Archive, *, force: bool = False, reuse: bool = True,
                         run_one=item.run, **options) -> tuple[batch.Plan, RunReport]:
    collection = await batch.load_and_validate(str(spec))
    planned = await batch.plan(collection, archive, force=force, reuse=reuse)
    report = RunReport.start(collection.name, collection.model_name)
    async with runtime_over(emulator, archive, **options) as runtime:
        async for entry in batch.run_items(runtime, planned, run_one=run_one):
            report.add(entry)
    assert sorted(e.label for e in report.items) == sorted(s.label for s in planned.states), "every item once"
    return planned, report


async def test_items_are_planned_once_archived_and_skipped_on_a_rerun(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name="life", garments=2, models=2)
    archive = Archive(str(tmp_path / "archive"))

    planned, report = await run_collection(emulator, spec, archive)
    assert planned.as_dict()["submit"] == 4 and planned.credits_needed == 4
    assert [s.stage for s in planned.states] == ["archived"] * 4, "the plan's states are the ones the run took on"
    assert report.totals == {"archived": 4, "reused": 0, "failed": 0, "skipped": 0}
    assert emulator.stats()["requests"]["run"] == {"200": 4}
    for entry in report.items:
        assert entry.outputs and (tmp_path / "archive" / entry.outputs[0].path).stat().st_size == entry.outputs[0].size

    again, rerun = await run_collection(emulator, spec, archive)
    assert again.as_dict()["skip"] == 4 and again.credits_needed == 0
    assert rerun.totals == {"archived": 0, "reused": 0, "failed": 0, "skipped": 4} and rerun.credits_used == 0
    assert emulator.stats()["requests"]["run"] == {"200": 4}, "nothing submitted again"


async def test_a_repeat_after_an_error_goes_on_with_the_prediction_it_started(make_emulator, tmp_path, monkeypatch):
    """The state a run left is where a repeat (a Prefect retry) goes on from: no second payment,
    even with force and with the prediction's id never recorded in the archive."""
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name="repeat", garments=1, models=1)
    archive = Archive(str(tmp_path / "archive"))
    async def run_twice(runtime, state):
        try:
            return await item.run(runtime, state)
        except ArchiveError:
            assert state.stage == "submitted", "left waiting on the prediction it started"
            return await item.run(runtime, state)

    refused = refuse_pending_and_first_output(monkeypatch)
    _, report = await run_collection(emulator, spec, archive, force=True, run_one=run_twice)
    assert refused == ["output"]
    assert report.totals["archived"] == 1
    assert emulator.stats()["requests"]["run"] == {"200": 1}


async def test_a_failed_prediction_ends_failed_with_its_reason_and_stays_failed(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE, faults={"fail_inputs": {"posey": "PoseError"}})
    spec = url_collection(tmp_path, emulator, garments=["g0", "posey"], name="fails")
    archive = Archive(str(tmp_path / "archive"))

    _, report = await run_collection(emulator, spec, archive)
    [failed] = report.failures()
    assert (failed.garment_id, failed.error_name) == ("posey", "PoseError")
    assert report.totals == {"archived": 1, "reused": 0, "failed": 1, "skipped": 0}

    again, rerun = await run_collection(emulator, spec, archive)
    assert again.as_dict() == {"submit": 0, "resume": 0, "reuse": 0, "skip": 1, "failed": 1, "credits_needed": 0, "balance": None}
    assert rerun.failures()[0].error_name == "PoseError" and rerun.credits_used == 0


async def test_an_error_of_our_own_fails_the_item_with_its_reason_and_the_others_go_on(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name="own", garments=2, models=1)
    archive = Archive(str(tmp_path / "archive"))

    async def broken_for_g0(runtime, state):
        if state.item.garment_id == "g0":
            raise ValueError("injected")
        return await item.run(runtime, state)

    _, report = await run_collection(emulator, spec, archive, run_one=broken_for_g0)
    [failed] = report.failures()
    assert (failed.garment_id, failed.error_name, failed.error_message) == ("g0", "ValueError", "injected")
    assert report.totals["archived"] == 1


async def started_by_a_killed_run(emulator, tmp_path: Path, name: str) -> tuple[Path, Archive, item.ItemState, str]:
    """A planned one-item collection and a prediction started for its item, as by a run then killed."""
    spec = write_collection(tmp_path, name=name, garments=1, models=1)
    archive = Archive(str(tmp_path / "archive"))
    [state] = (await batch.plan(await batch.load_and_validate(str(spec)), archive)).states
    async with runtime_over(emulator, archive) as runtime:
        request = await runtime.client.prepare_run(state.item.model_name, state.item.inputs,
                                                   base_dir=state.item.base_dir)
        return spec, archive, state, await runtime.client.start(request)


async def test_a_recovery_resumed_by_a_later_run_is_still_reported_recovered(make_emulator, tmp_path):
    """An ambiguous answer's prediction adopted through its webhook is marked with the adopted id,
    so the run that resumes the item (after a kill) reports it recovered, not paid twice."""
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec, archive, state, prediction_id = await started_by_a_killed_run(emulator, tmp_path, "resumed")
    await archive.record_ambiguous(state.item, state.key, attempt=1)
    submission = SubmissionRecord(prediction_id=prediction_id, submitted_at=utcnow(), attempt=1)
    await archive.record_pending(state.item, state.key, submission,
                                 flags=Flags(recovered_ambiguous=True))  # what the killed run had written

    planned, report = await run_collection(emulator, spec, archive)
    assert planned.as_dict()["resume"] == 1
    [entry] = report.items
    assert entry.flags == Flags(recovered_ambiguous=True)
    assert report.recovered_ambiguous == [state.label]
    assert (await archive.read_result(state.item, state.key)).flags.recovered_ambiguous
    assert emulator.stats()["requests"]["run"] == {"200": 1}, "not submitted again"


async def test_records_with_flat_flags_resume_and_stay_flat_in_the_files(make_emulator, tmp_path):
    """A pending record as older versions wrote it (flags as flat fields, ids beside the
    submissions) resumes with its flags; result.json and the report keep them as flat fields."""
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec, archive, state, prediction_id = await started_by_a_killed_run(emulator, tmp_path, "older")
    folder = tmp_path / "archive" / "older" / state.item.model_name / state.label
    folder.mkdir(parents=True)
    now = utcnow().isoformat()
    (folder / "prediction.json").write_text(json.dumps({
        "key": state.key, "collection": "older", "model_name": state.item.model_name, "label": state.label,
        "prediction_ids": [prediction_id], "submitted_at": now, "attempts": 2, "updated_at": now,
        "submissions": [{"prediction_id": prediction_id, "submitted_at": now, "attempt": 2}],
        "possible_duplicate_charge": True, "recovered_ambiguous": False}))

    planned, report = await run_collection(emulator, spec, archive)
    assert planned.as_dict()["resume"] == 1
    [entry] = report.items
    assert entry.flags == Flags(possible_duplicate_charge=True) and report.possible_duplicate_charges == [state.label]
    stored = json.loads((folder / "result.json").read_text())
    assert (stored["possible_duplicate_charge"], stored["attempts"], stored["prediction_ids"]) == (True, 2, [prediction_id])
    assert "flags" not in stored and not (folder / "prediction.json").exists()
    written = json.loads(report.to_json())
    assert written["items"][0]["possible_duplicate_charge"] is True
    assert written["possible_duplicate_charges"] == [state.label] and written["totals"]["archived"] == 1
    assert RunReport.from_json(report.to_json()).items[0].flags == entry.flags


def test_report_totals_follow_an_entry_replaced_by_a_later_one():
    """Totals, credits and flag lists are computed from the entries, so a replaced entry leaves
    nothing of itself behind."""
    report = RunReport.start("c", "tryon-v1.6")
    first = ItemReport(key="k", state="failed", collection="c", model_name="tryon-v1.6", garment_id="g",
                       model_id="m", label="g__m", flags=Flags(possible_duplicate_charge=True))
    report.add(first)
    assert report.totals["failed"] == 1 and report.possible_duplicate_charges == ["g__m"]
    report.add(first.model_copy(update={"state": "archived", "credits_used": 1, "flags": Flags()}))
    assert report.totals == {"archived": 1, "reused": 0, "failed": 0, "skipped": 0}
    assert (report.credits_used, report.possible_duplicate_charges, report.total) == (1, [], 1)
