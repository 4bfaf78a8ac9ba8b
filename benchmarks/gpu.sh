#!/usr/bin/env bash
# One-command GPU benchmark: bash benchmarks/gpu.sh OUT_DIR [--bundle B --run R] [other benchmarks/gpu.py options]
#
# For a GPU machine without network access that has Python 3.12, torch and CUDA but no onnxruntime-gpu, dask,
# zarr or FrEIA (the lent machine: ../shared/docs/deployment-notes.md). Everything it installs comes from wheels
# brought along in .whl/ (made on a machine with network by `bash benchmarks/gpu-wheels.sh`):
#   .whl/*.whl                the small wheels (zarr, numcodecs, dask, distributed and their needs, FrEIA, ...)
#   .whl/ort-gpu/part-*       onnxruntime-gpu split into parts small enough to travel (<= 55 MB each); parts sent
#                             in earlier calls may wait in /tmp/ort-gpu-parts on that machine (GPU_PARTS=...)
# It installs them into /tmp/site (never into the system Python), puts the project on PYTHONPATH, checks that
# ONNX Runtime offers the CUDA provider (if it cannot, the report still carries the PyTorch figures, labelled),
# runs benchmarks/gpu.py and leaves gpu.md, gpu.json and gpu.log in OUT_DIR.
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [benchmarks/gpu.py options]}
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=${WHEELS:-$ROOT/.whl}
PARTS=${GPU_PARTS:-/tmp/ort-gpu-parts}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$SITE" "$PARTS"
exec > >(tee "$OUT/gpu.log") 2>&1
echo "gpu.sh: $(date -u +%FT%TZ) on $(hostname); $($PY --version)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "gpu.sh: no nvidia-smi"

if [ -d "$WHEELS/ort-gpu" ]; then cp -n "$WHEELS"/ort-gpu/part-* "$PARTS"/ 2>/dev/null || true; fi
shopt -s nullglob
parts=("$PARTS"/part-*)
if [ ${#parts[@]} -gt 0 ]; then
    name=$(cat "$WHEELS/ort-gpu/NAME" 2>/dev/null || cat "$PARTS/NAME")
    cat "${parts[@]}" > "/tmp/$name"
    if [ -f "$WHEELS/ort-gpu/SHA256" ]; then (cd /tmp && sha256sum -c "$WHEELS/ort-gpu/SHA256"); fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "/tmp/$name"
    echo "gpu.sh: onnxruntime-gpu installed from ${#parts[@]} parts"
else
    echo "gpu.sh: no onnxruntime-gpu parts found: ONNX Runtime GPU providers will be missing"
fi
small=("$WHEELS"/*.whl)
if [ ${#small[@]} -gt 0 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${small[@]}"
fi
# the machine's own onnxruntime (CPU build) shares the module name: ours in /tmp/site must come first
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
$PY - <<'PY'
import onnxruntime as ort
print("gpu.sh: onnxruntime", ort.__version__, "from", ort.__file__, "providers", ort.get_available_providers())
PY
$PY "$ROOT/benchmarks/gpu.py" --out "$OUT" "$@"
