"""Checks, takes, verdicts, approval and publishing without Prefect, over the emulator on loopback
and a local archive: a flagged output says why in result.json and the report; a rejected item gets
a new take with its own seed, paid once, the earlier take kept; approval writes approved.json and
publishing copies the approved bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.collections import write_collection
from tests.test_flow_faults import url_collection
from tests.test_item import TIME_SCALE, run_collection
from tryon import batch
from tryon.archive import Archive, ArchiveError
from tryon.publish import publish
from tryon.takes import take_seed
from tryon.verdicts import approve, flagged, read_approved, reject, standings

MODEL = "tryon-v1.6"


def seeds(emulator) -> list[int]:
    """Each prediction's seed as sent, oldest first."""
    return [p["seed"] for p in emulator.predictions()]


async def archived(make_emulator, tmp_path, name: str, *, garments: int, models: int):
    """A collection run once into a local archive: the emulator, spec, archive root, archive and collection."""
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name=name, garments=garments, models=models)
    root = tmp_path / "archive"
    archive = Archive(str(root))
    await run_collection(emulator, spec, archive)
    return emulator, spec, root, archive, await batch.load_and_validate(str(spec))


def test_a_takes_seed_is_the_spec_seed_plus_the_take_less_one():
    assert [take_seed(42, n) for n in (1, 2, 3)] == [42, 43, 44]
    assert take_seed(2 ** 32 - 1, 2) == 0


async def test_a_blank_and_a_wrong_size_output_are_flagged_in_result_report_and_standings(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE,
                             faults={"output_faults": {"blank-shirt": "blank", "small-shirt": "wrong_size"}})
    spec = url_collection(tmp_path, emulator, garments=["shirt", "blank-shirt", "small-shirt"])
    archive = Archive(str(tmp_path / "archive"))
    _, report = await run_collection(emulator, spec, archive)
    assert set(report.needs_review) == {"blank-shirt__m0", "small-shirt__m0"}
    assert "blank" in report.needs_review["blank-shirt__m0"]
    assert "432×648" in report.needs_review["small-shirt__m0"]
    assert "needs review (2" in report.summary_text()
    saved = json.loads((tmp_path / "archive/faults" / MODEL / "small-shirt__m0/result.json").read_text())
    assert saved["needs_review"].startswith("output_0.png: size 432×648") and saved["take"] == 1
    collection = await batch.load_and_validate(str(spec))
    assert list(flagged(await standings(collection, archive))) == ["blank-shirt__m0", "small-shirt__m0"]
    _, rerun = await run_collection(emulator, spec, archive)
    assert rerun.totals["skipped"] == 3 and set(rerun.needs_review) == set(report.needs_review), \
        "an earlier run's flags still show"


async def test_rejected_items_get_one_new_take_each_then_approval_and_publish(make_emulator, tmp_path):
    emulator, spec, root, archive, collection = await archived(make_emulator, tmp_path, "looks", garments=2, models=2)
    first = {p["id"] for p in emulator.predictions()}
    take1 = (root / "looks" / MODEL / "g0__m1" / "output_0.png").read_bytes()

    rejected = ["g0__m1", "g1__m0", "g1__m1"]
    after = await reject(collection, archive, rejected, reason="hand wrong", by="ana")
    assert [s.take for s in after] == [2, 2, 2] and not any(s.made for s in after)
    with pytest.raises(ValueError, match="take 2 is not made yet"):
        await reject(collection, archive, ["g0__m1"], reason="again", by="ana")
    with pytest.raises(ValueError, match="not items of this collection: g9__m9"):
        await reject(collection, archive, ["g9__m9"], reason="x", by="ana")

    planned, report = await run_collection(emulator, spec, archive)
    assert planned.as_dict()["submit"] == 3 and report.credits_used == 3
    new = [p for p in emulator.predictions() if p["id"] not in first]
    assert sorted(p["seed"] for p in new) == [43, 43, 43], "each rejected item once, seed 42 + 1"
    folder = root / "looks" / MODEL / "g0__m1"
    assert (folder / "takes/1/output_0.png").read_bytes() == take1, "the rejected take stays archived"
    assert json.loads((folder / "takes/1/result.json").read_text())["take"] == 1
    assert json.loads((folder / "result.json").read_text())["take"] == 2
    verdicts = json.loads((folder / "verdicts.json").read_text())["verdicts"]
    assert [(v["take"], v["verdict"], v["reason"], v["by"]) for v in verdicts] == [(1, "rejected", "hand wrong", "ana")]

    again, _ = await run_collection(emulator, spec, archive)
    assert again.as_dict()["skip"] == 4 and len(emulator.predictions()) == 7, "no take is paid for again"

    approved = await approve(collection, archive, by="ana")
    assert [(i.label, i.take) for i in approved.items] == [("g0__m0", 1), ("g0__m1", 2), ("g1__m0", 2), ("g1__m1", 2)]
    assert (await read_approved(collection, archive)) == approved
    published = await publish(approved, archive, str(tmp_path / "shop"))
    assert sorted(Path(p).name for p in published) == ["g0__m0_0.png", "g0__m1_0.png", "g1__m0_0.png", "g1__m1_0.png"]
    by_id = {p["id"]: p for p in emulator.predictions()}
    for item in approved.items:
        result = json.loads((root / "looks" / MODEL / item.label / "result.json").read_text())
        copy = (tmp_path / "shop" / "looks" / f"{item.label}_0.png").read_bytes()
        assert hashlib.sha256(copy).hexdigest() == item.sha256[0] == by_id[result["prediction_id"]]["output_sha256"][0]
    assert len(emulator.predictions()) == 7


