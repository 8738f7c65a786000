"""The ``TryonArchive`` block: where outputs are archived (any fsspec URL, S3 through s3fs)."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field

from tryon.archive import Archive


class TryonArchive(Block):
    """An archive root for try-on outputs.

    Example:
        Save once, e.g. an S3 bucket (MinIO works through ``client_kwargs.endpoint_url``):
        ``TryonArchive(url="s3://shop-tryon/archive", storage_options={"key": "...", "secret": "..."})
        .save("BLOCK_NAME")``; then load it::

            from blocks import TryonArchive
            block = TryonArchive.load("BLOCK_NAME")
            archive = block.archive()
    """

    _block_type_name = "Try-on Archive"
    _block_type_slug = "tryon-archive"
    _logo_url = "https://raw.githubusercontent.com/tryon-flows/tryon-flows/main/blocks/logo.png"
    _documentation_url = "https://github.com/tryon-flows/tryon-flows/blob/main/docs/operations.md#blocks"
    _description = "fsspec URL and storage options of the archive that receives every try-on output."

    url: str = Field(description="Archive root: s3://bucket/prefix, file:///path, or a local path.")
    storage_options: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        description="fsspec storage options (for s3fs: key, secret, client_kwargs.endpoint_url); kept secret.",
    )

    def options(self) -> dict[str, Any]:
        return self.storage_options.get_secret_value() if self.storage_options else {}

    def archive(self) -> Archive:
        return Archive(self.url, storage_options=self.options())
