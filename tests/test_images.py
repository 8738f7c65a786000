"""Image references: resolution, identity, checks and what the API receives."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid

import fsspec
import pytest
from PIL import Image

from tryon import images


def png_bytes(size=(64, 48), color="red", mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size=(64, 48), color="blue") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decode_data_uri(value: str) -> tuple[str, bytes]:
    head, body = value.split(",", 1)
    return head, base64.b64decode(body)


# -- resolve_ref ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "base", "expected"), [
    ("models/ava.jpg", "/specs", "/specs/models/ava.jpg"),
    ("../shared/ava.jpg", "/specs/fw26", "/specs/shared/ava.jpg"),
    ("/abs/ava.jpg", "/specs", "/abs/ava.jpg"),
    ("models/ava.jpg", "s3://shop/specs", "s3://shop/specs/models/ava.jpg"),
    ("../ava.jpg", "file:///data/specs", "file:///data/ava.jpg"),
    ("s3://other/j.jpg", "/specs", "s3://other/j.jpg"),
    ("https://cdn.example/j.jpg?x=1", "/specs", "https://cdn.example/j.jpg?x=1"),
    ("saved:ava", "/specs", "saved:ava"),
])
def test_resolve_ref(ref, base, expected):
    assert images.resolve_ref(ref, base) == expected


def test_parent_of():
    assert images.parent_of("s3://shop/specs/fw26.yaml") == "s3://shop/specs"
    assert images.parent_of("/a/b/c.csv") == "/a/b"


# -- identity -------------------------------------------------------------------------------------

async def test_identity_of_a_file_is_its_streamed_content_hash(tmp_path, monkeypatch):
    data = png_bytes()
    (tmp_path / "a.png").write_bytes(data)
    monkeypatch.setattr(images, "CHUNK", 7)  # many chunks: the hash is streamed, not whole-file
    identity = await images.image_identity("a.png", str(tmp_path))
    assert identity == f"sha256:{hashlib.sha256(data).hexdigest()}"


async def test_identity_same_bytes_same_identity_whatever_the_kind(tmp_path):
    data = png_bytes()
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "copy.png").write_bytes(data)
    uri = images.data_uri(data, "png")
    a = await images.image_identity("a.png", str(tmp_path))
    assert a == await images.image_identity("copy.png", str(tmp_path))
    assert a == await images.image_identity(uri)


async def test_identity_changes_when_the_file_changes(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(color="red"))
    first = await images.image_identity(str(path))
    path.write_bytes(png_bytes(color="green"))  # same size, new content
    assert await images.image_identity(str(path)) != first


async def test_identity_of_urls_and_saved_names_is_the_reference():
    assert await images.image_identity("https://cdn.example/j.jpg") == "https://cdn.example/j.jpg"
    assert await images.image_identity("saved:ava") == "saved:ava"


async def test_identity_of_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        await images.image_identity(str(tmp_path / "nope.png"))


# -- check_image ----------------------------------------------------------------------------------

async def test_check_image_accepts_real_images(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes())
    assert await images.check_image("a.png", str(tmp_path)) is None
    assert await images.check_image("b.jpg", str(tmp_path)) is None
    assert await images.check_image(images.data_uri(png_bytes(), "png")) is None


async def test_check_image_names_each_problem(tmp_path):
    (tmp_path / "text.jpg").write_text("hello, not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    truncated = png_bytes(size=(400, 400))
    (tmp_path / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    base = str(tmp_path)
    assert "not found" in await images.check_image("missing.png", base)
    assert str(tmp_path / "missing.png") in await images.check_image("missing.png", base)
    assert "is not an image" in await images.check_image("text.jpg", base)
    assert "is empty" in await images.check_image("empty.png", base)
    assert "is a directory" in await images.check_image("folder.png", base)
    assert "not a readable image" in await images.check_image("truncated.png", base)


async def test_check_image_data_uris():
    assert "base64 data URI" in await images.check_image("data:image/png,abc")
    assert "does not decode" in await images.check_image("data:image/png;base64,@@@")
    assert "not image" in await images.check_image("data:text/plain;base64,aGVsbG8=")
    assert "is not an image" in await images.check_image("data:image/png;base64," + base64.b64encode(b"nope").decode())


async def test_check_image_does_not_fetch_urls():
    assert await images.check_image("https://unreachable.invalid/j.jpg") is None
    assert await images.check_image("saved:ava") is None


async def test_check_image_on_memory_fs():
    root = f"memory://img-{uuid.uuid4().hex}"
    fsspec.filesystem("memory").pipe_file(f"{root}/a.png", png_bytes())
    assert await images.check_image("a.png", root) is None
    assert "not found" in await images.check_image("b.png", root)


# -- to_api_value ---------------------------------------------------------------------------------

async def test_small_files_are_sent_as_their_original_bytes(tmp_path):
    data = png_bytes()
    (tmp_path / "a.png").write_bytes(data)
    head, body = decode_data_uri(await images.to_api_value("a.png", str(tmp_path)))
    assert head == "data:image/png;base64"
    assert body == data
    jpg = jpeg_bytes()
    (tmp_path / "b.jpeg").write_bytes(jpg)
    head, body = decode_data_uri(await images.to_api_value(str(tmp_path / "b.jpeg")))
    assert head == "data:image/jpeg;base64" and body == jpg


async def test_enormous_images_are_downscaled_to_jpeg_not_rejected(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_bytes(size=(3000, 2400), color="purple"))
    assert await images.check_image("huge.png", str(tmp_path)) is None
    head, body = decode_data_uri(await images.to_api_value("huge.png", str(tmp_path)))
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(body)) as img:
        assert img.format == "JPEG"
        assert img.size == (2000, 1600)  # longest edge 2000, aspect ratio kept


async def test_enormous_transparent_image_becomes_opaque_jpeg(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_bytes(size=(2100, 4200), color=(0, 0, 0, 0), mode="RGBA"))
    head, body = decode_data_uri(await images.to_api_value(str(tmp_path / "huge.png")))
    with Image.open(io.BytesIO(body)) as img:
        assert (head, img.mode, img.size) == ("data:image/jpeg;base64", "RGB", (1000, 2000))
        assert img.getpixel((10, 10)) == pytest.approx((255, 255, 255), abs=3)  # transparent -> white


async def test_exactly_2000px_is_left_alone(tmp_path):
    data = png_bytes(size=(2000, 100))
    (tmp_path / "edge.png").write_bytes(data)
    assert decode_data_uri(await images.to_api_value(str(tmp_path / "edge.png")))[1] == data


async def test_urls_data_uris_and_saved_names_pass_through():
    uri = images.data_uri(png_bytes(size=(3000, 10)), "png")  # data URIs are the caller's choice: as is
    for ref in ("https://cdn.example/j.jpg", "saved:ava", uri):
        assert await images.to_api_value(ref, "/nowhere") == ref


async def test_to_api_value_reads_fsspec_urls():
    root = f"memory://img-{uuid.uuid4().hex}"
    data = jpeg_bytes()
    fsspec.filesystem("memory").pipe_file(f"{root}/j.jpg", data)
    assert decode_data_uri(await images.to_api_value(f"{root}/j.jpg"))[1] == data


def test_describe_never_shows_the_body():
    uri = images.data_uri(png_bytes(), "png")
    described = images.describe(uri)
    assert described.startswith("data:image/png;...sha256=")
    assert uri.split(",", 1)[1][:20] not in described


# -- S3 (moto server) -----------------------------------------------------------------------------

async def test_s3_images_through_the_environment(s3):
    """Only the AWS_* environment (AWS_ENDPOINT_URL included) is needed for s3:// images."""
    data = png_bytes(size=(2500, 500))
    s3.fs().pipe_file(s3.url("garments", "j.png"), data)
    base = s3.url("specs")
    assert await images.check_image("../garments/j.png", base) is None
    assert "not found" in await images.check_image("../garments/nope.png", base)
    assert await images.image_identity(s3.url("garments", "j.png")) == f"sha256:{hashlib.sha256(data).hexdigest()}"
    head, body = decode_data_uri(await images.to_api_value(s3.url("garments", "j.png")))
    with Image.open(io.BytesIO(body)) as img:
        assert (head, img.size) == ("data:image/jpeg;base64", (2000, 400))
