"""The two solar spectra against each other: what the HARPS Sun (Ganymede) has that the UVES Sun has not.

    python benchmarks/solar_pair.py --shared ../shared/data --out benchmarks/results/solar_pair.md [--bundle B]

Both are the Sun, so whatever separates them after ingestion is the data (instrument, reflecting body, reduction)
or our ingestion, never the star; the model's answers for the two differ by that much for reasons no forward model
can fix. Both files are ingested as ``benchmarks/real_stars.py`` does (the UVES one at several assumed input
resolutions, since its file does not state one), and per window the HARPS flux is regressed on the UVES flux:
``HARPS = a + b UVES + k d²UVES/dpixel²``. b < 1 means shallower lines at the same continuum (veiling: extra light
without lines), k > 0 broader ones (a resolution mismatch: k ≈ half the extra Gaussian variance in pixel²). Then
the bundle's MAP, chi2_resim and 68 % intervals for each ingested spectrum, with the S/N capped at the trained
range as for the survey.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import machine

WINDOWS = {"green": (5160.0, 5730.0), "red": (6100.0, 6790.0)}
TELLURIC = (6270.0, 6330.0)  # the O2 band, in the HARPS spectrum only
SHOWN = ("teff", "logg", "fe_h", "vmic", "vbroad", "mg_fe")
UVES_RESOLUTIONS = (47_000.0, 70_000.0, 100_000.0)  # real_stars.py: 47 000 until session 19, now 100 000


def regress(harps: np.ndarray, uves: np.ndarray, wave: np.ndarray) -> dict[str, dict[str, float]]:
    """Per window: a, b (and the residual rms) of HARPS = a + b UVES, then k of the fit with the curvature term."""
    curvature = np.gradient(np.gradient(uves))
    usable = (harps != 1) & (uves != 1) & ~((wave > TELLURIC[0]) & (wave < TELLURIC[1]))  # 1 = no data
    out = {}
    for name, (lo, hi) in WINDOWS.items():
        m = usable & (wave >= lo) & (wave < hi)
        plain = np.stack([np.ones(m.sum()), uves[m]], axis=1)
        (a, b), *_ = np.linalg.lstsq(plain, harps[m], rcond=None)
        full = np.column_stack([plain, curvature[m]])
        coef, *_ = np.linalg.lstsq(full, harps[m], rcond=None)
        out[name] = {"a": float(a), "b": float(b), "rms_difference": float(np.std(harps[m] - uves[m])),
                     "rms_after_a_b": float(np.std(harps[m] - plain @ np.array([a, b]))), "b_with_k": float(coef[1]),
                     "k": float(coef[2]), "rms_after_a_b_k": float(np.std(harps[m] - full @ coef))}
    return out


def _estimate(table, name: str) -> str:
    """'MAP [p16, p84]' of the first row, T_eff in whole K, the rest to 0.01."""
    digits = 0 if name == "teff" else 2
    values = [float(table[name + suffix][0]) for suffix in ("", "_p16", "_p84")]
    return f"{values[0]:.{digits}f} [{values[1]:.{digits}f}, {values[2]:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default="../shared/data", type=Path)
    parser.add_argument("--bundle", help="model bundle (default: the packaged default model)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    from runtime.api import load_model
    from spectra.observed.ingest import IngestOptions, prepare
    from spectra.observed.readers import read_spectra
    from spectra.wavegrid import hr_grid

    spectra = args.shared / "spectra"
    model = load_model(args.bundle, precision="fp32", device="cpu")
    wave = hr_grid().wave
    harps = prepare(read_spectra(spectra / "fasma_Sun_HARPS.fits")[0], IngestOptions(medium="air"))
    uves_raw = read_spectra(spectra / "UVES_Sun-1_cleaned_norm.txt")[0]
    rows = [("HARPS Sun (Ganymede), R 115 000 (instrument table)", harps)]
    rows += [(f"UVES Sun, R {r:.0f}",
              prepare(uves_raw, IngestOptions(resolution=r, medium="air"))) for r in UVES_RESOLUTIONS]
    lines = ["# The HARPS Sun against the UVES Sun (issue 20)", "",
             f"`python benchmarks/solar_pair.py` (its docstring says what is fitted); bundle `{model.bundle.path}`; "
             f"machine {machine()}.", "",
             "## HARPS = a + b · UVES (+ k · d²UVES/dpixel²), both ingested like any input", "",
             "| UVES assumed R | window | rms HARPS − UVES | a | b | rms after a, b | b with k | k [px²] "
             "| rms after a, b, k |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (name, prepared) in rows[1:]:
        fit = regress(harps.flux.astype(float), prepared.flux.astype(float), wave)
        for window, f in fit.items():
            lines.append(f"| {name.split('R ')[1]} | {window} | {100 * f['rms_difference']:.2f} % "
                         f"| {f['a']:+.4f} | {f['b']:.4f} | {100 * f['rms_after_a_b']:.2f} % | {f['b_with_k']:.4f} "
                         f"| {f['k']:+.3f} | {100 * f['rms_after_a_b_k']:.2f} % |")
    lines += ["", "## The model on each (MAP [p16, p84]; S/N capped at the trained range)", "",
              "| spectrum | S/N | " + " | ".join(SHOWN) + " | chi2_resim | continuum |",
              "|---|---|" + "---|" * (len(SHOWN) + 2)]
    for name, prepared in rows:  # one source id for all: the same latent draws, so only the spectra differ
        table = model.infer(prepared.flux[None], [prepared.snr], [0], snr_cap=True)
        cells = [_estimate(table, p) for p in SHOWN]
        lines.append(f"| {name} | {prepared.snr:.0f} | " + " | ".join(cells)
                     + f" | {float(table['chi2_resim'][0]):.1f} | {prepared.continuum_method} |")
    lines += ["", "Literature: 5772 K / 4.44 / 0.00.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
