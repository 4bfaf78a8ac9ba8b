#!/usr/bin/env bash
# Quick start 2: run the tests in a fresh virtual environment. Tests read ../shared/data when present.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-venv.sh .venv-test "synth,train,cpu,fp16,openvino,test"
source .venv-test/bin/activate
ruff check .
mypy  # spectra/contracts, spectra/common, the survey reader and runtime/ ([tool.mypy] in pyproject.toml)
python -m pytest -q "$@"
