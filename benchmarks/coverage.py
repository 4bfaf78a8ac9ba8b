"""68 % coverage and σ of a bundle on the fixed held-out set over several noise draws, with their standard errors.

    python benchmarks/coverage.py --bundle B --grid test_rot.h5 --draws 8 --snr 20,50,250 --work W \
        --out benchmarks/results/coverage [--precision fp32]

One noise draw of 200 stars gives each coverage a standard error of 0.033, so a perfectly calibrated model has
about one (parameter, S/N) cell in eight outside 0.63-0.73 by chance. Here each draw is ``spectra survey --seed
9+k --continuum pseudo`` of the rotated held-out grid, processed by ``runtime process`` (the product path, the
bundle's interval calibration included), and the draws are pooled: coverage is the mean over stars of each star's
fraction of draws inside, its standard error the spread of that per-star fraction over the stars / sqrt(stars)
(the stars are the independent units, not the draws). σ is the rms of MAP - truth per draw, reported as the mean
over draws and their spread. Where the bundle carries an interval calibration the flow's own coverage is reported
too: the calibration is undone exactly (MAP and median are unchanged by it, ``runtime.intervals``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import machine

HEADLINE = ("teff", "logg", "fe_h", "mg_fe", "ca_fe")
BAND = (0.63, 0.73)


def run_draws(bundle: Path, grid: Path, draws: int, snr: str, work: Path, precision: str) -> list[tuple[Path, Path]]:
    """(survey, catalogue) per draw, made once and reused."""
    work.mkdir(parents=True, exist_ok=True)
    pairs = []
    for k in range(draws):
        survey, catalogue = work / f"survey_{9 + k}.zarr", work / f"catalog_{9 + k}.zarr"
        if not (survey / "zarr.json").exists():
            subprocess.run(["spectra", "survey", "--grid", str(grid), "--snr", snr, "--continuum", "pseudo",
                            "--out", str(survey), "--seed", str(9 + k), "--quiet"], check=True)
        if not (catalogue / "zarr.json").exists():
            subprocess.run(["runtime", "process", "--survey", str(survey), "--bundle", str(bundle), "--out",
                            str(catalogue), "--precision", precision, "--workers", "2", "--quiet"], check=True)
        pairs.append((survey, catalogue))
    return pairs


def measure(bundle: Path, pairs: list[tuple[Path, Path]]) -> dict:
    from export.intervals import labelled_rows
    from runtime.bundle import load_bundle
    from runtime.intervals import side_ratio

    loaded = load_bundle(bundle, check_graphs=False)
    manifest = loaded.manifest
    names = manifest.names
    calibration = manifest.interval_calibration
    inside: dict[str, list] = {"calibrated": [], "flow": []}
    errors, snr = [], None
    for survey, catalogue in pairs:
        truth, estimates, quantiles, snr = labelled_rows(loaded, catalogue, survey)
        snr = np.round(snr, 3)
        inside["calibrated"].append(side_ratio(truth, quantiles) <= 1)
        if calibration is not None:
            inside["flow"].append(side_ratio(truth, calibration.undo(quantiles, snr)) <= 1)
        errors.append(estimates - truth)
    assert snr is not None
    result: dict = {"bundle": str(bundle), "draws": len(pairs), "parameters": names, "machine": machine(),
                    "interval_calibration": calibration is not None, "per_snr": {}}
    if calibration is not None:
        fitted = manifest.raw["interval_calibration"].get("fitted_on", {})
        result["calibration_fitted_on"] = {"rows_per_snr": fitted.get("rows_per_snr"), "surveys": fitted.get("surveys")}
    for value in np.unique(snr):
        rows = snr == value
        cell: dict = {}
        for kind, flags in inside.items():
            if not flags:
                continue
            per_star = np.mean([f[rows] for f in flags], axis=0)  # (stars, D): fraction of draws inside
            cell[f"coverage68_{kind}"] = per_star.mean(axis=0).round(4).tolist()
            cell[f"coverage68_{kind}_se"] = (per_star.std(axis=0) / np.sqrt(rows.sum())).round(4).tolist()
        rms = np.array([np.sqrt(np.nanmean(e[rows] ** 2, axis=0)) for e in errors])  # (draws, D)
        cell["rms_mean"], cell["rms_spread"] = rms.mean(axis=0).tolist(), rms.std(axis=0).tolist()
        cell["stars"] = int(rows.sum())
        if calibration is not None:
            cell["interval_factors"] = calibration.factors(np.array([value]))[0].round(4).tolist()
        result["per_snr"][f"{value:g}"] = cell
    return result


def report(result: dict) -> str:
    names = result["parameters"]
    kinds = ["calibrated", "flow"] if result["interval_calibration"] else ["calibrated"]
    title = {"calibrated": "as reported (with the bundle's interval calibration)" if result["interval_calibration"]
             else "as reported", "flow": "the flow's own intervals (calibration undone)"}
    lines = [f"# Coverage and σ over {result['draws']} noise draws of the fixed held-out set", "",
             f"Bundle `{result['bundle']}`; `benchmarks/coverage.py` (its docstring says how). Machine: "
             f"{result['machine']}.", "",
             f"Fraction of true values inside the 68 % interval ± its standard error (stars as the unit); "
             f"**bold**: outside {BAND[0]}-{BAND[1]}.", ""]
    for kind in kinds:
        lines += [f"## 68 % coverage, {title[kind]}", "", "| S/N | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        outside = 0
        for snr, cell in result["per_snr"].items():
            values, ses = cell[f"coverage68_{kind}"], cell[f"coverage68_{kind}_se"]
            cells = []
            for v, s in zip(values, ses, strict=True):
                off = not BAND[0] <= v <= BAND[1]
                outside += off
                cells.append(f"**{v:.3f}**±{s:.3f}" if off else f"{v:.3f}±{s:.3f}")
            lines.append(f"| {snr} | " + " | ".join(cells) + " |")
        lines += ["", f"{outside} of {len(names) * len(result['per_snr'])} cells outside the band.", ""]
    if result["interval_calibration"]:
        fitted = result.get("calibration_fitted_on") or {}
        lines += ["## The bundle's interval factors at these S/N (`runtime.intervals`)", "",
                  f"Fitted on {sum(fitted.get('rows_per_snr') or [])} rows of {len(fitted.get('surveys') or [])} "
                  "synthetic survey(s) named in the manifest (never these held-out stars).", "",
                  "| S/N | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {snr} | " + " | ".join(f"{v:.3f}" for v in cell["interval_factors"]) + " |"
                  for snr, cell in result["per_snr"].items()]
        lines.append("")
    lines += ["## σ: rms of MAP − truth, mean over draws ± their spread", "",
              "| S/N | " + " | ".join(HEADLINE) + " |", "|---|" + "---|" * len(HEADLINE)]
    for snr, cell in result["per_snr"].items():
        j = [names.index(p) for p in HEADLINE]
        lines.append(f"| {snr} | " + " | ".join(f"{cell['rms_mean'][i]:.3g} ± {cell['rms_spread'][i]:.2g}"
                                                  for i in j) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--grid", required=True, type=Path, help="the rotated held-out grid (spectra rotate-grid)")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--snr", default="20,50,250")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--work", required=True, type=Path, help="folder for the surveys and catalogues (reused)")
    parser.add_argument("--out", required=True, type=Path, help="report folder (coverage.json, coverage.md)")
    args = parser.parse_args(argv)
    pairs = run_draws(args.bundle, args.grid, args.draws, args.snr, args.work, args.precision)
    result = measure(args.bundle, pairs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / "coverage.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
