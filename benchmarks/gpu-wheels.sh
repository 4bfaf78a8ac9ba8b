#!/usr/bin/env bash
# Fetch what benchmarks/gpu.sh needs on an offline GPU machine (Python 3.12, x86-64) into .whl/, on a machine with
# network: the small wheels, and onnxruntime-gpu (CUDA 13 build, ~255 MB) split into parts of at most 55 MB so
# that each part travels in one call (see ../shared/docs/deployment-notes.md). .whl/ is git-ignored.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.whl}
mkdir -p "$DEST/ort-gpu"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLAT[@]}" -d "$1" "${@:2}"; }
# versions as pinned in pyproject.toml where the project pins them
# the versions of the project's tested environment (pyproject.toml pins and what pip resolved for them)
get "$DEST" zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0 \
    distributed==2026.8.0 cloudpickle==3.1.3 fsspec==2026.9.0 partd==1.4.2 locket==1.0.0 toolz==1.2.0 \
    tornado==6.6.1 tblib==3.2.2 zict==3.0.0 msgpack==1.2.4 psutil==7.2.2 sortedcontainers==2.4.0 tqdm==4.70.1 \
    FrEIA==0.2 h5py==3.16.0 onnxconverter-common==1.16.0 click==8.5.1 PyYAML==6.0.4 urllib3==2.8.0 \
    Jinja2==3.1.6 MarkupSafe==3.0.4 importlib_metadata==10.2.0
tmp=$(mktemp -d)
get "$tmp" onnxruntime-gpu==1.31.1
wheel=$(ls "$tmp"/onnxruntime_gpu-*.whl)
name=$(basename "$wheel")
(cd "$tmp" && sha256sum "$name") > "$DEST/ort-gpu/SHA256"
echo "$name" > "$DEST/ort-gpu/NAME"
split -b 55M -d "$wheel" "$DEST/ort-gpu/part-"
rm -rf "$tmp"
ls -la "$DEST" "$DEST/ort-gpu"
echo "Send the parts in separate calls (each call carries at most 64 MiB): copy each to /tmp/ort-gpu-parts/ on the"
echo "warm GPU machine (with NAME and SHA256), then run: bash benchmarks/gpu.sh \$OUT"
