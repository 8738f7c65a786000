"""The item key: what identifies an item's inputs and images, i.e. what its prediction pays for.

Two items with the same key would buy the same images; the archive's reuse index is keyed by it.
"""

from __future__ import annotations

import hashlib
import json

from tryon import images
from tryon.models import MODELS, validate_inputs
from tryon.spec.items import Item

KEY_VERSION = 1


async def item_key(item: Item) -> str:
    """What the item pays for, as a sha256 hex: the model name and the schema-validated inputs
    with defaults applied, images replaced by their identity (content hash, or the URL)."""
    inputs = dict(item.inputs)
    for field in MODELS[item.model_name].image_fields:
        if isinstance(inputs.get(field), str):
            inputs[field] = await images.image_identity(inputs[field], item.base_dir)
    normalized = validate_inputs(item.model_name, inputs).model_dump(mode="json")
    canonical = json.dumps({"v": KEY_VERSION, "model_name": item.model_name, "inputs": normalized},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
