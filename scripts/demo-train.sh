#!/usr/bin/env bash
# The training chain end to end on a small grid (~10 minutes on 2 CPU cores): PySME grid -> train the `small`
# cINN -> export the ONNX bundle with a verified int8 variant (+ verify) -> noisy survey -> runtime process
# -> catalog check + report -> observed-spectra path (4MOST L1-style file -> spectra ingest -> runtime process).
# The quick start (scripts/demo.sh) skips all this and uses the packaged default model; this script shows how a
# model is made. The model that ships is built by scripts/build-default-model.sh.
# Re-running reuses what is already built: the grid and the training resume, finished steps are skipped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-venv.sh .venv-demo "synth,train,cpu,test"
source .venv-demo/bin/activate
out="${DEMO_OUT:-demo-train-output}"
n="${DEMO_N:-96}"
epochs="${DEMO_EPOCHS:-20}"
workers="${DEMO_WORKERS:-2}"
mkdir -p "$out"
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }

step "1/7 synthetic grid: $n PySME spectra, 4MOST-ified ($workers workers)"
spectra grid --n "$n" --seed 0 --out "$out/grid.h5" --workers "$workers"

step "2/7 train the small cINN ($epochs epochs; resumes if interrupted)"
training fit --grid "$out/grid.h5" --config small --epochs "$epochs" --out "$out/run" --device auto

step "3/7 export the model bundle and verify it against PyTorch"
[ -f "$out/bundle/manifest.json" ] || python -m export onnx --run "$out/run" --out "$out/bundle" --precision int8
python -m export verify --bundle "$out/bundle" --run "$out/run" --samples 1024

step "4/7 noisy survey of the grid at S/N 50 and 250 per A"
[ -d "$out/survey.zarr" ] || spectra survey --grid "$out/grid.h5" --snr 50,250 --out "$out/survey.zarr" --chunk 32 --quiet

step "5/7 runtime process (Dask, ONNX Runtime, 4096 posterior samples per spectrum)"
if [ -d "$out/catalog.zarr" ]; then resume="--resume"; else resume=""; fi
runtime process --survey "$out/survey.zarr" --bundle "$out/bundle" --out "$out/catalog.zarr" \
  --workers "$workers" --samples 4096 $resume

step "6/7 catalogue check and report"
catalog check --catalog "$out/catalog.zarr" --survey "$out/survey.zarr" > "$out/catalog_check.json"
catalog report --catalog "$out/catalog.zarr" --truth "$out/survey.zarr" --out "$out/report" --overwrite
catalog export --catalog "$out/catalog.zarr" --format fits --out "$out/catalog.fits" --overwrite
spectra plot --grid "$out/grid.h5" --rows 0 1 2 3 --zoom 6700-6715 --out "$out/report/grid_li6707.png"

step "7/7 observed-spectra path: a 4MOST L1-style file (raw continuum) -> spectra ingest -> runtime process"
spectra example-l1 --grid "$out/grid.h5" --rows 0 1 2 3 --snr 100 --out "$out/example_l1.fits" --overwrite
spectra ingest "$out/example_l1.fits" --out "$out/observed.zarr" --overwrite --quiet
runtime process --survey "$out/observed.zarr" --bundle "$out/bundle" --out "$out/observed_catalog.zarr" --overwrite \
  --quiet

echo
echo "done in $(( $(date +%s) - start )) s. Outputs:"
echo "  catalogue  $out/catalog.zarr  (FITS copy: $out/catalog.fits)"
echo "  report     $out/report/report.md  (Kiel diagram, [Mg/Fe] vs [Fe/H], widths, residuals vs truth)"
echo "  model      $out/bundle/  (trained on $out/grid.h5; loss curves $out/run/loss.png)"
echo "  observed   $out/observed.zarr -> $out/observed_catalog.zarr  (ingested from $out/example_l1.fits)"
