# Sourced by scripts/test.sh: the gallery test looks at the page in a real headless browser.
# Debian's chromium is not on a fresh machine; install it when we can (root + apt-get).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the gallery browser test" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
      || echo "warning: could not install chromium; the gallery browser test will report it" >&2
  else
    echo "warning: chromium is not installed and cannot be installed here (needs root and apt-get)" >&2
  fi
fi
