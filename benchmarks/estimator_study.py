"""Accuracy against the information limit, through the product path: a bundle on a synthetic survey with truth.

    python benchmarks/estimator_study.py measure --bundle B --survey S.zarr --bound bound.json --label NAME \
        --out results/NAME.json [--precision int8] [--samples 4096]
    python benchmarks/estimator_study.py table results/*.json --out benchmarks/results/estimator_study.md

``measure`` runs ``runtime process`` (the catalogue is kept next to the JSON and reused) and reports per S/N and
parameter: bias and σ of MAP − truth, rms, σ / Cramér–Rao bound (the bound's rms over the same kind of stars,
``benchmarks/information_limit.py``), the fraction of true values inside the 68 % interval and the median 68 %
half-width, and the median star's σ / its own bound: median(|MAP − truth| / bound of that star) / 0.6745 (1 for
an estimator at the bound star by star; from ``per_star.json`` beside the bound), because the rms over 200 stars is
set by a few extremely metal-poor ones whose bounds and errors are 10x the median. ``table`` puts several such
files side by side (a row per configuration and S/N), with the paper's S/N 250 figures for reference.

The surveys: ``spectra survey --grid G --snr 20,50,250 --continuum pseudo`` of the fixed held-out set, either the
PySME spectra (rotated by their own v_broad) or the emulator's spectra at the same labels (``training
emulate-grid --labels-from``): the second has no emulator mismatch, so what remains is the estimator's own loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HEADLINE = ("teff", "logg", "fe_h", "mg_fe", "ca_fe")
# median |x| of a standard normal: median(|MAP - truth| / own bound) / this = 1 for a star-by-star efficient estimator
MEDIAN_ABS_NORMAL = 0.6745
PAPER_250 = {"teff": 33.0, "logg": 0.16, "fe_h": 0.12, "mg_fe": 0.11, "ca_fe": 0.10}
UNITS = {"teff": "K"}


def measure(bundle: str | None, survey: Path, bound_path: Path | None, label: str, out: Path, precision: str,
            samples: int, workers: int) -> dict:
    import zarr

    from catalog.writers import CatalogueStore
    from runtime.packaged import default_bundle
    from runtime.pipeline import ProcessOptions, process_survey

    catalogue = out.with_suffix(".zarr")
    start = time.perf_counter()
    if not (catalogue / "zarr.json").exists():
        options = ProcessOptions(samples=samples, device="cpu", precision=precision)
        process_survey(survey, bundle or default_bundle(), catalogue, options, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    store = CatalogueStore.open(catalogue)
    root = zarr.open_group(str(survey), mode="r")
    names = list(root["truth"].attrs["names"])
    truth = root["truth"][:]
    if not np.array_equal(root["source_id"][:], store.column("source_id")):
        raise ValueError(f"{catalogue}: rows do not match {survey}")
    snr = np.round(root["snr"][:].astype(float), 3)
    bound = json.loads(bound_path.read_text())["bound"] if bound_path else {}
    star_bound = _star_bounds(bound_path, root["base_index"][:]) if bound_path else None
    params = [p for p in names if p in store.columns and f"{p}_p16" in store.columns]  # MAP column = name
    result = {"label": label, "bundle": str(bundle or "packaged default"), "survey": str(survey),
              "precision": store.attrs.get("precision"), "samples": samples, "rows": int(snr.size),
              "seconds": round(seconds, 1), "per_snr": {}}
    for value in np.unique(snr):
        rows = snr == value
        per = {}
        for p in params:
            t = truth[rows, names.index(p)]
            m = store.column(p)[rows]
            lo, hi = store.column(f"{p}_p16")[rows], store.column(f"{p}_p84")[rows]
            ok = np.isfinite(m)
            r = m[ok] - t[ok]
            rms = float(np.sqrt(np.mean(r**2)))
            b = bound.get(f"{value:g}", {}).get(p, {}).get("rms")
            typical = None
            if star_bound is not None and p in star_bound:
                own = star_bound[p][rows][ok] / value
                typical = float(np.median(np.abs(r) / own) / MEDIAN_ABS_NORMAL)
            per[p] = {"bias": float(np.mean(r)), "sigma": float(np.std(r)), "rms": rms,
                      "sigma_over_bound": rms / b if b else None, "median_star_over_bound": typical,
                      "coverage68": float(np.mean((lo[ok] <= t[ok]) & (t[ok] <= hi[ok]))),
                      "half_width68": float(np.median(0.5 * (hi[ok] - lo[ok]))), "n": int(ok.sum())}
        result["per_snr"][f"{value:g}"] = per
    out.write_text(json.dumps(result, indent=1))
    return result


def _star_bounds(bound_path: Path, base_index: np.ndarray) -> dict[str, np.ndarray] | None:
    """Each survey row's own bound at S/N 1 per parameter, from ``per_star.json`` beside ``bound.json`` (grid rows
    = the survey's ``base_index``), or None where that file or a row is missing."""
    path = bound_path.with_name("per_star.json")
    if not path.exists():
        return None
    per_star = json.loads(path.read_text())
    where = {int(row): k for k, row in enumerate(per_star["rows"])}
    if not all(int(i) in where for i in base_index):
        return None
    at_snr1 = np.asarray(per_star["bound_at_snr1"], dtype=float)[[where[int(i)] for i in base_index]]
    return {p: at_snr1[:, j] for j, p in enumerate(per_star["parameters"])}


