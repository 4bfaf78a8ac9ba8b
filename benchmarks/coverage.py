"""68 % coverage and σ of a bundle on the fixed held-out set over several noise draws, with their standard errors.

    python benchmarks/coverage.py --bundle B --grid test_rot.h5 --draws 8 --snr 20,50,250 --work W \
        --out benchmarks/results/coverage [--precision fp32] [--bound information_limit/per_star.json]

One noise draw of 200 stars gives each coverage a standard error of 0.033, so a perfectly calibrated model has
about one (parameter, S/N) cell in eight outside 0.63-0.73 by chance. Here each draw is ``spectra survey --seed
9+k --continuum pseudo`` of the rotated held-out grid, processed by ``runtime process`` (the product path, the
bundle's interval calibration included), and the draws are pooled: coverage is the mean over stars of each star's
fraction of draws inside, its standard error the spread of that per-star fraction over the stars / sqrt(stars)
(the stars are the independent units, not the draws). σ is the rms of MAP - truth per draw, reported as the mean
over draws and their spread. Where the bundle carries an interval calibration the flow's own coverage is reported
too: the calibration is undone exactly (MAP and median are unchanged by it, ``runtime.intervals``).

``--bound``: the per-star Cramér–Rao bounds and emulator floors of the same stars (``benchmarks/information_limit.py``)
split σ by [Fe/H] against the limit √(bound² + floor²), and give the σ an estimator would reach if every [Fe/H] bin
above its limit came down to it: at S/N 20 the extremely metal-poor stars, whose spectra hold almost no lines, carry
half the mean square error while already below their bound (the prior's doing), so that figure says how much a
better estimator can still win.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import machine

from spectra.common.scratch import written_atomically

HEADLINE = ("teff", "logg", "fe_h", "mg_fe", "ca_fe")
BAND = (0.63, 0.73)


def run_draws(bundle: Path, grid: Path, draws: int, snr: str, work: Path, precision: str) -> list[tuple[Path, Path]]:
    """(survey, catalogue) per draw, made once and reused."""
    work.mkdir(parents=True, exist_ok=True)
    pairs = []
    for k in range(draws):
        survey, catalogue = work / f"survey_{9 + k}.zarr", work / f"catalog_{9 + k}.zarr"
        if not survey.exists():  # built under a scratch name: an interrupted survey is never taken as made
            with written_atomically(survey) as scratch:
                subprocess.run(["spectra", "survey", "--grid", str(grid), "--snr", snr, "--continuum", "pseudo",
                                "--out", str(scratch), "--seed", str(9 + k), "--quiet"], check=True)
        resume = ["--resume"] if catalogue.exists() else []  # the runtime completes an interrupted catalogue
        subprocess.run(["runtime", "process", "--survey", str(survey), "--bundle", str(bundle), "--out",
                        str(catalogue), "--precision", precision, "--workers", "2", "--quiet", *resume], check=True)
        pairs.append((survey, catalogue))
    return pairs


def measure(bundle: Path, pairs: list[tuple[Path, Path]], bound_per_star: Path | None = None) -> dict:
    from export.intervals import labelled_rows
    from runtime.bundle import load_bundle
    from runtime.intervals import side_ratio
    from spectra.contracts.quantiles import index

    loaded = load_bundle(bundle, check_graphs=False)
    manifest = loaded.manifest
    names = manifest.names
    calibration = manifest.interval_calibration
    inside: dict[str, list] = {"calibrated": [], "flow": []}
    errors, median_errors, snr = [], [], None
    for survey, catalogue in pairs:
        truth, estimates, quantiles, snr = labelled_rows(loaded, catalogue, survey)
        snr = np.round(snr, 3)
        inside["calibrated"].append(side_ratio(truth, quantiles) <= 1)
        if calibration is not None:
            inside["flow"].append(side_ratio(truth, calibration.undo(quantiles, snr)) <= 1)
        errors.append(estimates - truth)
        median_errors.append(quantiles[:, index("p50"), :] - truth)  # the posterior median (unchanged by calibration)
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
        for estimate, draws in (("", errors), ("_median", median_errors)):
            rms = np.array([np.sqrt(np.nanmean(e[rows] ** 2, axis=0)) for e in draws])  # (draws, D)
            cell[f"rms{estimate}_mean"] = rms.mean(axis=0).tolist()
            cell[f"rms{estimate}_spread"] = rms.std(axis=0).tolist()
        cell["stars"] = int(rows.sum())
        if calibration is not None:
            cell["interval_factors"] = calibration.factors(np.array([value]))[0].round(4).tolist()
        result["per_snr"][f"{value:g}"] = cell
    if bound_per_star is not None:  # the same rows (and truth) in every draw
        result["against_bound"] = against_bound(names, truth, np.array(errors), snr, bound_per_star)
    return result


FEH_BINS = ((-5.0, -3.0), (-3.0, -2.0), (-2.0, -1.0), (-1.0, 0.6))


def _per_star_file(per_star: Path) -> dict:
    """information_limit.py's per_star.json, or a one-line exit naming the file and what is missing."""
    try:
        stars = json.loads(per_star.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"{per_star}: cannot read the per-star bounds ({error})") from None
    missing = [k for k in ("parameters", "labels", "bound_at_snr1", "floor") if k not in stars]
    absent = [p for p in (*HEADLINE, "teff", "logg", "fe_h") if p not in stars.get("parameters", [])]
    if missing or absent:
        raise SystemExit(f"{per_star}: not a per_star.json of benchmarks/information_limit.py (missing "
                         f"{', '.join(missing + sorted(set(absent)))})")
    return stars


