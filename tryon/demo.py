"""The demo's sample collection: synthetic garments and model photos made with Pillow.

``tryon demo`` runs it through the real flow on the local emulator.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from PIL import Image, ImageDraw

DEMO_DIR = Path(".demo")
DEMO_KEY = "fa-demo-emulator-key"
PALETTE = [(200, 60, 60), (60, 120, 200), (70, 160, 90), (220, 170, 40), (150, 80, 170), (40, 170, 170)]


def _picture(path: Path, size: tuple[int, int], colour: tuple[int, int, int], label: str, garment: bool) -> None:
    image = Image.new("RGB", size, (235, 235, 235) if garment else colour)
    draw = ImageDraw.Draw(image)
    w, h = size
    if garment:  # a T-shirt silhouette
        draw.polygon([(w * .3, h * .2), (w * .7, h * .2), (w * .9, h * .35), (w * .78, h * .45), (w * .7, h * .4),
                      (w * .7, h * .85), (w * .3, h * .85), (w * .3, h * .4), (w * .22, h * .45), (w * .1, h * .35)],
                     fill=colour)
    else:  # a standing figure
        draw.ellipse([w * .4, h * .08, w * .6, h * .22], fill=(250, 220, 190))
        draw.rectangle([w * .35, h * .24, w * .65, h * .62], fill=(250, 220, 190))
        draw.rectangle([w * .37, h * .62, w * .63, h * .95], fill=(90, 90, 110))
    draw.text((10, 10), label, fill=(0, 0, 0))
    image.save(path, "JPEG", quality=90)


def write_sample_collection(folder: Path, garments: int, models: int) -> Path:
    """A collection of ``garments × models`` items with synthetic images; returns the spec path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    spec = {"name": "demo", "model_name": "tryon-v1.6", "inputs": {"mode": "balanced", "num_samples": 1},
            "garments": [], "models": [], "pairs": "all"}
    for i in range(garments):
        _picture(folder / "images" / f"garment-{i}.jpg", (512, 512), PALETTE[i % len(PALETTE)], f"garment-{i}", True)
        spec["garments"].append({"id": f"garment-{i}", "image": f"images/garment-{i}.jpg",
                                 "inputs": {"category": "tops"}})
    for i in range(models):
        _picture(folder / "images" / f"model-{i}.jpg", (512, 768), PALETTE[-1 - i % len(PALETTE)], f"model-{i}", False)
        spec["models"].append({"id": f"model-{i}", "image": f"images/model-{i}.jpg"})
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
