"""Input images really loaded, and deterministic output images made from them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from functools import lru_cache

import httpx
from PIL import Image, ImageDraw, UnidentifiedImageError

THUMB = (96, 144)


class ImageLoadError(Exception):
    pass


def _open(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageLoadError(f"{what} is not a readable image ({exc})") from None
    return image.convert("RGB")


async def load_thumbnail(value: str, field: str, http: httpx.AsyncClient) -> Image.Image:
    """Load an input as the provider does (URL with image/* Content-Type, or data URI); keep a thumbnail."""
    if value.startswith("saved:"):
        seed = hashlib.sha256(value.encode()).digest()
        return Image.new("RGB", THUMB, tuple(seed[:3]))
    if value.startswith("data:"):
        header, _, body = value.partition(",")
        if not header.startswith("data:image/") or ";base64" not in header:
            raise ImageLoadError(f"{field}: a data URI needs the prefix data:image/<format>;base64,")
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ImageLoadError(f"{field}: the data URI is not valid base64") from None
        image = _open(data, field)
    elif value.startswith(("http://", "https://")):
        try:
            response = await http.get(value)
        except httpx.HTTPError as exc:
            raise ImageLoadError(f"{field}: could not fetch {value}: {type(exc).__name__}") from None
        kind = response.headers.get("content-type", "")
        if response.status_code >= 400:
            raise ImageLoadError(f"{field}: {value} answered {response.status_code}")
        if not kind.startswith("image/"):
            raise ImageLoadError(f"{field}: {value} has Content-Type {kind or 'none'!r}, not image/*")
        image = _open(response.content, field)
    else:
        raise ImageLoadError(f"{field}: not a URL, data URI or saved: name")
    image.thumbnail(THUMB)
    return image


@lru_cache(maxsize=64)
def render_output(seed: bytes, size: tuple[int, int], fmt: str, model_png: bytes, garment_png: bytes) -> bytes:
    """A try-on stand-in: the model photo as background, the garment pasted on the torso, a colour
    band from the inputs' hash. Deterministic for the same inputs, seed and sample index."""
    w, h = size
    model = Image.open(io.BytesIO(model_png)).resize(size, Image.Resampling.NEAREST)
    garment = Image.open(io.BytesIO(garment_png))
    gw = w // 2
    garment = garment.resize((gw, max(1, gw * garment.height // max(garment.width, 1))), Image.Resampling.NEAREST)
    model.paste(garment, ((w - gw) // 2, h // 4))
    draw = ImageDraw.Draw(model)
    draw.rectangle([0, h - h // 12, w, h], fill=tuple(seed[:3]))
    draw.text((10, h - h // 14), seed.hex()[:16], fill=(255, 255, 255))
    return _encode(model, fmt)


@lru_cache(maxsize=8)
def blank_output(size: tuple[int, int], fmt: str) -> bytes:
    """What a failed render looks like: one uniform fill of the promised size."""
    return _encode(Image.new("RGB", size, (238, 238, 238)), fmt)


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, "JPEG", quality=85)
    else:
        image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# Stands in for inputs still loading when an output is asked for (inputs load in the background).
PLACEHOLDER = png_bytes(Image.new("RGB", THUMB, (128, 128, 128)))


@lru_cache(maxsize=32)
def asset(name: str, fmt: str) -> bytes:
    """A synthetic input image for tests that need URL inputs."""
    digest = hashlib.sha256(name.encode()).digest()
    image = Image.new("RGB", (384, 512), tuple(digest[:3]))
    ImageDraw.Draw(image).ellipse([96, 96, 288, 416], fill=tuple(digest[3:6]))
    out = io.BytesIO()
    image.save(out, "JPEG" if fmt == "jpeg" else "PNG")
    return out.getvalue()
