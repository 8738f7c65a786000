"""Synthetic collections for tests: images made with Pillow, specs written as YAML."""

from __future__ import annotations

from pathlib import Path

import yaml
from PIL import Image


def write_collection(folder: Path, *, name: str = "test-coll", garments: int = 2, models: int = 2,
                     inputs: dict | None = None, model_name: str = "tryon-v1.6", garment_inputs: dict | None = None,
                     image_ext: str = "png", variant: int = 0, garment_size: tuple[int, int] = (64, 64)) -> Path:
    """A spec with ``garments × models`` items over local images; returns the spec path.

    Images depend on their index and ``variant`` alone, so two collections with the same variant
    share their pairs (the same item keys: reused across collections); another variant shares none."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    spec: dict = {"name": name, "model_name": model_name, "inputs": inputs or {"mode": "performance"},
                  "garments": [], "models": [], "pairs": "all"}
    for i in range(garments):
        path = folder / "img" / f"g{i}.{image_ext}"
        Image.new("RGB", garment_size, (40 * i % 255, 100 + variant, 200)).save(path)
        spec["garments"].append({"id": f"g{i}", "image": f"img/g{i}.{image_ext}",
                                 **({"inputs": garment_inputs[f"g{i}"]} if garment_inputs and f"g{i}" in garment_inputs else {})})
    for i in range(models):
        path = folder / "img" / f"m{i}.{image_ext}"
        Image.new("RGB", (64, 96), (200, 60 * i % 255, 80 + variant)).save(path)
        spec["models"].append({"id": f"m{i}", "image": f"img/m{i}.{image_ext}"})
    target = folder / f"{name}.yaml"
    target.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target
