"""Lives begun ahead of the run that takes them (``tryon run`` submits its first items while
Prefect starts): each runs once, the run's call for it awaits it, and none is lost when no run
takes it. No Prefect: the emulator in process (tests/life.py)."""

from __future__ import annotations

import asyncio

from tests.collections import write_collection
from tests.life import local_emulator, runtime_over, until
from tryon import batch
from tryon import item as life
from tryon.archive import Archive
from tryon.drain import Drain
from tryon.report import RunReport


async def _planned(tmp_path, archive: Archive, garments: int = 4, models: int = 4) -> batch.Plan:
    spec = write_collection(tmp_path / "spec", name="begun", garments=garments, models=models)
    return await batch.plan(await batch.load_and_validate(str(spec)), archive)


async def test_begun_lives_are_submitted_before_the_run_and_each_is_paid_once(tmp_path):
    archive = Archive(str(tmp_path / "archive"))
    planned = await _planned(tmp_path, archive)  # 16 items, more than the 14 workers begin
    async with local_emulator() as emulator, runtime_over(emulator, archive) as runtime:
        batch.begin(runtime, planned)
        assert len(runtime.begun) == runtime.workers == 14
        await until(lambda: _created(emulator, 6))  # submitted with no run taking them yet
        report = RunReport.start("begun", "tryon-v1.6")
        async for entry in batch.run_items(runtime, planned):
            report.add(entry)
        assert runtime.begun == {}, "every begun life was taken by the run"
        predictions = await emulator.predictions()
    assert report.totals["archived"] == 16 and len(report.items) == 16
    assert len(predictions) == 16, "one prediction per item: a begun life is awaited, never run again"


async def test_a_drain_before_the_run_reports_begun_items_once_each(tmp_path):
    """Begun lives that were refused by the drain end cancelled, the others archived; the run
    reports every item once, never one as cancelled that a begun life submitted."""
    archive = Archive(str(tmp_path / "archive"))
    planned = await _planned(tmp_path, archive)
    async with local_emulator() as emulator, runtime_over(emulator, archive) as runtime:
        drain = Drain(runtime.traffic)
        batch.begin(runtime, planned)
        await until(lambda: _created(emulator, 1))
        drain.request("interrupted (Ctrl-C)")
        entries = [entry async for entry in batch.run_items(runtime, planned, drain=drain)]
        created = len(await emulator.predictions())
    states = {entry.label: entry.state for entry in entries}
    assert len(entries) == 16 and len(states) == 16
    assert list(states.values()).count("archived") == created >= 1
    assert set(states.values()) == {"archived", "cancelled"}
    assert all((tmp_path / "archive" / "begun" / "tryon-v1.6" / label / "result.json").exists()
               for label, state in states.items() if state == "archived")


async def test_lives_that_ended_before_the_run_are_still_taken_by_its_call(tmp_path):
    """Every begun item goes through the run's call (a Prefect task run for the flow), even one
    whose life ended before the run started."""
    archive = Archive(str(tmp_path / "archive"))
    planned = await _planned(tmp_path, archive, garments=2, models=2)
    calls = []

    async def run_one(runtime, state):
        calls.append(state.item.label)
        return await life.run(runtime, state)

    async with local_emulator() as emulator, runtime_over(emulator, archive) as runtime:
        batch.begin(runtime, planned)
        await asyncio.gather(*runtime.begun.values())
        entries = [entry async for entry in batch.run_items(runtime, planned, run_one=run_one)]
        assert runtime.begun == {} and len(await emulator.predictions()) == 4
    assert sorted(calls) == sorted(entry.label for entry in entries) and len(calls) == 4
    assert {entry.state for entry in entries} == {"archived"}


async def test_lives_no_run_takes_still_archive_what_they_paid_for(tmp_path):
    archive = Archive(str(tmp_path / "archive"))
    planned = await _planned(tmp_path, archive, garments=2, models=2)
    async with local_emulator() as emulator, runtime_over(emulator, archive) as runtime:
        batch.begin(runtime, planned)
        await batch.end_begun(runtime)  # the flow run never started
        created = len(await emulator.predictions())
    assert created == 4
    again = await batch.plan(await batch.load_and_validate(str(tmp_path / "spec" / "begun.yaml")), archive)
    assert [state.stage for state in again.states] == ["skipped"] * 4, "archived: a later run pays nothing"


async def test_stopping_begun_lives_keeps_their_pending_records(tmp_path):
    archive = Archive(str(tmp_path / "archive"))
    planned = await _planned(tmp_path, archive, garments=2, models=2)
    async with local_emulator(time_scale=5.0) as emulator, runtime_over(emulator, archive) as runtime:  # 1 s each
        batch.begin(runtime, planned)
        await until(lambda: _pending(tmp_path, 4))
        await batch.end_begun(runtime, cancel=True)  # a second Ctrl-C: stop at once
    again = await batch.plan(await batch.load_and_validate(str(tmp_path / "spec" / "begun.yaml")), archive)
    assert [state.stage for state in again.states] == ["submitted"] * 4, "a later run polls them, paying nothing"


async def _created(emulator, n: int) -> bool:
    return len(await emulator.predictions()) >= n


async def _pending(tmp_path, n: int) -> bool:
    return len(list((tmp_path / "archive").glob("begun/tryon-v1.6/*/prediction.json"))) >= n
