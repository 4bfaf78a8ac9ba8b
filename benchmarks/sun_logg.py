"""Which log g does the real Sun prefer with each line list? benchmarks/results/sun_logg.{md,json}.

    python benchmarks/sun_logg.py --shared ../shared/data

A direct fit of the UVES Sun (issue 20's goal: log g within 0.1 of 4.44 in both windows): T_eff, [Fe/H], v_mic and
v_broad held at the Sun's (5772 K, 0.00, 1.0, 3.5 km/s), PySME at log g 4.14 … 4.74 in steps of 0.1 with each
packaged line list, χ² (equal weights) against UVES on the HR pixels outside the UVES gaps and the bands the forward
model cannot make, per window; the minimum of a parabola through the three lowest points. Log g from a spectrum is
mostly the wings of strong lines (Mg b in the green, Ca I 6162 in the red) and the ionisation balance.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import machine

from spectra.synth.linecal import SUN, UVES_GAPS, observed_on_hr
from spectra.synth.linelists import packaged_linelist
from spectra.synth.synthesis import PySMEEngine, SpectrumMaker, labels_from_values
from spectra.synth.validation import load_text_spectrum
from spectra.wavegrid import hr_grid

RESULTS = Path(__file__).parent / "results"
LOGG = np.round(np.arange(4.14, 4.75, 0.1), 2)
LISTS = ("merged", "survey-sun")


def best_logg(logg: np.ndarray, chi2: np.ndarray) -> float:
    """Vertex of the parabola through the three lowest χ² (the grid edge when the minimum lies on it)."""
    k = int(np.argmin(chi2))
    if k in (0, len(chi2) - 1):
        return float(logg[k])
    a, b, _ = np.polyfit(logg[k - 1:k + 2], chi2[k - 1:k + 2], 2)
    return float(-b / (2 * a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", required=True)
    args = parser.parse_args()
    hr = hr_grid()
    wave, flux = load_text_spectrum(Path(args.shared) / "spectra" / "UVES_Sun-1_cleaned_norm.txt")
    observed, usable = observed_on_hr(wave, flux, hr, gaps=UVES_GAPS)
    teff, _, feh, vmic, vbroad = SUN
    report: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "logg": LOGG.tolist(), "lists": {}}
    for name in LISTS:
        maker = SpectrumMaker(PySMEEngine(linelist=packaged_linelist(name)))
        chi2 = {w: [] for w in hr.window_names}
        for logg in LOGG:
            model, _ = maker.hr_spectrum(labels_from_values(teff, float(logg), feh, vmic, vbroad))
            for w, s in zip(hr.window_names, hr.segments, strict=True):
                chi2[w].append(float(np.mean((model[s] - observed[s])[usable[s]] ** 2)))
        report["lists"][name] = {w: {"chi2": c, "best_logg": best_logg(LOGG, np.array(c))} for w, c in chi2.items()}
        print(name, {w: round(v["best_logg"], 3) for w, v in report["lists"][name].items()}, flush=True)
    (RESULTS / "sun_logg.json").write_text(json.dumps(report, indent=1))
    lines = ["# log g of the real Sun from each line list (issue 20)", "",
             f"Made by `python benchmarks/sun_logg.py --shared ../shared/data` on {report['date']}, "
             f"{report['machine']}. "
             "UVES Sun on the HR pixels (outside its gaps, the O₂ γ band and the Hα core), PySME with T_eff 5772, "
             "[Fe/H] 0, v_mic 1.0, v_broad 3.5 and log g "
             f"{LOGG[0]:g}–{LOGG[-1]:g}; best log g = vertex of the χ² parabola. True: 4.44; goal: within 0.1.", "",
             "| list | green best log g | red best log g |", "|---|---|---|"]
    for name, r in report["lists"].items():
        lines.append(f"| {name} | {r['green']['best_logg']:.2f} | {r['red']['best_logg']:.2f} |")
    (RESULTS / "sun_logg.md").write_text("\n".join(lines) + "\n")
    print(RESULTS / "sun_logg.md")


if __name__ == "__main__":
    main()
