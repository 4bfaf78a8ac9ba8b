"""Pixels without data: what the ingestion's fill (exactly 1.0) does to the model, and what filling them does.

    python benchmarks/no_data_fill.py --shared ../shared/data --survey SURVEY.zarr \
        --out benchmarks/results/no_data_fill.md

``SURVEY.zarr``: a simulated survey of the fixed held-out PySME set with true labels (the build script's
``test_survey.zarr``: ``spectra survey --grid test_rot.h5 --snr 20,50,250 --continuum pseudo --seed 9``). Real
instruments leave pixels without data (HARPS between its two CCDs at 5303-5338 Å; the UVES solar atlas in its
gaps), which ``spectra ingest`` sets to exactly 1.0. The gap patterns are taken from the shared HARPS and UVES
solar spectra as ingested, and cut into every held-out spectrum:

* **no gap**: the spectra as simulated;
* **gap = 1.0**: the gap as ingested, the model's input unchanged (``resim=False``: what ``runtime`` did before
  ``runtime.inference.fill_no_data``);
* **gap filled**: the runtime's default: the gap replaced by the bundle's emulator at the MAP, the posterior
  drawn again (``NO_DATA_PASSES``), the gap left out of ``chi2_resim``.

Then the real HARPS and UVES Suns and HARPS 38 Vir, ingested as ``benchmarks/real_stars.py`` does (S/N capped at
the trained range), with and without the fill. Same seed and source ids throughout, so only the input differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import machine

SHOWN = ("teff", "logg", "fe_h", "mg_fe", "ca_fe")
REAL = (("HARPS Sun (Ganymede)", "fasma_Sun_HARPS.fits", None),
        ("UVES Sun", "UVES_Sun-1_cleaned_norm.txt", 100_000.0),
        ("HARPS 38 Vir", "fasma_38Vir_HARPS_2017.fits", None))


def _prepared(shared: Path, name: str, resolution: float | None):
    from spectra.observed.ingest import IngestOptions, prepare
    from spectra.observed.readers import read_spectra

    return prepare(read_spectra(shared / "spectra" / name)[0], IngestOptions(resolution=resolution, medium="air"))


def _accuracy(table, truth: np.ndarray, names: list[str], snr: np.ndarray, level: float) -> list[str]:
    """Per shown parameter at one S/N: 'rms / 68 % coverage' over the rows with an estimate."""
    rows = snr == level
    cells = []
    for name in SHOWN:
        est, lo, hi = (np.asarray(table[name + s], float)[rows] for s in ("", "_p16", "_p84"))
        true = truth[rows, names.index(name)]
        ok = np.isfinite(est)
        rms = np.sqrt(np.mean((est[ok] - true[ok]) ** 2))
        cover = np.mean((true[ok] >= lo[ok]) & (true[ok] <= hi[ok]))
        cells.append(f"{rms:.0f} / {cover:.2f}" if name == "teff" else f"{rms:.3f} / {cover:.2f}")
    return cells


def main(argv: list[str] | None = None) -> int:
    import zarr

    from runtime.api import load_model
    from spectra.contracts.flags import Flag
    from spectra.contracts.masks import no_data_pixels

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default="../shared/data", type=Path)
    parser.add_argument("--survey", required=True, type=Path, help="simulated survey of the held-out set (truth)")
    parser.add_argument("--bundle", help="model bundle (default: the packaged default model)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    model = load_model(args.bundle)
    real = {label: _prepared(args.shared, file, r) for label, file, r in REAL}
    patterns = {f"{label.split()[0]} gaps": no_data_pixels(real[label].flux[None], model.bundle.input_mask)[0]
                for label in ("HARPS Sun (Ganymede)", "UVES Sun")}
    root = zarr.open_group(str(args.survey), mode="r")
    flux = np.asarray(root["flux"][:], dtype=np.float32)
    snr, ids = np.asarray(root["snr"][:], dtype=float), np.asarray(root["source_id"][:])
    truth_names = list(root["truth"].attrs["names"])
    truth = np.asarray(root["truth"][:], dtype=float)[:, [truth_names.index(n) for n in SHOWN]]
    levels = sorted(set(snr.tolist()))

    lines = ["# Pixels without data: the ingestion's fill against the model's expectation", "",
             f"`python benchmarks/no_data_fill.py --survey {args.survey}` · bundle `{model.bundle.path}` "
             f"({model.engine} {model.precision}) · {machine()}. Held-out PySME spectra ({flux.shape[0]} rows, S/N "
             f"{', '.join(f'{s:g}' for s in levels)}), 4096 samples, seed 0; each cell: rms of MAP − truth / fraction "
             "of true values inside the 68 % interval. Gap patterns as the shared spectra come out of `spectra "
             "ingest` (outside the input mask): "
             + "; ".join(f"{k}: {int(v.sum())} pixels" for k, v in patterns.items()) + ".", ""]
    header = "| input | S/N | " + " | ".join(SHOWN) + " | rows without estimate |"
    lines += [header, "|---|---|" + "---|" * (len(SHOWN) + 1)]
    runs = [("no gap", flux, True)]
    for name, gap in patterns.items():
        holed = np.where(gap[None], np.float32(1.0), flux)
        runs += [(f"{name} = 1.0 (before)", holed, False), (f"{name} filled (now)", holed, True)]
    for label, data, fill in runs:
        table = model.infer(data, snr, ids, resim=fill)
        for level in levels:
            missing = int(np.sum(~np.isfinite(np.asarray(table["teff"], float)[snr == level])))
            lines.append(f"| {label} | {level:g} | " + " | ".join(_accuracy(table, truth, list(SHOWN), snr, level))
                         + f" | {missing} |")
        print(f"{label}: done", flush=True)

    lines += ["", "## Real spectra with gaps (S/N capped at the trained range; literature: Sun 5772 / 4.44 / 0.00, "
              "38 Vir 6557 / 4.19 / 0.07)", "",
              "| spectrum | pixels without data | fill | T_eff | log g | [Fe/H] | [Mg/Fe] | chi2_resim | flags |",
              "|---|---|---|---|---|---|---|---|---|"]
    resim = model._resimulator()
    for label, prepared in real.items():
        holes = no_data_pixels(prepared.flux[None], model.bundle.input_mask)[0]
        for fill in (False, True):
            table = model.infer(prepared, snr_cap=True, resim=fill)
            values = [float(table[n][0]) for n in ("teff", "logg", "fe_h", "mg_fe")]
            if fill:
                chi2 = float(table["chi2_resim"][0])
            else:  # the check as it was: every pixel, the gap's 1.0 included, at the unfilled MAP
                params = np.array([[float(table[n][0]) for n in model.names]])
                snr_used = float(table["snr"][0])
                snr_used = min(snr_used, model.bundle.manifest.snr_range[1])
                chi2 = float(resim.check(prepared.flux[None], np.array([snr_used]), params)[0][0])
            flags = int(table["flags"][0])
            lines.append(f"| {label} | {int(holes.sum())} | {'filled (now)' if fill else '1.0 (before)'} "
                         f"| {values[0]:.0f} | {values[1]:.2f} | {values[2]:+.2f} | {values[3]:+.2f} | {chi2:.1f} "
                         f"| {'NO_DATA_FILLED' if flags & Flag.NO_DATA_FILLED else '-'} |")
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