def table(paths: list[Path], out: Path) -> str:
    results = [json.loads(p.read_text()) for p in paths]
    lines = ["# Estimator study: σ, σ / Cramér–Rao bound, 68 % coverage and median 68 % half-width", "",
             "Per configuration and S/N: rms of MAP − truth (σ / bound in brackets, the bound's rms over the same "
             "held-out stars), then coverage of the 68 % interval and the median 68 % half-width. Paper at S/N 250: "
             + ", ".join(f"{PAPER_250[p]:g}" for p in HEADLINE) + ".", "",
             "| configuration | S/N | " + " | ".join(HEADLINE) + " | coverage 68 % (min-max over 13) | "
             "median half-width T_eff / log g / [Fe/H] | median star σ / own bound T_eff / log g / [Fe/H] |",
             "|---|---|" + "---|" * (len(HEADLINE) + 3)]
    for r in results:
        for snr, per in sorted(r["per_snr"].items(), key=lambda kv: float(kv[0])):
            cells = []
            for p in HEADLINE:
                q = per.get(p)
                if q is None:
                    cells.append("-")
                    continue
                ratio = f" ({q['sigma_over_bound']:.1f}×)" if q.get("sigma_over_bound") else ""
                cells.append(f"{q['rms']:.3g}{ratio}")
            cov = [q["coverage68"] for q in per.values()]
            widths = " / ".join(f"{per[p]['half_width68']:.3g}" for p in ("teff", "logg", "fe_h"))
            typical = " / ".join(f"{per[p]['median_star_over_bound']:.1f}" if per[p].get("median_star_over_bound")
                                 else "-" for p in ("teff", "logg", "fe_h"))
            lines.append(f"| {r['label']} | {snr} | " + " | ".join(cells)
                         + f" | {min(cov):.2f}-{max(cov):.2f} | {widths} | {typical} |")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure")
    p.add_argument("--bundle", help="model bundle (default: the packaged default model)")
    p.add_argument("--survey", required=True, type=Path)
    p.add_argument("--bound", type=Path, help="bound.json of benchmarks/information_limit.py")
    p.add_argument("--label", required=True)
    p.add_argument("--out", required=True, type=Path, help="JSON to write (the catalogue goes beside it)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--workers", type=int, default=1)
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+", type=Path)
    t.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "measure":
        r = measure(args.bundle, args.survey, args.bound, args.label, args.out, args.precision, args.samples,
                    args.workers)
        for snr, per in r["per_snr"].items():
            print(f"{args.label} S/N {snr}: " + ", ".join(
                f"{p} {per[p]['rms']:.3g}" + (f" ({per[p]['sigma_over_bound']:.1f}x)" if per[p]["sigma_over_bound"]
                                              else "") for p in HEADLINE if p in per))
    else:
        print(table(args.results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
