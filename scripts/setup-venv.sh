#!/usr/bin/env bash
# Create (if missing) a virtual environment at $1 and install this project with the extras in $2.
# Used by both quick-start commands so that each sets up its own environment from scratch.
set -euo pipefail
venv="$1"; extras="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
# torch==2.13.0 (CPU build) comes with the "train" extra; a bare `torch` would pull GBs of CUDA.
"$venv/bin/python" -m pip install --quiet -e "$root[$extras]"
