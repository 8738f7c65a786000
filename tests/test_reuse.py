"""Never paying twice for the same pair across collections, without Prefect: the archive's index,
reuse by verified copy, entries that do not verify, one payment per key in a process, and
indexing an older archive. Over the emulator on loopback and a local archive (the flow tests
do the same over moto's S3 server)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

from tests.collections import write_collection
from tests.test_item import TIME_SCALE, run_collection
from tryon.archive import Archive
from tryon.gallery import render_gallery
from tryon.index import index_archive

MODEL = "tryon-v1.6"


def result_of(root: Path, collection: str, label: str) -> dict:
    return json.loads((root / collection / MODEL / label / "result.json").read_text())


def entry_path(root: Path, key: str) -> Path:
    return root / "_index" / key[:2] / f"{key}.json"


def created(emulator) -> dict[str, int]:
    return emulator.stats()["created_per_hash"]


async def archive_a_then_plan_b(make_emulator, tmp_path):
    """Collection a (g0, g1 × m0, m1) archived; b (g0, g1 × m0..m3) shares half its pairs."""
    emulator = make_emulator(time_scale=TIME_SCALE)
    root = tmp_path / "archive"
    archive = Archive(str(root))
    a = write_collection(tmp_path / "a", name="a", garments=2, models=2)
    b = write_collection(tmp_path / "b", name="b", garments=2, models=4)
    _, report = await run_collection(emulator, a, archive)
    assert report.totals["archived"] == 4
    return emulator, root, archive, b


async def test_pairs_archived_by_another_collection_are_copied_for_0_credits(make_emulator, tmp_path):
    emulator, root, archive, b = await archive_a_then_plan_b(make_emulator, tmp_path)
    assert len(created(emulator)) == 4

    planned, report = await run_collection(emulator, b, archive)
    assert planned.as_dict()["reuse"] == 4 and planned.as_dict()["submit"] == 4
    assert planned.credits_needed == 4, "a reused item is estimated at 0 credits"
    assert report.totals == {"archived": 4, "reused": 4, "failed": 0, "skipped": 0}
    assert report.credits_used == 4
    assert emulator.stats()["requests"]["run"] == {"200": 8}, "only b's other half was submitted"
    assert sorted(created(emulator).values()) == [1] * 8, "no pair was paid for twice"

    for garment in ("g0", "g1"):
        for model in ("m0", "m1"):
            label = f"{garment}__{model}"
            mine, theirs = result_of(root, "b", label), result_of(root, "a", label)
            assert mine["reused_from"] == f"a/{MODEL}/{label}" and mine["credits_used"] == 0
            assert mine["key"] == theirs["key"]
            for output in mine["outputs"]:
                copied = (root / output["path"]).read_bytes()
                assert copied == (root / "a" / MODEL / label / output["name"]).read_bytes()
                assert hashlib.sha256(copied).hexdigest() == output["sha256"]
            # The entry still names the item that was paid for.
            entry = json.loads(entry_path(root, mine["key"]).read_text())
            assert entry["folder"] == f"a/{MODEL}/{label}"
    reused = [e for e in report.items if e.state == "reused"]
    assert all(e.note == f"reused from {e.reused_from}" for e in reused)
    gallery = render_gallery(report)
    assert all(f'src="{e.label}/{o.name}"' in gallery for e in report.items for o in e.outputs)
    assert gallery.count("reused from a/") == 4

    again, rerun = await run_collection(emulator, b, archive)
    assert again.as_dict()["skip"] == 8 and rerun.totals["skipped"] == 8
    assert emulator.stats()["requests"]["run"] == {"200": 8}


async def test_an_entry_that_does_not_verify_is_set_aside_and_the_item_paid_for(make_emulator, tmp_path):
    """A wrong sha256 in an entry, or a source output changed since: the item is paid for, the
    report says why, the image archived is the one the provider made, and the entry is replaced."""
    emulator, root, archive, b = await archive_a_then_plan_b(make_emulator, tmp_path)
    tampered_key = result_of(root, "a", "g0__m0")["key"]
    entry = json.loads(entry_path(root, tampered_key).read_text())
    entry["outputs"][0]["sha256"] = "0" * 64
    entry_path(root, tampered_key).write_text(json.dumps(entry))
    (root / "a" / MODEL / "g1__m1" / "output_0.png").write_bytes(b"not the image that was paid for")

    planned, report = await run_collection(emulator, b, archive)
    assert planned.as_dict()["reuse"] == 4, "planning reads entries, it does not verify them"
    assert report.totals == {"archived": 6, "reused": 2, "failed": 0, "skipped": 0}
    assert emulator.stats()["requests"]["run"] == {"200": 10}
    by_label = {e.label: e for e in report.items}
    for label, why in (("g0__m0", "does not match"), ("g1__m1", "does not verify")):
        entry_report = by_label[label]
        assert entry_report.state == "archived" and entry_report.reused_from is None
        assert why in entry_report.flags.reuse_refused and "not reused" in entry_report.note
        assert label in report.summary_text() and "did not verify" in report.summary_text()
        served = emulator.prediction(entry_report.prediction_id)["output_sha256"]
        data = (root / "b" / MODEL / label / "output_0.png").read_bytes()
        assert hashlib.sha256(data).hexdigest() == served[0] == entry_report.outputs[0].sha256
        assert json.loads(entry_path(root, entry_report.key).read_text())["folder"] == f"b/{MODEL}/{label}"


async def test_force_and_reuse_off_pay_for_every_item(make_emulator, tmp_path):
    emulator, root, archive, b = await archive_a_then_plan_b(make_emulator, tmp_path)
    planned, report = await run_collection(emulator, b, archive, reuse=False)
    assert planned.as_dict()["reuse"] == 0 and planned.credits_needed == 8
    assert report.totals["archived"] == 8
    c = write_collection(tmp_path / "c", name="c", garments=1, models=1)
    planned, report = await run_collection(emulator, c, archive, force=True)
    assert planned.as_dict()["submit"] == 1 and report.totals["archived"] == 1
    assert emulator.stats()["requests"]["run"] == {"200": 13}


async def test_collections_running_at_once_in_one_process_pay_for_a_shared_pair_once(make_emulator, tmp_path):
    """Planned before either archived anything: the second item of a key waits for the first."""
    emulator = make_emulator(time_scale=TIME_SCALE)
    archive = Archive(str(tmp_path / "archive"))
    specs = [write_collection(tmp_path / n, name=n, garments=2, models=2) for n in ("x", "y", "z")]
    results = await asyncio.gather(*(run_collection(emulator, s, archive) for s in specs))
    assert [p.as_dict()["submit"] for p, _ in results] == [4, 4, 4], "nothing was indexed when they planned"
    assert sorted(created(emulator).values()) == [1] * 4
    assert sum(r.totals["archived"] for _, r in results) == 4
    assert sum(r.totals["reused"] for _, r in results) == 8


async def test_an_older_archive_is_indexed_once_without_reading_an_image(make_emulator, tmp_path, monkeypatch):
    emulator, root, archive, b = await archive_a_then_plan_b(make_emulator, tmp_path)
    shutil.rmtree(root / "_index")
    read: list[str] = []
    real_read = Archive._read_sync

    def recording(self, path):
        read.append(path)
        return real_read(self, path)

    monkeypatch.setattr(Archive, "_read_sync", recording)
    done = await index_archive(archive)
    assert (done.written, done.present, done.incomplete) == (4, 0, 0)
    assert read and all(p.endswith("result.json") for p in read), "only result.json files were read"
    assert len(read) == len(set(read)) == 4
    done = await index_archive(archive)
    assert (done.written, done.present) == (0, 4)
    monkeypatch.undo()

    planned, report = await run_collection(emulator, b, archive)
    assert planned.as_dict()["reuse"] == 4 and report.totals["reused"] == 4
