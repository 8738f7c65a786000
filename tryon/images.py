"""Image references: what a spec's ``image:`` may say, what identifies it, and what the API receives.

Kinds of reference:

* ``http(s)://...``: passed to the API as is (the provider fetches it); identity = the URL.
  Not fetched here, so :func:`check_image` does not check it.
* ``data:image/<fmt>;base64,...``: passed as is; identity = sha256 of the decoded bytes.
* ``saved:<name>``: a model photo saved on the provider (``model_image`` only); passed as is.
* anything else: a local path (relative to the spec's folder) or an fsspec URL (``s3://``,
  ``file://``, ``memory://``, ...). It is read here and sent as a data URI; images over
  :data:`MAX_EDGE` px on their longest edge are downscaled and re-encoded as JPEG quality 95
  (the provider's guidance), others are sent as their original bytes.

The identity of a file is ``sha256:<hex>`` of its bytes, the same as a data URI of the same
bytes, so moving a file never makes an item look new. fsspec's synchronous calls run in
worker threads; storage options come from the environment (s3fs reads the standard
``AWS_*`` variables, ``AWS_ENDPOINT_URL`` included).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import os
import posixpath
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_EDGE = 2000
JPEG_QUALITY = 95
CHUNK = 1 << 20

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DATA_RE = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<body>.*)$", re.DOTALL)
# Formats sent with their own bytes; anything else readable is re-encoded as JPEG.
_SECRET_PARAM = re.compile(r"(sig|signature|token|key|credential|secret|auth|password|session)", re.IGNORECASE)
_PASS_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}

# -- kinds ----------------------------------------------------------------------------------------

def is_http(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def is_data_uri(ref: str) -> bool:
    return ref.startswith("data:")


def is_saved(ref: str) -> bool:
    return ref.startswith("saved:")


def is_passthrough(ref: str) -> bool:
    """Sent to the API as written (URL, data URI, ``saved:<name>``)."""
    return is_http(ref) or is_data_uri(ref) or is_saved(ref)


def has_protocol(ref: str) -> bool:
    return bool(_URL_RE.match(ref))


# -- locations and storage options ----------------------------------------------------------------

def resolve_ref(ref: str, base: str | None = None) -> str:
    """The absolute form of ``ref``: URLs, data URIs and ``saved:`` names as written; a relative
    path joined to ``base`` (a local folder or an fsspec URL of one); a local path made absolute."""
    ref = ref.strip()
    if is_passthrough(ref) or has_protocol(ref):
        return ref
    ref = os.path.expanduser(ref)
    if os.path.isabs(ref):
        return os.path.normpath(ref)
    if base and has_protocol(base):
        protocol, _, path = base.partition("://")
        joined = posixpath.normpath(posixpath.join(path, ref) if path else ref)
        return f"{protocol}://{joined}"
    return os.path.normpath(os.path.join(os.path.abspath(base or "."), ref))


def parent_of(location: str) -> str:
    """The folder of a file location (local path or fsspec URL), for resolving relative refs."""
    if has_protocol(location):
        protocol, _, path = location.partition("://")
        parent = posixpath.dirname(path.rstrip("/"))
        return f"{protocol}://{parent}"
    return os.path.dirname(os.path.abspath(os.path.expanduser(location)))


def open_fs(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a local path or fsspec URL (options from the environment)."""
    return fsspec.core.url_to_fs(location)


# -- data URIs, and what of a reference may be written down --------------------------------------

