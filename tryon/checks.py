"""Automatic checks on one output image, free and local: it decodes, its size is what the model
promises for the request, and it is not blank.

What "the size the model promises" means depends on what the provider documents:

* A model with one fixed output size (``ModelSpec.size_for`` is None: ``tryon-v1.6`` 864×1296,
  ``tryon-v1.5`` 576×864, both in the provider's table) must match it exactly.
* A model whose size depends on its inputs (``tryon-max``, ``product-to-model``) follows the model
  photo's aspect ratio, which the provider does not turn into exact sizes; it states only each
  resolution tier's pixel count (1k ≈ 1 MP, 2k ≈ 4 MP, 4k ≈ 16 MP). So only the tier is checked:
  the pixel count must be within a factor :data:`TIER_FACTOR` of the registry's size for the
  request. Adjacent tiers are 4× apart and 2 is their geometric midpoint, so this tells every tier
  from its neighbours and accepts any aspect ratio within the tier.

An image is blank when every colour channel's standard deviation (over a small thumbnail) is
below :data:`BLANK_STDDEV`: a solid or near-solid fill, as a failed render returns it. A photo of
a person has tens of grey levels of spread; JPEG noise on a flat fill stays under 1.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageStat, UnidentifiedImageError

from tryon.models import model_spec

TIER_FACTOR = 2.0
BLANK_STDDEV = 3.0
_SAMPLE = (64, 64)  # the thumbnail the blank check measures

Check = Literal["decodes", "size", "not_blank"]


@dataclass(frozen=True)
class Problem:
    """One failed check and what was seen."""

    check: Check
    message: str


@dataclass(frozen=True)
class Verdict:
    """The checks' outcome for one output: ``ok`` when no check failed."""

    problems: tuple[Problem, ...] = ()
    size: tuple[int, int] | None = None  # (width, height) px, when the image decoded

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reasons(self) -> list[str]:
        return [p.message for p in self.problems]


@dataclass(frozen=True)
class SizePromise:
    """The size a request's output must have: exactly ``size``, or (``exact`` False) a pixel count
    within a factor :data:`TIER_FACTOR` of ``size``'s."""

    size: tuple[int, int]
    exact: bool

    def problem(self, seen: tuple[int, int]) -> str | None:
        (w, h), (sw, sh) = self.size, seen
        if self.exact:
            return None if seen == self.size else f"size {sw}×{sh}, the model makes {w}×{h}"
        ratio = (sw * sh) / (w * h)
        if 1 / TIER_FACTOR <= ratio <= TIER_FACTOR:
            return None
        return (f"size {sw}×{sh} ({sw * sh / 1e6:.2f} MP), the requested resolution makes about "
                f"{w * h / 1e6:.2f} MP")


def size_promise(model_name: str, inputs: Mapping[str, Any] | None = None) -> SizePromise:
    """What the registry promises for an output of ``model_name`` with ``inputs``."""
    spec = model_spec(model_name)
    return SizePromise(spec.size(inputs), exact=spec.size_for is None)


def check_output(data: bytes, model_name: str, inputs: Mapping[str, Any] | None = None) -> Verdict:
    """Check one output's bytes against the request that made it (see the module's rules)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
            image.thumbnail(_SAMPLE)  # before any conversion: cheap on a 16 MP output
            sample = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return Verdict((Problem("decodes", f"does not decode ({type(exc).__name__}: {exc})"),))
    problems = []
    if (wrong := size_promise(model_name, inputs).problem(size)) is not None:
        problems.append(Problem("size", wrong))
    spread = max(ImageStat.Stat(sample).stddev)
    if spread < BLANK_STDDEV:
        problems.append(Problem("not_blank", f"blank (near-uniform: colour spread {spread:.1f} < {BLANK_STDDEV:g})"))
    return Verdict(tuple(problems), size)


def review_reason(outputs: list[tuple[str, bytes]], model_name: str, inputs: Mapping[str, Any] | None = None) -> str | None:
    """Why an item's outputs (name, bytes) need review, every failed check named by output; None
    when all pass."""
    reasons = [f"{name}: {reason}" for name, data in outputs for reason in check_output(data, model_name, inputs).reasons]
    return "; ".join(reasons) or None
