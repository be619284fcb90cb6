#!/usr/bin/env bash
# The main job: the end-to-end run on the built-in world (sets up .venv first).
# Extra arguments go to `spatialt2i demo`, e.g. --fast or --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec spatialt2i demo --out out/demo "$@"
