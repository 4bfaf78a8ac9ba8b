"""How much does the continuum normalisation move the inferred parameters? Writes results/normalisation.md.

    python benchmarks/normalisation.py --bundle BUNDLE --grid HELD_OUT_GRID.h5 [--snr 20,50,250]

The network was trained on spectra normalised by their true continuum (from the synthesis); observed
spectra can only be normalised by a fitted pseudo-continuum (``spectra.forward.continuum``). The same held-out
synthetic spectra, with the same noise, are processed twice: true continuum, and divided by the
pseudo-continuum fitted to the noisy spectrum (``spectra survey --continuum pseudo``, what
``spectra ingest`` does to observed spectra). Reported per S/N and parameter: the median and robust
scatter (1.4826 MAD) of MAP(pseudo) − MAP(true), and the residuals against the true labels for both.

``--bundle-pseudo``: a model trained on a pseudo-continuum normalised copy of the training grid
(``spectra normalise-grid``), run on the pseudo-continuum survey: "one normalisation for both sides".
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import zarr
from _common import robust_sigma

from catalog.writers import CatalogueStore
from runtime.pipeline import ProcessOptions, process_survey
from spectra.forward.continuum import ContinuumOptions
from spectra.stores.survey import make_survey, parse_snr

RESULTS = Path(__file__).parent / "results"
SHOWN = ("teff", "logg", "fe_h", "vmic", "vbroad", "mg_fe", "ca_fe", "ti_fe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--grid", required=True, help="held-out grid (not used in training)")
    parser.add_argument("--bundle-pseudo", help="bundle trained on a pseudo-continuum normalised grid")
    parser.add_argument("--snr", default="20,50,250")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--work", default="/tmp/normalisation")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    options = ProcessOptions(samples=args.samples, seed=0)
    cats, truth, snr = {}, None, None
    for kind, continuum in (("true", None), ("pseudo", ContinuumOptions())):
        survey = make_survey(args.grid, parse_snr(args.snr), work / f"{kind}.zarr", seed=5, progress=False,
                             continuum=continuum)
        process_survey(survey, args.bundle, work / f"{kind}_cat.zarr", options, progress=False)
        store = CatalogueStore.open(work / f"{kind}_cat.zarr")
        cats[kind] = {c: store.column(c) for c in store.columns}
        root = zarr.open_group(str(survey), mode="r")
        truth = dict(zip(root["truth"].attrs["names"], root["truth"][:].T, strict=True))
        snr = root["snr"][:]
    if args.bundle_pseudo:
        process_survey(work / "pseudo.zarr", args.bundle_pseudo, work / "both_cat.zarr", options, progress=False)
        store = CatalogueStore.open(work / "both_cat.zarr")
        cats["both"] = {c: store.column(c) for c in store.columns}
    rows = []
    for s in sorted(set(np.round(snr, 3))):
        sel = np.isclose(snr, s)
        for p in SHOWN:
            shift = cats["pseudo"][p][sel] - cats["true"][p][sel]
            res_t = cats["true"][p][sel] - truth[p][sel]
            res_p = cats["pseudo"][p][sel] - truth[p][sel]
            row = {"snr": float(s), "parameter": p, "n": int(sel.sum()),
                   "shift_median": float(np.nanmedian(shift)), "shift_sigma": robust_sigma(shift),
                   "true_bias": float(np.nanmedian(res_t)), "true_sigma": robust_sigma(res_t),
                   "pseudo_bias": float(np.nanmedian(res_p)), "pseudo_sigma": robust_sigma(res_p)}
            if "both" in cats:
                res_b = cats["both"][p][sel] - truth[p][sel]
                row.update(both_bias=float(np.nanmedian(res_b)), both_sigma=robust_sigma(res_b))
            rows.append(row)
    out = Path(args.out)
    (out / "normalisation.json").write_text(json.dumps({"grid": str(Path(args.grid).resolve()),
                                                         "bundle": str(Path(args.bundle).resolve()),
                                                         "continuum": ContinuumOptions().describe(),
                                                         "rows": rows}, indent=1))
    lines = ["# Continuum normalisation: true continuum vs fitted pseudo-continuum", "",
             f"Command: `python benchmarks/normalisation.py --bundle {args.bundle} --grid {args.grid} "
             f"--snr {args.snr}" + (f" --bundle-pseudo {args.bundle_pseudo}" if args.bundle_pseudo else "")
             + f"` ({args.samples} samples; same noise realisation for all).", "",
             f"Pseudo-continuum: {ContinuumOptions().describe()}.", "",
             "Shift = MAP(pseudo) − MAP(true), median and robust σ; residuals = MAP − truth (median / robust σ).",
             "Columns: model trained on true-continuum spectra applied to true-continuum input ('true') and to "
             "pseudo-continuum input ('pseudo')" + (", and a model trained on the pseudo-continuum normalised "
                                                   f"grid (`{args.bundle_pseudo}`) applied to pseudo-continuum input "
                                                   "('both pseudo')" if args.bundle_pseudo else "") + ".",
             "", "| S/N | parameter | n | shift median | shift σ | residual, true | residual, pseudo |"
             + (" residual, both pseudo |" if args.bundle_pseudo else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if args.bundle_pseudo else "")]
    for r in rows:
        f = (lambda v: f"{v:+.0f}") if r["parameter"] == "teff" else (lambda v: f"{v:+.3f}")
        g = (lambda v: f"{v:.0f}") if r["parameter"] == "teff" else (lambda v: f"{v:.3f}")
        lines.append(f"| {r['snr']:g} | {r['parameter']} | {r['n']} | {f(r['shift_median'])} | {g(r['shift_sigma'])} | "
                     f"{f(r['true_bias'])} / {g(r['true_sigma'])} | {f(r['pseudo_bias'])} / {g(r['pseudo_sigma'])} |"
                     + (f" {f(r['both_bias'])} / {g(r['both_sigma'])} |" if "both_bias" in r else ""))
    (out / "normalisation.md").write_text("\n".join(lines) + "\n")
    print(out / "normalisation.md")


if __name__ == "__main__":
    main()
