"""Prefect blocks of tryon-flows: register them with ``prefect block register -m blocks``."""

from blocks.archive import TryonArchive
from blocks.credentials import FashnCredentials

__all__ = ["FashnCredentials", "TryonArchive"]
