#!/usr/bin/env bash
# Run the test suite (sets up .venv first). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium for the browser tests (Debian's packages; needs root, as in CI).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium/chromedriver missing; browser tests will be skipped outside CI" >&2
  fi
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider "$@"
