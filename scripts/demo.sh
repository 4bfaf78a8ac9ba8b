#!/usr/bin/env bash
# Quick start 1: the main job on the embedded default, in about a minute after installation (2 CPU cores):
#   the packaged example surveys (held-out synthetic PySME spectra at S/N 20, 50, 250 with their truth, and the
#   UVES/HARPS Sun and HARPS 38 Vir through `spectra ingest`) -> runtime process with the packaged default model
#   (4096 posterior samples per spectrum, the verified precision (fp32 for this model), re-simulation check) -> catalog check + report.
# The training chain (grid -> cINN -> bundle) is scripts/demo-train.sh. Re-running replaces demo-output/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-venv.sh .venv-demo "cpu"
source .venv-demo/bin/activate
out="${DEMO_OUT:-demo-output}"
workers="${DEMO_WORKERS:-2}"
mkdir -p "$out"
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }

step "1/4 example surveys (packaged): synthetic held-out spectra + 3 real spectra"
runtime example-survey --out "$out" --overwrite

step "2/4 runtime process, default model: synthetic held-out spectra ($workers workers)"
runtime process --survey "$out/synthetic.zarr" --out "$out/synthetic_catalog.zarr" --workers "$workers" \
  --overwrite --quiet
catalog check --catalog "$out/synthetic_catalog.zarr" --survey "$out/synthetic.zarr" > "$out/catalog_check.json"
catalog report --catalog "$out/synthetic_catalog.zarr" --truth "$out/synthetic.zarr" --out "$out/report" --overwrite

step "3/4 runtime process, default model: the Sun (UVES, HARPS) and 38 Vir (HARPS)"
runtime process --survey "$out/observed.zarr" --out "$out/observed_catalog.zarr" --overwrite --quiet --snr-cap
catalog export --catalog "$out/observed_catalog.zarr" --format fits --out "$out/observed_catalog.fits" --overwrite

step "4/4 results"
catalog show --catalog "$out/observed_catalog.zarr" --params teff,logg,fe_h,vbroad
echo "(literature: Sun 5772 / 4.44 / 0.00; 38 Vir 6557 / 4.19 / +0.07)"
echo
echo "done in $(( $(date +%s) - start )) s. Outputs:"
echo "  synthetic  $out/synthetic_catalog.zarr; report $out/report/report.md (residuals against the truth)"
echo "  observed   $out/observed_catalog.zarr (FITS copy: $out/observed_catalog.fits)"
