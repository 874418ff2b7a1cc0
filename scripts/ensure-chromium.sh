#!/usr/bin/env bash
# Installs Debian's chromium for the console's browser tests (make test-web)
# when /usr/bin/chromium is missing. Playwright's own browser download is not
# available here, so the tests drive this one through playwright-core.
set -euo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ensure-chromium: $CHROMIUM is missing and this is not root; install Debian's chromium package" >&2
    exit 1
  fi
fi
echo "ensure-chromium: installing chromium (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
"$CHROMIUM" --version
