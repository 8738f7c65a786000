#!/usr/bin/env bash
# The main job end to end on embedded defaults: local FASHN emulator, embedded Prefect
# server, local ./archive. Extra arguments go to `tryon demo` (see `tryon demo --help`).
source "$(dirname "$0")/_env.sh" --no-dev --inexact
exec uv run --locked --no-dev --quiet tryon demo "$@"
