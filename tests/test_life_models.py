"""Every model's outputs archived as the emulator served them, without Prefect: several outputs
per item, garments alone (product-to-model), and one catalogue archived under two models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.collections import write_collection
from tests.life import LocalEmulator, local_emulator, run_spec, sha256
from tryon.archive import Archive


async def assert_archived(emulator: LocalEmulator, root: Path, model_name: str, items: int, outputs: int) -> list[dict]:
    """Every item of ``model_name`` archived with ``outputs`` files whose sha256 is what the emulator served."""
    served = {p["id"]: p["output_sha256"] for p in await emulator.predictions()}
    results = [json.loads(path.read_text()) for path in sorted((root / "test-coll" / model_name).glob("*/result.json"))]
    assert len(results) == items and all(r["state"] == "archived" for r in results)
    for result in results:
        assert len(result["outputs"]) == outputs
        folder = root / "test-coll" / model_name / result["label"]
        assert [sha256(folder / o["name"]) for o in result["outputs"]] == [o["sha256"] for o in result["outputs"]] \
            == served[result["prediction_id"]]
    return results


@pytest.mark.parametrize("model_name, inputs, per_item, charged", [
    ("tryon-max", {"resolution": "1k", "generation_mode": "fast", "num_images": 2}, 2, 2 * 2),
    ("product-to-model", {"resolution": "1k"}, 1, 1),
])
async def test_newer_models_archive_every_output(tmp_path, model_name, inputs, per_item, charged):
    spec = write_collection(tmp_path, garments=2, models=1, inputs=inputs, model_name=model_name)
    async with local_emulator() as emulator:
        planned, report = await run_spec(emulator, spec, Archive(str(tmp_path / "archive")))
        await assert_archived(emulator, tmp_path / "archive", model_name, items=2, outputs=per_item)
        assert report.credits_used == (await emulator.stats())["credits_charged"] == 2 * charged
        assert planned.credits_needed == 2 * 5 * per_item and planned.credits_exact is False, "the published top"


async def test_product_to_model_runs_a_collection_of_garments_alone(tmp_path):
    spec = write_collection(tmp_path, garments=2, models=0, inputs={"aspect_ratio": "3:4"},
                            model_name="product-to-model")
    async with local_emulator() as emulator:
        await run_spec(emulator, spec, Archive(str(tmp_path / "archive")))
        results = await assert_archived(emulator, tmp_path / "archive", "product-to-model", items=2, outputs=1)
    assert [r["label"] for r in results] == ["g0__generated", "g1__generated"]


async def test_a_v16_catalogue_re_rendered_with_tryon_max_archives_beside_the_old(tmp_path):
    spec = write_collection(tmp_path, garments=1, models=2, inputs={"mode": "performance", "num_samples": 1},
                            garment_inputs={"g0": {"category": "tops"}})
    archive = Archive(str(tmp_path / "archive"))
    async with local_emulator() as emulator:
        await run_spec(emulator, spec, archive)
        await run_spec(emulator, spec, archive, model_name="tryon-max", overrides={"mode": "fast"})
        await assert_archived(emulator, tmp_path / "archive", "tryon-max", items=2, outputs=1)
        await assert_archived(emulator, tmp_path / "archive", "tryon-v1.6", items=2, outputs=1)  # untouched
        sent = [p for p in await emulator.predictions() if p["model_name"] == "tryon-max"]
    assert len(sent) == 2 and all(p["images"]["product_image"] for p in sent)
