#!/usr/bin/env bash
# Quick start 1: the main job end to end on the embedded default (small; minutes on a laptop CPU).
# Re-running reuses what is already built (the grid resumes; finished rows are not recomputed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-venv.sh .venv-demo "synth,train,cpu,test"
source .venv-demo/bin/activate
out="${DEMO_OUT:-demo-output}"
n="${DEMO_N:-24}"
workers="${DEMO_WORKERS:-2}"
mkdir -p "$out"
start=$(date +%s)
echo "== 1/4 synthetic grid: $n PySME spectra, 4MOST-ified ($workers workers)"
spectra grid --n "$n" --seed 0 --out "$out/grid.h5" --workers "$workers"
echo "== 2/4 noisy survey at the paper's 19 S/N values"
spectra survey --grid "$out/grid.h5" --snr paper --out "$out/survey.zarr" --quiet
echo "== 3/4 one star: the Sun"
[ -f "$out/sun.h5" ] || spectra synth --teff 5772 --logg 4.44 --feh 0 --vmic 1.0 --vbroad 3.5 --out "$out/sun.h5"
echo "== 4/4 plots"
spectra plot --grid "$out/grid.h5" --rows 0 1 2 3 --out "$out/grid_spectra.png"
spectra plot --grid "$out/grid.h5" --rows 0 1 2 3 --zoom 6700-6715 --out "$out/grid_li6707.png"
spectra plot --survey "$out/survey.zarr" --rows 0 12 17 18 --zoom 6140-6170 --out "$out/survey_snr.png"
echo
echo "done in $(( $(date +%s) - start )) s:"
echo "  grid      $out/grid.h5        (spectra info $out/grid.h5)"
echo "  survey    $out/survey.zarr    (runtime input format)"
echo "  the Sun   $out/sun.h5"
echo "  plots     $out/grid_spectra.png $out/grid_li6707.png $out/survey_snr.png"
