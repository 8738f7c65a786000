"""Reuse across collections over moto's S3 server, without Prefect: a shared pair is copied for
0 credits byte for byte, and an index entry that does not verify makes its item paid for."""

from __future__ import annotations

import hashlib
import json

from tests.collections import write_collection
from tests.life import local_emulator, run_spec
from tryon import batch
from tryon.archive import Archive


def s3_json(fs, url: str) -> dict:
    return json.loads(fs.cat(url))


async def archive_a(emulator, s3, tmp_path) -> tuple[Archive, set[str]]:
    """Collection a (g0, g1 × m0, m1) archived on S3; the emulator's input hashes it paid for."""
    archive = Archive(s3.url("archive"))
    _, report = await run_spec(emulator, write_collection(tmp_path / "a", name="a", garments=2, models=2), archive)
    assert report.totals["archived"] == 4
    paid = {p["hash"] for p in await emulator.predictions()}
    assert len(paid) == 4
    await emulator.reset()
    return archive, paid


async def test_a_collection_sharing_half_its_pairs_pays_for_the_other_half(s3, tmp_path):
    b = write_collection(tmp_path / "b", name="b", garments=2, models=4)  # shares g0, g1 × m0, m1 with a
    async with local_emulator() as emulator:
        archive, paid_for_a = await archive_a(emulator, s3, tmp_path)
        planned, report = await run_spec(emulator, b, archive)
        assert {k: v for k, v in planned.as_dict().items() if k in ("submit", "reuse", "credits_needed")} == \
            {"submit": 4, "reuse": 4, "credits_needed": 4}
        assert (report.totals["archived"], report.totals["reused"], report.credits_used) == (4, 4, 4)
        paid_for_b = [p["hash"] for p in await emulator.predictions()]
    assert len(paid_for_b) == 4 and not set(paid_for_b) & paid_for_a, "no prediction for a shared pair"

    await batch.save_report(archive, report)
    fs = s3.fs()
    gallery = fs.cat(s3.url("archive", "b", "tryon-v1.6", "index.html")).decode()
    reused = []
    for entry in s3_json(fs, s3.url("archive", "b", "tryon-v1.6", "report.json"))["items"]:
        for output in entry["outputs"]:
            assert f'src="{entry["label"]}/{output["name"]}"' in gallery
            assert fs.exists(output["url"])
        if entry["state"] == "reused":
            reused.append(entry["label"])
            assert entry["credits_used"] == 0 and entry["reused_from"] == f"a/tryon-v1.6/{entry['label']}"
            for output in entry["outputs"]:
                theirs = fs.cat(s3.url("archive", entry["reused_from"], output["name"]))
                assert fs.cat(output["url"]) == theirs, "a reused object is byte for byte a's"
    assert sorted(reused) == ["g0__m0", "g0__m1", "g1__m0", "g1__m1"]


async def test_a_tampered_index_entry_on_s3_makes_its_item_paid_for_and_reported(s3, tmp_path):
    b = write_collection(tmp_path / "b", name="b", garments=2, models=2)  # every pair of a
    fs = s3.fs()
    async with local_emulator() as emulator:
        archive, _ = await archive_a(emulator, s3, tmp_path)
        key = s3_json(fs, s3.url("archive", "a", "tryon-v1.6", "g1__m0", "result.json"))["key"]
        entry_url = s3.url("archive", "_index", key[:2], f"{key}.json")
        entry = s3_json(fs, entry_url)
        entry["outputs"][0]["sha256"] = "f" * 64
        fs.pipe(entry_url, json.dumps(entry).encode())

        _, report = await run_spec(emulator, b, archive)
        assert report.totals == {"archived": 1, "reused": 3, "failed": 0, "skipped": 0}
        assert (await emulator.stats())["requests"]["run"] == {"200": 1}
        [paid] = [e for e in report.items if e.state == "archived"]
        assert paid.label == "g1__m0" and "index entry" in paid.flags.reuse_refused
        [served] = (await emulator.predictions())[0]["output_sha256"]
    assert hashlib.sha256(fs.cat(paid.outputs[0].url)).hexdigest() == served
    assert s3_json(fs, entry_url)["folder"] == "b/tryon-v1.6/g1__m0", "the entry now names the item paid for"
