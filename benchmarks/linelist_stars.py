"""The line lists on real stars the calibration never saw: benchmarks/results/linelist_stars.{md,json}.

    python benchmarks/linelist_stars.py --shared ../shared/data

The HARPS Sun (sunlight reflected by Ganymede, another instrument and epoch than the UVES Sun the list was calibrated
on) and HARPS 38 Vir (F6 V, 6557 K / 4.19 / +0.07, Borgniet et al. 2019) are prepared exactly as ``spectra ingest``
does (``runtime.prepare``: RV, resolution matched, HR pixels, pseudo-continuum), and compared with PySME syntheses at
their literature parameters made with each packaged line list, normalised by the same pseudo-continuum fit over the
same pixels (or, for a spectrum that arrived normalised and was kept so, on the synthesis' own continuum). v_broad
(rotation + macroturbulence) is not known well enough to fix: each list gets its best v_broad of a scan, so neither
list is favoured. Pixels: outside the O₂ γ band and the chromospheric Hα core (the masks of the calibration). The
UVES Sun (the calibration star itself) is listed for reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import machine

from runtime import prepare, read_spectrum
from spectra.contracts.masks import band_mask
from spectra.forward.continuum import normalise
from spectra.forward.rotation import Rotator
from spectra.synth.linelists import packaged_linelist
from spectra.synth.synthesis import PySMEEngine, SpectrumMaker, labels_from_values
from spectra.wavegrid import hr_grid

RESULTS = Path(__file__).parent / "results"
#: name, file, reader options, (T_eff, log g, [Fe/H], v_mic), reference
STARS = (
    ("UVES Sun (calibration star)", "UVES_Sun-1_cleaned_norm.txt", {"resolution": 47_000.0, "medium": "air"},
     (5772.0, 4.44, 0.0, 1.0), "IAU 2015 B3"),
    ("HARPS Sun (Ganymede)", "fasma_Sun_HARPS.fits", {}, (5772.0, 4.44, 0.0, 1.0), "IAU 2015 B3"),
    ("HARPS 38 Vir", "fasma_38Vir_HARPS_2017.fits", {}, (6557.0, 4.19, 0.07, 1.5),
     "Borgniet+2019 (log g from their M, R); v_mic from the F-dwarf relation"),
)
LISTS = ("merged", "survey-sun")
VBROAD_SCAN = (2.0, 3.5, 5.0, 7.0, 9.0, 12.0, 15.0, 18.0, 22.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", required=True)
    args = parser.parse_args()
    hr = hr_grid()
    rotate = Rotator(hr)
    makers = {name: SpectrumMaker(PySMEEngine(linelist=packaged_linelist(name))) for name in LISTS}
    report: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "stars": []}
    for star, filename, options, (teff, logg, feh, vmic), reference in STARS:
        path = Path(args.shared) / "spectra" / filename
        prepared = prepare(read_spectrum(path), **options)
        cover = np.isfinite(prepared.flux)
        usable = cover & ~band_mask(hr.wave)
        entry = {"star": star, "file": filename, "labels": [teff, logg, feh, vmic], "reference": reference,
                 "rv": prepared.rv, "snr": prepared.snr, "continuum": prepared.continuum_method, "lists": {}}
        for name, maker in makers.items():
            labels = labels_from_values(teff, logg, feh, vmic)
            labels["vbroad"] = 0.0  # unrotated, as the grids store it; each v_broad of the scan applied below
            flux, _ = maker.hr_spectrum(labels)
            best = None
            for vbroad in VBROAD_SCAN:
                model = np.where(cover, rotate(flux[None, :], vbroad)[0], np.nan)
                if prepared.continuum_method != "input already normalised: kept":  # ingestion before session 19
                    model = normalise(hr.wave, model)  # the pseudo-continuum the observation got
                ok = usable & np.isfinite(model)
                resid = model - prepared.flux
                rms = {w: float(np.sqrt(np.mean(resid[s][ok[s]] ** 2))) for w, s in zip(hr.window_names, hr.segments,
                                                                                         strict=True)}
                total = float(np.sqrt(np.mean(resid[ok] ** 2)))
                if best is None or total < best["rms_all"]:
                    best = {"vbroad": vbroad, "rms_all": total, **{f"rms_{w}": v for w, v in rms.items()},
                            "pixels": int(ok.sum())}
            entry["lists"][name] = best
            print(star, name, best, flush=True)
        report["stars"].append(entry)
    (RESULTS / "linelist_stars.json").write_text(json.dumps(report, indent=1))
    lines = ["# The line lists on real stars the calibration never saw (issue 20)", "",
             f"Made by `python benchmarks/linelist_stars.py --shared ../shared/data` on {report['date']}, "
             f"{report['machine']}. Each spectrum prepared as `spectra ingest` does; PySME at the literature "
             "parameters with each packaged line list, the same continuum normalisation over the same pixels, "
             f"the best v_broad of {', '.join(f'{v:g}' for v in VBROAD_SCAN)} km/s per list; rms of synthetic − "
             "observed outside the O₂ γ band and the Hα core.", "",
             "| star | T_eff / log g / [Fe/H] / v_mic | S/N per Å | continuum | list | best v_broad [km/s] | "
             "green rms | red rms |", "|---|---|---|---|---|---|---|---|"]
    for e in report["stars"]:
        for name, b in e["lists"].items():
            labels = " / ".join(f"{v:g}" for v in e["labels"])
            lines.append(f"| {e['star']} | {labels} | {e['snr']:.0f} | {e['continuum']} | {name} | {b['vbroad']:g} | "
                         f"{100 * b['rms_green']:.2f} % | {100 * b['rms_red']:.2f} % |")
    lines += ["", "Literature: " + "; ".join(f"{e['star']}: {e['reference']}" for e in report["stars"]) + "."]
    (RESULTS / "linelist_stars.md").write_text("\n".join(lines) + "\n")
    print(RESULTS / "linelist_stars.md")


if __name__ == "__main__":
    main()
