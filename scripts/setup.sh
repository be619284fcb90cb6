#!/usr/bin/env bash
# Create .venv and install spatialt2i into it (idempotent; fast when nothing changed).
# torch==2.13.0 is installed first when the venv has no torch: a plain "torch" would pull a
# multi-GB CUDA build here; GPU users keep whatever torch>=2.4 they have. Never torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "torch==2.13.0"
fi
stamp=.venv/.spatialt2i-installed
want=$(sha1sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import spatialt2i" 2>/dev/null; then
  pip install -q -e ".[test,bench]"
  echo "$want" > "$stamp"
fi
if python -c "import torchvision" 2>/dev/null; then
  echo "warning: torchvision is installed in .venv; it breaks transformers/diffusers on CPU builds" >&2
fi
