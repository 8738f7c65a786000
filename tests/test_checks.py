"""The output checks on images made with Pillow: decodes, the promised size, not blank."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw

from tryon.checks import TIER_FACTOR, check_output, size_promise


def picture(size: tuple[int, int], fmt: str = "PNG", seed: int = 1) -> bytes:
    """A busy image (random rectangles): what a try-on output looks like to the checks."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (200, 190, 180))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(40):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.rectangle([x, y, x + w // 5, y + h // 5], fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def flat(size: tuple[int, int], colour=(255, 255, 255), fmt: str = "PNG", noise: int = 0) -> bytes:
    image = Image.new("RGB", size, colour)
    if noise:  # a few stray pixels: still blank to a reviewer
        rng = random.Random(3)
        for _ in range(noise):
            image.putpixel((rng.randrange(size[0]), rng.randrange(size[1])), (0, 0, 0))
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def test_a_good_v16_output_passes():
    verdict = check_output(picture((864, 1296)), "tryon-v1.6")
    assert verdict.ok and verdict.size == (864, 1296) and verdict.reasons == []


def test_a_good_jpeg_output_passes():
    assert check_output(picture((576, 864), "JPEG"), "tryon-v1.5", {"output_format": "jpeg"}).ok


@pytest.mark.parametrize("data", [b"", b"not an image at all", picture((864, 1296))[:400]])
def test_bytes_that_do_not_decode_fail_only_that_check(data):
    verdict = check_output(data, "tryon-v1.6")
    assert [p.check for p in verdict.problems] == ["decodes"] and verdict.size is None
    assert "does not decode" in verdict.reasons[0]


@pytest.mark.parametrize(("model", "size"), [
    ("tryon-v1.6", (432, 648)),  # half each side
    ("tryon-v1.6", (1296, 864)),  # landscape: the same pixels, not the documented size
    ("tryon-v1.6", (576, 864)),  # v1.5's size
    ("tryon-v1.5", (864, 1296)),
])
def test_fixed_size_models_must_match_exactly(model, size):
    verdict = check_output(picture(size), model)
    assert [p.check for p in verdict.problems] == ["size"]
    assert f"{size[0]}×{size[1]}" in verdict.reasons[0]


@pytest.mark.parametrize(("inputs", "size", "ok"), [
    ({"resolution": "1k"}, (832, 1248), True),
    ({"resolution": "1k"}, (1024, 1024), True),  # a square model photo: another aspect, same tier
    ({"resolution": "1k"}, (1248, 832), True),  # a landscape model photo
    ({"resolution": "2k"}, (1664, 2496), True),
    ({"resolution": "2k"}, (832, 1248), False),  # the 1k tier for a 2k request
    ({"resolution": "1k"}, (416, 624), False),  # a quarter of the pixels
    ({}, (1664, 2496), False),  # default 1k, got 2k
])
def test_input_dependent_models_are_checked_by_resolution_tier(inputs, size, ok):
    verdict = check_output(picture(size), "tryon-max", inputs)
    assert verdict.ok is ok, verdict.reasons
    if not ok:
        assert verdict.problems[0].check == "size" and "MP" in verdict.reasons[0]


def test_product_to_model_tier_follows_its_resolution_and_aspect_table():
    assert size_promise("product-to-model", {"aspect_ratio": "16:9"}).size == (1360, 768)
    assert not size_promise("product-to-model", {"product_image": "x"}).exact
    assert check_output(picture((1360, 768)), "product-to-model", {"aspect_ratio": "16:9"}).ok
    assert not check_output(picture((1360, 768)), "product-to-model", {"resolution": "4k"}).ok


def test_tier_factor_tells_adjacent_tiers_apart():
    one, two = (size_promise("tryon-max", {"resolution": r}).size for r in ("1k", "2k"))
    assert (two[0] * two[1]) / (one[0] * one[1]) > TIER_FACTOR ** 2 * 0.99


@pytest.mark.parametrize("data", [
    flat((864, 1296)),
    flat((864, 1296), colour=(0, 0, 0)),
    flat((864, 1296), colour=(120, 130, 140), fmt="JPEG"),
    flat((864, 1296), noise=30),
])
def test_near_uniform_images_are_blank(data):
    verdict = check_output(data, "tryon-v1.6")
    assert [p.check for p in verdict.problems] == ["not_blank"] and verdict.size == (864, 1296)
    assert "blank" in verdict.reasons[0]


def test_a_blank_image_of_the_wrong_size_has_both_reasons():
    verdict = check_output(flat((100, 100)), "tryon-v1.6")
    assert [p.check for p in verdict.problems] == ["size", "not_blank"]


def test_an_unknown_model_is_an_error_not_a_verdict():
    with pytest.raises(KeyError, match="unknown model_name"):
        check_output(picture((864, 1296)), "tryon-v9")