def _rms(values: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(values))) if values.size else None


def against_bound(names: list[str], truth: np.ndarray, errors: np.ndarray, snr: np.ndarray, per_star: Path) -> dict:
    """σ against the Cramér–Rao bound by [Fe/H], per S/N: where the remaining error sits, and how far an estimator
    at the information limit would take it. ``per_star``: ``benchmarks/information_limit.py``'s per_star.json of the
    same stars (matched on their T_eff, log g, [Fe/H]); ``errors`` (draws, N, D).

    The limit of a star on PySME spectra is its bound ⊕ the emulator floor (a likelihood fit with this emulator
    has rms error √(bound² + floor²); the network inherits the floor too). "σ at the limit" caps each [Fe/H] bin's
    mean square at its stars' mean limit² and leaves bins below it as they are: capped per bin, not per star,
    because a star's mean square over a few draws scatters (χ² with `draws` degrees of freedom), and a per-star
    min() would count that scatter as gain (a star exactly at its bound would read 0.9x it over 8 draws)."""
    stars = _per_star_file(per_star)
    labels = np.asarray(stars["labels"], dtype=float)
    bound1, floor = np.asarray(stars["bound_at_snr1"], dtype=float), np.asarray(stars["floor"], dtype=float)
    key = [stars["parameters"].index(p) for p in ("teff", "logg", "fe_h")]
    mine = [names.index(p) for p in ("teff", "logg", "fe_h")]
    scale = np.array([1000.0, 1.0, 1.0])
    distance = np.abs(truth[:, None, mine] / scale - labels[None, :, key] / scale).max(axis=2)
    star = distance.argmin(axis=1)
    if distance[np.arange(len(star)), star].max() > 1e-3:
        raise SystemExit(f"{per_star}: not the stars of this survey (no star matches a row's T_eff, log g, [Fe/H])")
    out: dict = {"per_star": str(per_star), "bins": [list(b) for b in FEH_BINS], "per_snr": {}}
    feh = labels[star, key[2]]
    for value in np.unique(snr):
        rows = snr == value
        cell: dict = {}
        for p in HEADLINE:
            j, b = names.index(p), stars["parameters"].index(p)
            squares = errors[:, rows, j] ** 2
            drawn = np.isfinite(squares).sum(axis=0)
            seen = drawn > 0  # a row with no finite MAP in any draw is left out (it has no error to place)
            ms = np.where(seen, np.nansum(squares, axis=0) / np.maximum(drawn, 1), np.nan)  # per row, over draws
            bound2 = (bound1[star[rows], b] / value) ** 2
            limit2 = bound2 + floor[star[rows], b] ** 2
            total = ms[seen].sum()
            entry: dict = {"sigma": _rms(ms[seen]), "rms_bound": _rms(bound2), "rms_floor": _rms(limit2 - bound2),
                           "rows_without_map": int((~seen).sum()), "bins": []}
            capped = 0.0
            for lo, hi in FEH_BINS:
                m = (feh[rows] >= lo) & (feh[rows] < hi)
                ms_bin, limit_bin = ms[m & seen], limit2[m & seen]
                capped += min(ms_bin.sum(), limit_bin.sum())
                entry["bins"].append({"stars": int(m.sum()), "sigma": _rms(ms_bin), "rms_bound": _rms(bound2[m]),
                                      "rms_limit": _rms(limit_bin),
                                      "share_of_ms": float(ms_bin.sum() / total) if total > 0 else None})
            entry["sigma_at_limit"] = float(np.sqrt(capped / seen.sum())) if seen.any() else None
            cell[p] = entry
        out["per_snr"][f"{value:g}"] = cell
    return out


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
    j = [names.index(p) for p in HEADLINE]
    for estimate, intro in (("", ["## σ: rms of MAP − truth, mean over draws ± their spread"]),
                            ("_median", ["", "The same with the posterior median (p50) as the point estimate instead "
                                         "of the MAP (at low S/N a broad, skewed posterior's MAP sits at its mode, "
                                         "the median nearer its mass):"])):
        if not all(f"rms{estimate}_mean" in cell for cell in result["per_snr"].values()):
            continue  # a report written before the median was measured
        lines += [*intro, "", "| S/N | " + " | ".join(HEADLINE) + " |", "|---|" + "---|" * len(HEADLINE)]
        lines += [f"| {snr} | " + " | ".join(f"{cell[f'rms{estimate}_mean'][i]:.3g} ± "
                                             f"{cell[f'rms{estimate}_spread'][i]:.2g}" for i in j) + " |"
                  for snr, cell in result["per_snr"].items()]
    if "against_bound" in result:
        bound = result["against_bound"]
        fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        lines += ["", "## σ against the information limit, by [Fe/H]", "",
                  f"Bound per star from `{bound['per_star']}` (this bundle's emulator, S/N 1 scaled by 1/(S/N)); the "
                  "floor is the shift the emulator's error alone causes in a fit (independent of S/N), so on PySME "
                  "spectra a star's limit is √(bound² + floor²). Per [Fe/H] bin: σ / rms bound / rms limit (the bin's "
                  "share of the mean square error, its stars). Last column: σ if every bin above its limit came down "
                  "to it (the others as they are): what a better estimator could still gain on these spectra.",
                  "", "| S/N | parameter | σ | rms bound | rms floor | " + " | ".join(f"[Fe/H] {lo:g}..{hi:g}"
                                                                                  for lo, hi in bound["bins"])
                  + " | σ with every bin at most at its limit |",
                  "|---|---|---|---|---|" + "---|" * (len(bound["bins"]) + 1)]
        for snr, cell in bound["per_snr"].items():
            for p in ("teff", "logg", "fe_h"):
                e = cell[p]
                bins = " | ".join(f"{fmt(b['sigma'])} / {fmt(b['rms_bound'])} / {fmt(b['rms_limit'])} "
                                  f"({100 * (b['share_of_ms'] or 0):.0f} %, {b['stars']})" if b["stars"]
                                  else "no stars" for b in e["bins"])
                lines.append(f"| {snr} | {p} | {fmt(e['sigma'])} | {fmt(e['rms_bound'])} | {fmt(e['rms_floor'])} | "
                             f"{bins} | {fmt(e['sigma_at_limit'])} |")
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
    parser.add_argument("--bound", type=Path, help="information_limit.py's per_star.json of the same stars: adds σ "
                        "against the Cramér–Rao bound by [Fe/H]")
    args = parser.parse_args(argv)
    pairs = run_draws(args.bundle, args.grid, args.draws, args.snr, args.work, args.precision)
    result = measure(args.bundle, pairs, args.bound)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / "coverage.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
