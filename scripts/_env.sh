# Sourced by the other scripts: install uv if missing, then the locked environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --user --quiet uv
fi
# Bytecode compiled at install, as pip does: without it every process (the CLI and its embedded
# Prefect server) compiles Prefect from source where .pyc files cannot be written
# (PYTHONDONTWRITEBYTECODE). Here, not in pyproject.toml: there `uv run` would compile it all again
# at every start.
uv sync --locked --quiet --compile-bytecode "$@"