def parse_data_uri(ref: str) -> tuple[str, bytes]:
    """``(mime type, bytes)`` of a base64 data URI; ``ValueError`` says what is wrong."""
    match = _DATA_RE.match(ref)
    if not match or ";base64" not in match.group("params"):
        raise ValueError("is not a base64 data URI (expected data:image/<fmt>;base64,...)")
    mime = match.group("mime").strip().lower()
    if not mime.startswith("image/"):
        raise ValueError(f"is a data URI of {mime or 'no type'!r}, not image/<fmt>")
    try:
        body = base64.b64decode(match.group("body"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is a data URI whose base64 body does not decode") from None
    return mime, body


def data_uri(data: bytes, fmt: str) -> str:
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


def describe(ref: str) -> str:
    """``ref`` safe to log or archive: a data URI becomes ``data:...sha256=<hex>`` (never its body)."""
    if is_data_uri(ref):
        head = ref.split(",", 1)[0]
        digest = hashlib.sha256(_data_uri_bytes_or_raw(ref)).hexdigest()
        return f"{head.split(';', 1)[0]};...sha256={digest}"
    return ref


def _data_uri_bytes_or_raw(ref: str) -> bytes:
    try:
        return parse_data_uri(ref)[1]
    except ValueError:
        return ref.encode()


def redact_url(url: str) -> str:
    """``url`` with the values of signature-, token- and key-like query parameters redacted."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/:")))


def sanitize_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs safe to archive: no base64 bodies (``data:...sha256=<hex>``), no URL secrets."""
    clean: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, str) and is_data_uri(value):
            value = describe(value)
        elif isinstance(value, str) and is_http(value):
            value = redact_url(value)
        clean[name] = value
    return clean


# -- identity -------------------------------------------------------------------------------------

# (location, size, version) -> identity; the version comes from the file's metadata, so a
# changed file is hashed again. Locations without version metadata are never cached.
_identity_cache: OrderedDict[tuple[str, Any, Any], str] = OrderedDict()
_IDENTITY_CACHE_SIZE = 4096
_VERSION_FIELDS = ("mtime", "LastModified", "last_modified", "ETag", "etag", "created", "generation",
                   "version_id", "VersionId")


def _version_of(info: Mapping[str, Any]) -> tuple[Any, ...] | None:
    version = tuple(str(info[f]) for f in _VERSION_FIELDS if info.get(f) is not None)
    return version or None


def _hash_file(location: str) -> str:
    fs, path = open_fs(location)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(location)
    version = _version_of(info)
    cache_key = (location, info.get("size"), version)
    if version is not None and cache_key in _identity_cache:
        _identity_cache.move_to_end(cache_key)
        return _identity_cache[cache_key]
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    identity = f"sha256:{digest.hexdigest()}"
    if version is not None:
        _identity_cache[cache_key] = identity
        while len(_identity_cache) > _IDENTITY_CACHE_SIZE:
            _identity_cache.popitem(last=False)
    return identity


async def image_identity(ref: str, base: str | None = None) -> str:
    """What identifies the image for the item key: the URL or ``saved:`` name as written, else
    ``sha256:<hex>`` of the bytes (files are hashed streaming, in chunks)."""
    if is_http(ref) or is_saved(ref):
        return ref
    if is_data_uri(ref):
        return f"sha256:{hashlib.sha256(parse_data_uri(ref)[1]).hexdigest()}"
    return await asyncio.to_thread(_hash_file, resolve_ref(ref, base))


# -- checking -------------------------------------------------------------------------------------

def _verify_image(source: Any) -> tuple[str, tuple[int, int]]:
    """Open, verify and decode ``source`` (bytes or a binary file object); ``(format, size)``."""
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        fmt, size = img.format or "", img.size
        img.verify()
    source.seek(0)
    with Image.open(source) as img:
        if img.format in ("JPEG", "MPO"):
            img.draft("RGB", (MAX_EDGE, MAX_EDGE))  # decode at a reduced scale: cheap, still complete
        img.load()
    return fmt, size


def _image_problem(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"is too large to decode safely ({exc})"
    if isinstance(exc, UnidentifiedImageError):
        return "is not an image (Pillow cannot identify it)"
    return f"is not a readable image ({type(exc).__name__}: {exc})"


def _check_file(location: str) -> str | None:
    try:
        fs, path = open_fs(location)
        info = fs.info(path)
    except FileNotFoundError:
        return f"not found: {location}"
    except Exception as exc:  # permissions, credentials, unknown protocol ...
        return f"cannot be read: {location} ({type(exc).__name__}: {exc})"
    if info.get("type") == "directory":
        return f"is a directory, not an image: {location}"
    if not info.get("size"):
        return f"is empty: {location}"
    try:
        handle = fs.open(path, "rb")
    except Exception as exc:
        return f"cannot be read: {location} ({type(exc).__name__}: {exc})"
    try:
        with handle:
            _verify_image(handle)
    except OSError as exc:
        if isinstance(exc, PermissionError):
            return f"cannot be read: {location} ({exc})"
        return f"{_image_problem(exc)}: {location}"
    except Exception as exc:
        return f"{_image_problem(exc)}: {location}"
    return None


async def check_image(ref: str, base: str | None = None) -> str | None:
    """What is wrong with the image, or ``None``: missing, unreadable, empty, not an image.

    http(s) URLs and ``saved:`` names are not fetched (the provider does), so they pass.
    Enormous images pass: they are downscaled when sent.
    """
    if not ref or not ref.strip():
        return "is empty"
    if is_http(ref) or is_saved(ref):
        return None
    if is_data_uri(ref):
        try:
            _, body = parse_data_uri(ref)
        except ValueError as exc:
            return str(exc)
        try:
            await asyncio.to_thread(_verify_image, body)
        except Exception as exc:
            return f"{_image_problem(exc)} (data URI)"
        return None
    return await asyncio.to_thread(_check_file, resolve_ref(ref, base))


# -- what the API receives ------------------------------------------------------------------------

def prepare_image_bytes(data: bytes) -> tuple[bytes, str]:
    """``(bytes, format)`` to send: the original when its longest edge is at most
    :data:`MAX_EDGE` px and its format is JPEG/PNG/WebP; otherwise a JPEG (quality 95) of at
    most :data:`MAX_EDGE` px, with the EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = _PASS_FORMATS.get(img.format or "")
        if fmt is not None and max(img.size) <= MAX_EDGE:
            return data, fmt
        if img.format in ("JPEG", "MPO"):
            img.draft("RGB", (MAX_EDGE, MAX_EDGE))  # decode at 1/2, 1/4 or 1/8 scale when possible
        img.load()
        out = ImageOps.exif_transpose(img)
        if out.mode in ("RGBA", "LA", "PA") or (out.mode == "P" and "transparency" in out.info):
            rgba = out.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            out = flat
        elif out.mode != "RGB":
            out = out.convert("RGB")
        out.thumbnail((MAX_EDGE, MAX_EDGE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue(), "jpeg"


def _read_file(location: str) -> bytes:
    fs, path = open_fs(location)
    return fs.cat_file(path)


async def to_api_value(ref: str, base: str | None = None) -> str:
    """The value to send for an image input: URLs, data URIs and ``saved:`` names as written;
    files as ``data:image/<fmt>;base64,...`` (downscaled to JPEG when over :data:`MAX_EDGE` px)."""
    if is_passthrough(ref):
        return ref
    location = resolve_ref(ref, base)
    data = await asyncio.to_thread(_read_file, location)
    body, fmt = await asyncio.to_thread(prepare_image_bytes, data)
    return data_uri(body, fmt)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)
