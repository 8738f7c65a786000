"""Takes: rejecting an item makes a new take of it, the same inputs with another seed.

Take ``n`` of an item runs with seed ``(s + n - 1) mod 2**32``, where ``s`` is the item's seed as
the spec gives it (the model's default, 42, when it gives none): take 1 is the spec's item
unchanged, and take 3 of an item with seed 7 always runs with seed 9. The seed is one of the
inputs the item key hashes, so each take has its own key: its own pending record (a killed
take resumes its own prediction), its own ``result.json`` and its own reuse index entry.

Which take is current is read from the item's verdicts (:mod:`tryon.archive.takes`): one more than
the highest rejected one. Planning moves a rejected take still at the top of the item's folder to
``takes/<n>/`` first (a rejection killed half way), so a new take never overwrites it.
"""

from __future__ import annotations

from tryon.archive import Archive
from tryon.models import input_schema
from tryon.spec.items import Item

SEED_RANGE = 2 ** 32


def take_seed(base: int, take: int) -> int:
    """The seed of take ``take`` of an item whose spec seed is ``base``."""
    return (base + take - 1) % SEED_RANGE


def base_seed(item: Item) -> int:
    seed = item.inputs.get("seed")
    return int(seed) if seed is not None else int(input_schema(item.model_name).model_fields["seed"].default)


def take_item(item: Item, take: int) -> Item:
    """The item as its take ``take`` runs (take 1: unchanged)."""
    if take == 1:
        return item
    return item.model_copy(update={"take": take, "inputs": {**item.inputs, "seed": take_seed(base_seed(item), take)}})


async def current_take(archive: Archive, item: Item) -> Item:
    """The spec's ``item`` as its current take, with any rejected take moved off the top."""
    take = (await archive.read_verdicts(item)).current_take
    if take > 1 and (top := await archive.read_top_result(item)) is not None and top.take < take:
        await archive.shelve(item, top)
    return take_item(item, take)
