# Sourced by scripts/test.sh: the production-shaped end-to-end test runs Prefect's server on a real
# PostgreSQL. Debian's postgresql is not on a fresh machine; install it when we can (root + apt-get).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's postgresql for the production-shaped end-to-end test" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
      || echo "warning: could not install postgresql; the PostgreSQL end-to-end test will report it" >&2
  else
    echo "warning: postgresql is not installed and cannot be installed here (needs root and apt-get)" >&2
  fi
fi
