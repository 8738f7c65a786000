"""Where a flow run's configuration comes from: a block when one is named, else the settings
(``FASHN_*``, ``TRYON_ARCHIVE_URL``, standard ``AWS_*`` for S3). Blocks are imported only when
named, so ``tryon run`` resolves its settings before it imports Prefect."""

from __future__ import annotations

from tryon.archive import Archive
from tryon.settings import ArchiveSettings, FashnSettings


async def resolve_settings(credentials_block: str | None) -> FashnSettings:
    if credentials_block:
        from blocks import FashnCredentials

        block = await FashnCredentials.aload(credentials_block)
        settings = block.settings()
    else:
        settings = FashnSettings()
    settings.require_api_key()  # a clear error now, not a 401 halfway through
    return settings


async def resolve_archive(url: str | None, archive_block: str | None) -> Archive:
    if url:
        return Archive(url)
    if archive_block:
        from blocks import TryonArchive

        return (await TryonArchive.aload(archive_block)).archive()
    return Archive(ArchiveSettings().archive_url)
