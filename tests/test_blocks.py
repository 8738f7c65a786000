"""The blocks against Prefect's own checks for block types (descriptions, documentation URL, logo,
a code example that loads the block by name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect.testing.standard_test_suites import blocks as standard_suite

from blocks import FashnCredentials, TryonArchive

LOGO = Path(__file__).resolve().parent.parent / "blocks" / "logo.png"


@pytest.mark.parametrize("block_class", [FashnCredentials, TryonArchive])
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block_class, monkeypatch):
        # No network here: the logo is read from the file its URL serves from the repository.
        def urlopen(url):
            assert url == str(block_class._logo_url), url
            return LOGO.open("rb")

        monkeypatch.setattr(standard_suite, "urlopen", urlopen)
        return block_class