async def test_an_earlier_take_is_reused_per_take_by_another_collection(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE)
    root = tmp_path / "archive"
    archive = Archive(str(root))
    a = write_collection(tmp_path / "a", name="a", garments=1, models=1)
    b = write_collection(tmp_path / "b", name="b", garments=1, models=1)
    await run_collection(emulator, a, archive)
    await reject(await batch.load_and_validate(str(a)), archive, ["g0__m0"], reason="no", by="ana")
    await run_collection(emulator, a, archive)
    assert len(emulator.predictions()) == 2
    planned, report = await run_collection(emulator, b, archive)
    assert report.totals["reused"] == 1 and len(emulator.predictions()) == 2, "take 1, shelved, is still reusable"
    assert report.items[0].reused_from == f"a/{MODEL}/g0__m0/takes/1"


async def test_a_rejection_killed_half_way_is_finished_by_the_next_plan(make_emulator, tmp_path, monkeypatch):
    emulator, spec, root, archive, collection = await archived(make_emulator, tmp_path, "half", garments=1, models=1)

    async def killed(self, item, result):
        raise ArchiveError("killed")
    monkeypatch.setattr(Archive, "shelve", killed)
    with pytest.raises(ArchiveError):
        await reject(collection, archive, ["g0__m0"], reason="no", by="ana")
    monkeypatch.undo()
    folder = root / "half" / MODEL / "g0__m0"
    assert json.loads((folder / "result.json").read_text())["take"] == 1, "the verdict is written, the take not moved"
    await run_collection(emulator, spec, archive)
    assert (folder / "takes/1/output_0.png").exists() and json.loads((folder / "result.json").read_text())["take"] == 2
    assert seeds(emulator) == [42, 43]


async def test_the_gallery_shows_the_collection_as_it_stands_and_picks_labels_in_a_browser(make_emulator, tmp_path):
    from tests.browser import Browser, chromium_path
    from tryon.gallery import gallery_copy

    emulator = make_emulator(time_scale=TIME_SCALE, faults={"output_faults": {"blank-shirt": "blank"}})
    spec = url_collection(tmp_path, emulator, garments=["shirt", "blank-shirt"], models=2, name="stand")
    archive = Archive(str(tmp_path / "archive"))
    await run_collection(emulator, spec, archive)
    collection = await batch.load_and_validate(str(spec))
    await reject(collection, archive, ["shirt__m1"], reason="hand wrong", by="ana")
    planned, report = await run_collection(emulator, spec, archive)
    await batch.save_report(archive, report, (s.item for s in planned.states))
    written = (tmp_path / "archive/stand/tryon-v1.6/index.html").read_text()
    assert "4 items, 4 archived (1 at a later take), 2 need review, 0 approved" in written
    assert written.count("take 1, archived") == 3 and "take 2, archived by this run, 1 credit" in written
    await approve(collection, archive, by="ana")
    page = await gallery_copy(str(spec), archive=archive)
    assert "4 items, 4 archived (1 at a later take), 2 need review, 4 approved, 0 failed" in page
    assert page.count("take 2, archived") == 1 and page.count("take 1, archived") == 3
    assert "archived earlier" not in page, "the collection as it stands, not what the latest run did"
    assert page.count("needs review: output_0.png: blank") == 2 and page.count("approved by ana") == 4
    assert 'src="http' not in page.replace(emulator.url, ""), "no external asset"
    path = tmp_path / "gallery.html"
    path.write_text(page)
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/_system.sh)")
    async with Browser() as browser:
        await browser.open(path.as_uri())
        await browser.evaluate("document.querySelector('input.pick[value=\"blank-shirt__m0\"]').click()")
        await browser.evaluate("document.querySelector('input.pick[value=\"shirt__m1\"]').click()")
        picked = await browser.evaluate("document.getElementById('picked').textContent")
        await browser.evaluate("document.getElementById('review-only').click()")
        rows = await browser.evaluate("Array.from(document.querySelectorAll('tbody tr')).filter("
                                      "r => r.offsetParent !== null).map(r => r.querySelector('th').textContent)")
    assert picked.splitlines() == ["shirt__m1 blank-shirt__m0",
                                   'tryon review SPEC --reject shirt__m1 blank-shirt__m0 --reason "..."']
    assert rows == ["blank-shirt"]
