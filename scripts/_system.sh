# Sourced by scripts/test.sh: the system packages some tests need, a real browser (the gallery,
# the run form) and a real PostgreSQL (the production-shaped test). A fresh machine has neither;
# install them when we can (root + apt-get).
install_missing() {  # PACKAGE WHAT-NEEDS-IT
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's $1 for $2" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "$1" >/dev/null; } \
      || echo "warning: could not install $1; $2 will report it" >&2
  else
    echo "warning: $1 is not installed and cannot be installed here (needs root and apt-get)" >&2
  fi
}
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || install_missing chromium "the browser tests"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || install_missing postgresql "the PostgreSQL end-to-end test"
