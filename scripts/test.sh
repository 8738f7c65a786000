#!/usr/bin/env bash
# The whole test suite over real parts on loopback (emulator, moto S3 server, Prefect).
# Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh" --dev  # explicit: a sourced script would otherwise pass on our pytest arguments
source "$(dirname "$0")/_system.sh"
exec uv run --locked python -m pytest "$@"
