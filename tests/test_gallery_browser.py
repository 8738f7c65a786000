"""The gallery in a real browser: headless Chromium opens ``index.html`` from the archive, every
thumbnail has loaded, and every failed cell shows its error name and message."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from tests.browser import Browser, chromium_path
from tests.test_flow_faults import run_flow, url_collection

if chromium_path() is None:  # CI must look at the page; a developer without chromium may skip
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing: scripts/test.sh installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

CELLS = """Array.from(document.querySelectorAll('td.failed')).map(td => ({
    error: td.querySelector('.error b').textContent, text: td.textContent}))"""
ROWS = """Array.from(document.querySelectorAll('tbody tr')).filter(tr => tr.offsetParent !== null)
    .map(tr => tr.querySelector('th').textContent.trim())"""
IMAGES = """Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().height}))"""


async def test_gallery_shows_every_output_and_every_failure_reason(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator(faults={"fail_inputs": {"posey": "PoseError"}})
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["shirt", "posey", "coat"], models=2, name="gallery")
    text = spec.read_text().replace("mode: performance", "mode: performance\n  num_samples: 2")
    spec.write_text(text)
    state = await run_flow(spec=str(spec), archive=str(tmp_path / "archive"))
    assert state.is_failed(), "two items fail with PoseError"
    folder = tmp_path / "archive" / "gallery" / "tryon-v1.6"
    report = json.loads((folder / "report.json").read_text())
    archived_outputs = sum(len(e["outputs"]) for e in report["items"] if e["state"] == "archived")
    failures = {e["error_name"]: e["error_message"] for e in report["items"] if e["state"] == "failed"}
    assert archived_outputs == 8 and list(failures) == ["PoseError"]

    async with Browser() as page:
        await page.open((folder / "index.html").as_uri())
        images = await page.evaluate(IMAGES.replace("document.images", "document.querySelectorAll('td img')"))
        heads = await page.evaluate(IMAGES.replace("document.images", "document.querySelectorAll('th img')"))
        rows = await page.evaluate(ROWS)
        cells = await page.evaluate(CELLS)
        shot = await page.screenshot(tmp_path / "gallery.png")
        await page.evaluate("document.getElementById('failed-only').click()")
        failed_rows = await page.evaluate(ROWS)
    if os.environ.get("TRYON_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "gallery.png", os.environ["TRYON_SCREENSHOT_DIR"])

    assert len(images) == archived_outputs
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert {(i["width"], i["height"]) for i in images} == {(864, 1296)}, "the archived outputs themselves"
    assert all(i["shown"] > 100 for i in images), "shown as thumbnails"
    assert rows == ["shirt", "posey", "coat"], "rows in spec order"
    assert failed_rows == ["posey"], "the filter shows only rows with a failed item"
    assert len(heads) == 3 + 2 and all(h["complete"] and h["width"] > 0 for h in heads), heads
    assert len(cells) == 2
    for cell in cells:
        assert cell["error"] == "PoseError" and failures["PoseError"] in cell["text"]
    with Image.open(tmp_path / "gallery.png") as picture:
        assert picture.width >= 1000 and picture.height >= 400 and len(shot) > 20_000


async def test_a_gallery_on_s3_opens_from_a_copy_with_presigned_links_and_input_thumbnails(
        prefect_server, make_emulator, env_for, s3, tmp_path):
    # Local input images: their thumbnails are copied into the archive beside the gallery.
    env_for(make_emulator(), 20.0)
    from tests.collections import write_collection
    from tryon.archive import Archive
    from tryon.gallery import gallery_copy

    spec = write_collection(tmp_path / "spec", name="on-s3", garments=2, models=2)
    state = await run_flow(spec=str(spec), archive=s3.url("archive"))
    assert state.is_completed()
    assert len(s3.fs().ls(s3.url("archive", "on-s3", "tryon-v1.6", "_inputs"))) == 4, "2 garments + 2 models"
    page_file = tmp_path / "gallery.html"
    page_file.write_text(await gallery_copy(str(spec), archive=Archive(s3.url("archive")), expires=600))
    text = page_file.read_text()
    assert "Signature=" in text and s3.storage_options["secret"] not in text, "presigned, no secret"
    async with Browser() as page:
        await page.open(page_file.as_uri())
        images = await page.evaluate(IMAGES)
    assert len(images) == 4 + 4, "four outputs and four input thumbnails"
    assert all(i["complete"] and i["width"] > 0 for i in images), images
