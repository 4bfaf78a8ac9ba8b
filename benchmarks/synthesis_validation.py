"""Validate the synthetic-spectrum pipeline and write benchmarks/results/synthesis_validation.{md,json,png}.

    python benchmarks/synthesis_validation.py --shared ../shared/data [--grid grid.h5] [--speed-n 8]

Measures (all on the 4MOST HR pixel grid, R = 20 000):
1. the Sun (5772 K, 4.44, 0.00, v_mic 1.0, v_broad 3.5) vs the UVES solar spectrum degraded the same way;
2. our pipeline vs the PySME reference syntheses in shared/data/reference (single MARCS models,
   VALD only) degraded the same way: atmosphere handling (incl. spherical) and line-list additions;
3. leave-one-out atmosphere interpolation at 5 grid points;
4. smoothness along [M/H] in the coverage gaps (cool giant, hot dwarf);
5. S/N measured back from noisy spectra at the paper's 19 values;
6. synthesis speed (spectra/s per core, serial, this machine) and, with --grid, the grid's own figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from spectra.forward.degrade import add_noise, gaussian_broaden, measure_snr_per_angstrom, rebin
from spectra.prior import draw_labels
from spectra.stores.gridstore import GridReader
from spectra.stores.survey import PAPER_SNR
from spectra.synth.atmospheres import default_grid
from spectra.synth.synthesis import SpectrumMaker, labels_from_values
from spectra.synth.validation import compare_with_observed, leave_one_out, load_text_spectrum, metallicity_scan
from spectra.wavegrid import vacuum_to_air

RESULTS = Path(__file__).parent / "results"
LOO_POINTS = [(5500, 4.0, 0.0), (6000, 4.5, 0.0), (5250, 2.5, 0.0), (5000, 4.5, -2.0), (4500, 1.5, -2.5)]
REFERENCES = {
    "pysme_t5777_g+4.44_m+0.00.txt.gz": (5777, 4.44, 0.0),
    "pysme_t6500_g+4.00_m+0.00.txt.gz": (6500, 4.0, 0.0),
    "pysme_t5000_g+2.50_m+0.00.txt.gz": (5000, 2.5, 0.0),
    "pysme_t5750_g+3.50_m-2.00.txt.gz": (5750, 3.5, -2.0),
    "pysme_t4750_g+1.50_m-2.50.txt.gz": (4750, 1.5, -2.5),
    "pysme_t4500_g+4.50_m-2.00.txt.gz": (4500, 4.5, -2.0),
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--grid", help="a grid made with `spectra grid` to summarise")
    parser.add_argument("--grid-log", help="the `spectra grid` console output (for its wall time)")
    parser.add_argument("--speed-n", type=int, default=8, help="serial syntheses timed for the speed figure")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    maker = SpectrumMaker()
    report: dict = {"cpu": cpu_model(), "engine": maker.engine.version,
                    "linelist_sha256": maker.engine.linelist.sha256(), "date": time.strftime("%Y-%m-%d")}
    fig, axes = plt.subplots(3, 1, figsize=(12, 10))

    # 1. Sun vs UVES
    wave_obs, flux_obs = load_text_spectrum(shared / "spectra" / "UVES_Sun-1_cleaned_norm.txt")
    sun, syn = maker.hr_spectrum(labels_from_values(5772, 4.44, 0.0, 1.0, 3.5))
    gaps = [(5759, 5828), (6066, 6074)]
    report["sun_vs_uves"] = compare_with_observed(sun, maker.hr, wave_obs, flux_obs, gaps)
    # sensitivity: if UVES is R = 47 000, degrade it by the quadrature difference instead
    r_q = 1.0 / np.sqrt(1 / 20_000**2 - 1 / 47_000**2)
    report["sun_vs_uves_quadrature_R47000"] = compare_with_observed(sun, maker.hr, wave_obs, flux_obs, gaps, r_q)
    report["sun_synthesis_seconds"] = syn.seconds
    sel = (maker.hr.wave > 6140) & (maker.hr.wave < 6175)
    k = (wave_obs > 6139) & (wave_obs < 6176)
    uves_hr = rebin(wave_obs[k], gaussian_broaden(wave_obs[k], flux_obs[k], 20_000, wave_obs[k]),
                    maker.hr.wave[sel], maker.hr.step)
    axes[0].plot(maker.hr.wave[sel], uves_hr, "k", lw=1, label="UVES Sun, R 20 000, HR pixels")
    axes[0].plot(maker.hr.wave[sel], sun[sel], "r", lw=0.8, label="spectra synth (PySME), same degradation")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Sun vs UVES")

    # 2. PySME reference syntheses (vacuum, 0.01 A, no broadening)
    report["vs_pysme_reference"] = {}
    for name, (teff, logg, monh) in REFERENCES.items():
        path = shared / "reference" / name
        if not path.exists():
            continue
        ref_wave, ref_flux = load_text_spectrum(path)
        ours, s = maker.hr_spectrum(labels_from_values(teff, logg, monh, 1.0, 1.0))
        # reference has no rotation; ours has v_broad = 1 km/s (negligible at R 20 000)
        stats = compare_with_observed(ours, maker.hr, vacuum_to_air(ref_wave), ref_flux)
        report["vs_pysme_reference"][name] = {"atmosphere": s.atmosphere_method, **stats}

    # 3. leave-one-out
    loo = leave_one_out(default_grid(), LOO_POINTS)
    report["leave_one_out"] = [r.__dict__ for r in loo]

    # 4. metallicity scans through the gaps
    report["metallicity_scans"] = {}
    fehs = np.arange(-2.5, 0.51, 0.25)
    for teff, logg in [(4500, 2.0), (6800, 4.2)]:
        scan = metallicity_scan(teff, logg, fehs, maker=maker)
        report["metallicity_scans"][f"{teff}/{logg}"] = {
            "feh": scan["feh"].tolist(), "rms_steps": scan["steps"].tolist(), "methods": scan["methods"],
            "max_over_median": scan["max_over_median"]}
        axes[1].plot(0.5 * (fehs[1:] + fehs[:-1]), scan["steps"], "o-", label=f"T_eff {teff}, log g {logg}")
    axes[1].set_xlabel("[M/H] (midpoint of step)")
    axes[1].set_ylabel("rms flux step per 0.25 dex")
    axes[1].axvspan(-2.0, 0.0, color="0.9", label="no MARCS models at these T_eff")
    axes[1].legend(fontsize=8)
    axes[1].set_title("Smoothness along [M/H] through the coverage gaps")

    # 5. S/N measured back
    rng = np.random.default_rng(1)
    report["snr_measured"] = {str(s): measure_snr_per_angstrom(add_noise(sun, s, maker.hr.step, rng), sun,
                                                              maker.hr.step) for s in PAPER_SNR}
    ratios = [report["snr_measured"][str(s)] / s for s in PAPER_SNR]
    axes[2].semilogx(PAPER_SNR, ratios, "o")
    axes[2].axhspan(0.95, 1.05, color="0.9")
    axes[2].set_xlabel("requested S/N per Å")
    axes[2].set_ylabel("measured / requested")
    axes[2].set_title("Noise model (paper Eq. 1, per-Å S/N)")

    # 6. speed (serial, one core)
    labels = draw_labels(args.speed_n, seed=123)
    start = time.perf_counter()
    engine_seconds = []
    for row in labels:
        named = dict(zip(maker_label_names(), row, strict=True))
        _, s = maker.hr_spectrum(named)
        engine_seconds.append(s.seconds)
    wall = time.perf_counter() - start
    report["speed_serial"] = {"n": args.speed_n, "wall_seconds": wall,
                              "spectra_per_second_per_core": args.speed_n / wall,
                              "pysme_share": float(np.sum(engine_seconds) / wall)}
    if args.grid:
        with GridReader(args.grid) as grid:
            done = grid.done
            report["grid"] = {"path": str(args.grid), "rows": int(grid.n), "done": int(done.sum()),
                              "atmosphere_methods": {str(k): v for k, v in
                                                     Counter(grid.atmosphere_method[done]).items()},
                              "median_synthesis_seconds": float(np.nanmedian(grid.synthesis_seconds[done]))}
        if args.grid_log:
            report["grid"]["console"] = Path(args.grid_log).read_text().strip().splitlines()[-1][-300:]

    fig.tight_layout()
    fig.savefig(out / "synthesis_validation.png", dpi=110)
    (out / "synthesis_validation.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "synthesis_validation.md").write_text(render(report))
    print((out / "synthesis_validation.md").read_text())


def maker_label_names() -> list[str]:
    from spectra import schema

    return schema.label_names()


def render(r: dict) -> str:
    lines = [
        "# Synthetic spectra: validation report",
        "",
        f"Made by `python benchmarks/synthesis_validation.py --grid GRID --grid-log LOG` on {r['date']}, "
        f"CPU: {r['cpu']}; engine {r['engine']}; merged line list sha256 `{r['linelist_sha256'][:16]}…`.",
        "",
        "## 1. The Sun vs the UVES solar spectrum (both at R = 20 000 on the 4MOST HR pixels)",
        "",
        "| window | pixels | range [Å] | rms | mean (synth − obs) | rms if UVES had R = 47 000 |",
        "|---|---|---|---|---|---|",
    ]
    for w, s in r["sun_vs_uves"].items():
        q = r["sun_vs_uves_quadrature_R47000"][w]
        lines.append(f"| {w} | {s['pixels']} | {s['from']:.0f}–{s['to']:.0f} | {100 * s['rms']:.2f} % "
                     f"| {100 * s['mean']:+.2f} % | {100 * q['rms']:.2f} % |")
    lines += ["", "Requirement ≤ 2.5 % per window. Same degradation on both sides: Gaussian LSF R = 20 000 and "
              "flux-conserving rebinning (UVES treated as of much higher resolution; the last column shows the "
              "quadrature variant for R_UVES = 47 000). The residuals concentrate in the Mg b wings and H α.",
              "", "## 2. Our pipeline vs the PySME reference syntheses (`shared/data/reference`)", "",
              "Reference: single MARCS models + VALD list; ours: interpolated atmosphere + merged list (+Li, Eu, "
              "C2, CN, MgH), v_broad 1 km/s. Both degraded identically.", "",
              "| reference | atmosphere | green rms | red rms |", "|---|---|---|---|"]
    for name, s in r["vs_pysme_reference"].items():
        green, red = 100 * s["green"]["rms"], 100 * s["red"]["rms"]
        lines.append(f"| {name} | {s['atmosphere']} | {green:.3f} % | {red:.3f} % |")
    lines += ["", "## 3. Leave-one-out atmosphere interpolation", "",
              "The whole T_eff column of the model is removed from its metallicity slice, so interpolation spans "
              "twice the grid step; spectra at R = 20 000, v_broad 2 km/s. Requirement ≤ 1 % rms.", "",
              "| T_eff | log g | [M/H] | geometry | rms | max abs |", "|---|---|---|---|---|---|"]
    for x in r["leave_one_out"]:
        lines.append(f"| {x['teff']} | {x['logg']} | {x['monh']} | {x['geometry']} | {100 * x['rms']:.3f} % "
                     f"| {100 * x['max_abs']:.2f} % |")
    lines += ["", "## 4. Smoothness along [M/H] through the coverage gaps", "",
              "HR spectra every 0.25 dex from −2.5 to +0.5; rms flux change per step. Requirement: no step larger "
              "than 3× the median step.", "", "| T_eff / log g | max/median step | methods used |", "|---|---|---|"]
    for key, s in r["metallicity_scans"].items():
        lines.append(f"| {key} | {s['max_over_median']:.2f} | {', '.join(sorted(set(s['methods'])))} |")
    lines += ["", "## 5. Noise: S/N per Å measured back", "", "| requested | measured | ratio |", "|---|---|---|"]
    for s, m in r["snr_measured"].items():
        lines.append(f"| {s} | {m:.1f} | {m / float(s):.3f} |")
    sp = r["speed_serial"]
    lines += ["", "## 6. Speed", "",
              f"Serial, one core, {sp['n']} prior draws including post-processing: "
              f"**{sp['spectra_per_second_per_core']:.3f} spectra/s per core** "
              f"({sp['wall_seconds'] / sp['n']:.2f} s per spectrum, {100 * sp['pysme_share']:.0f} % in PySME)."]
    if "grid" in r:
        g = r["grid"]
        lines += ["", f"Grid `{g['path']}`: {g['done']} / {g['rows']} rows, median PySME time "
                  f"{g['median_synthesis_seconds']:.2f} s per spectrum; atmosphere methods {g['atmosphere_methods']}."]
        if "console" in g:
            lines += ["", f"`spectra grid` reported: `{g['console']}`"]
    lines += ["", "![validation plots](synthesis_validation.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
