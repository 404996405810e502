#!/usr/bin/env bash
# Set up what the tests need: .venv with the test tools, Debian's chromium for the
# browser tests and Debian's postgresql for the store tests. The README's test command runs
# this, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-dev.txt
# Browser tests drive Debian's chromium (Playwright's own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
  echo "Installing Debian's chromium for the browser tests …"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# The PostgreSQL store tests start a throwaway server from Debian's postgresql package
# (tests/postgres.py: initdb into a temporary folder, run as the `postgres` user under root).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "Installing Debian's postgresql for the PostgreSQL store tests …"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
