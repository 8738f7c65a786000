"""Shared fixtures live in tests/fixtures/, one module per real component."""

import logging

# moto's S3 server logs every request at INFO: keep test output readable.
logging.getLogger("werkzeug").setLevel(logging.WARNING)

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.s3",
    "tests.fixtures.prefect",
    "tests.fixtures.postgres",
]
