"""Where the real Sun's offsets come from: the default model on its emulator's Sun, on PySME's Sun and on the real
Sun (benchmarks/results/sun_chain.{md,json}).

    python benchmarks/sun_chain.py [--bundle runtime/default_bundle] [--draws 32] [--snr 250] [--work W]

The default model puts the UVES Sun at log g 4.59 (`real_stars_default.md`), while a direct PySME χ² fit of the same
spectrum with the same line list prefers 4.43 (`sun_logg.md`). Three steps separate the causes, each one adding a
single difference to the one before:

1. **the emulator's Sun**: the Sun's labels through the bundle's own emulator. This spectrum is exactly what the cINN
   was trained on, so what remains is the estimator's own bias at the Sun (plus its noise);
2. **PySME's Sun**: the same labels synthesised with the model's line list (the training grids' setting: unrotated,
   2 Å margin, survey-sun), which adds the emulator's error at the Sun. Its linearised effect, the floor of
   `benchmarks/information_limit.py` at this one star (F⁻¹ Jᵀ Σ⁻¹ (PySME − emulator)), is reported beside it;
3. **the real Sun** (UVES, from the committed `real_stars_default.json`, used only if it was made with this very
   bundle): adds everything PySME's Sun lacks (line data, NLTE, 3D convection, the instrument, the reduction). That
   row is **one** noise draw (the spectrum degraded to this S/N by `real_stars.py`), so it scatters by about
   √draws × the standard error of step 2.

Each synthetic Sun is rotated at 3.5 km/s, given ``--draws`` independent noise draws at ``--snr`` per Å, pseudo-
continuum normalised after the noise (as observed spectra are) and run through ``runtime process`` at the bundle's
default precision: MAP mean over the draws with its standard error.

Intermediate files go to ``--work``, in a folder named by the settings (draws, S/N, the bundle's hash), each built
under a scratch name and renamed when complete (``spectra.common.scratch.written_atomically``), so a rerun with
other settings, or after an interruption, never reuses what does not belong to it.
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
HEADLINE = ("teff", "logg", "fe_h", "vmic", "mg_fe", "ca_fe")


def _write_repeated(path: Path, draws: int, flux: np.ndarray, labels: np.ndarray, attrs: dict, method: str,
                    seconds: float) -> None:
    """A grid of ``draws`` identical rows (each gets its own noise in a survey), renamed into place when complete."""
    from spectra.stores.gridstore import GridWriter
    from spectra.wavegrid import hr_grid

    with written_atomically(path) as scratch, GridWriter(scratch, draws, hr_grid(2.0), attrs) as writer:
        for i in range(draws):
            writer.write_row(i, flux, labels, method, seconds)


def sun_grids(bundle: Path, work: Path, draws: int) -> dict[str, Path]:
    """Unrotated grids of ``draws`` identical rows of the Sun: PySME's (in ``work``'s parent: it does not depend on
    the bundle) and the bundle's emulator's (in ``work``)."""
    from information_limit import RotatedEmulator

    from spectra import schema
    from spectra.synth.grid import MakerSettings, grid_attrs, synthesize_row
    from spectra.synth.linecal import SUN
    from spectra.synth.synthesis import labels_from_values
    from spectra.wavegrid import hr_grid

    names = schema.label_names()
    named = labels_from_values(*SUN)
    labels = np.array([named[n] for n in names])
    settings = MakerSettings(linelist="survey-sun", margin=2.0)
    grids = {"pysme": work.parent / f"sun_pysme_{draws}.h5", "emulator": work / "sun_emulator.h5"}
    if not grids["pysme"].exists():
        _, flux, method, seconds, error = synthesize_row(0, labels, rotated=False, settings=settings)
        if flux is None:
            raise SystemExit(f"PySME could not synthesise the Sun: {error}")
        attrs = grid_attrs(settings.maker(), None, "the Sun, repeated", rotated=False)
        _write_repeated(grids["pysme"], draws, flux, labels, attrs, method, seconds)
    if not grids["emulator"].exists():
        emulator = RotatedEmulator(bundle, names)
        flux = emulator.unrotated(labels[None])[0]
        if flux.size != hr_grid(2.0).wave.size:
            raise SystemExit(f"{bundle}: its emulator does not output the 2 Å margin grid of the training spectra")
        attrs = {**attrs_of(grids["pysme"]), "engine": "emulator", "engine_version": emulator.description}
        _write_repeated(grids["emulator"], draws, flux.astype(np.float32), labels, attrs, "emulator", 0.0)
    return grids


def attrs_of(grid: Path) -> dict:
    """A grid's scalar attributes (its provenance), to describe another grid made from the same settings."""
    from spectra.stores.gridstore import GridReader

    with GridReader(grid) as reader:
        return {k: v for k, v in reader.attrs.items() if isinstance(v, (str, int, float, bool, np.integer,
                                                                         np.floating, np.bool_))}


def estimates(bundle: Path, grid: Path, snr: float, work: Path) -> dict:
    """MAP mean, its standard error, and the median 68 % half-width over the draws."""
    from export.intervals import labelled_rows
    from runtime.bundle import load_bundle
    from spectra.contracts.quantiles import index

    stem = grid.stem
    rotated, survey, catalogue = work / f"{stem}_rot.h5", work / f"{stem}_survey.zarr", work / f"{stem}_cat.zarr"
    steps = [
        (rotated, ["spectra", "rotate-grid", str(grid), "--out", str(rotated), "--quiet"]),
        (survey, ["spectra", "survey", "--grid", str(rotated), "--snr", f"{snr:g}", "--continuum", "pseudo",
                  "--out", str(survey), "--seed", "1", "--quiet"]),
        (catalogue, ["runtime", "process", "--survey", str(survey), "--bundle", str(bundle), "--out",
                     str(catalogue), "--workers", "1", "--quiet"]),
    ]
    for output, command in steps[:2]:
        if not output.exists():
            with written_atomically(output) as scratch:
                subprocess.run([str(scratch) if arg == str(output) else arg for arg in command], check=True)
    resume = ["--resume"] if catalogue.exists() else []  # the runtime completes an interrupted catalogue
    subprocess.run(steps[2][1] + resume, check=True)
    loaded = load_bundle(bundle, check_graphs=False)
    truth, maps, quantiles, _ = labelled_rows(loaded, catalogue, survey)
    names = loaded.manifest.names
    half = 0.5 * (quantiles[:, index("p84"), :] - quantiles[:, index("p16"), :])
    out = {}
    for k, name in enumerate(names):
        if name not in HEADLINE:
            continue
        values = maps[:, k]
        out[name] = {"truth": float(truth[0, k]), "map_mean": float(np.nanmean(values)),
                     "map_se": float(np.nanstd(values) / np.sqrt(np.isfinite(values).sum())),
                     "half68_median": float(np.nanmedian(half[:, k]))}
    return out


def floor_at_sun(bundle: Path, grid: Path, work: Path) -> dict:
    """The signed linearised shift F⁻¹ Jᵀ Σ⁻¹ (PySME − emulator) at the Sun (information_limit.py, one star)."""
    out = work / "floor"
    if not (out / "bound.json").exists():
        with written_atomically(out) as scratch:
            subprocess.run([sys.executable, str(Path(__file__).parent / "information_limit.py"), "--emulator",
                            str(bundle), "--grid", str(grid), "--stars", "1", "--snr", "250", "--out", str(scratch),
                            "--quiet"], check=True)
    result = json.loads((out / "bound.json").read_text())
    return {name: result["floor"][name]["mean"] for name in HEADLINE if name in result["floor"]}


def real_sun(snr: float, bundle_sha256: str) -> tuple[dict | None, str]:
    """(the UVES Sun's MAP at this S/N in the committed real-star report, or None; why not) — taken only from a
    report made with this very bundle, so that the table never mixes two models."""
    report = json.loads((RESULTS / "real_stars_default.json").read_text())
    made_with = report.get("bundle_sha256")
    if made_with != bundle_sha256:
        return None, ("real_stars_default.json was made with another bundle" if made_with else
                      "real_stars_default.json does not record its bundle's hash (made before it did)")
    key = f"s{snr:g}"
    for star in report["stars"]:
        if star["star"] == "UVES Sun" and key in star:
            return {name: star[key][name]["map"] for name in HEADLINE if name in star[key]}, ""
    return None, f"real_stars_default.json has no UVES Sun row at S/N {snr:g} ({key})"


def render(result: dict) -> str:
    """The markdown table: each step's MAP offset from the Sun's labels (± its standard error where it has one)."""
    fmt = {"teff": "{:+.0f}", "logg": "{:+.3f}", "fe_h": "{:+.3f}", "vmic": "{:+.2f}", "mg_fe": "{:+.3f}",
           "ca_fe": "{:+.3f}"}
    names = [n for n in HEADLINE if n in result["emulator"]]
    head = "| step | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]

    def offsets(label: str, values: dict, se: dict | None = None) -> None:
        cells = []
        for n in names:
            v = values.get(n)
            cell = "" if v is None else fmt[n].format(v - (result["truth"][n]))
            if se is not None and v is not None:
                cell += " ± " + fmt[n].format(se[n]).lstrip("+")
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for key, label in (("emulator", "1. the emulator's Sun → cINN (the estimator's own bias)"),
                       ("pysme", "2. PySME's Sun → cINN (+ the emulator's error)")):
        offsets(label, {n: v["map_mean"] for n, v in result[key].items()},
                {n: v["map_se"] for n, v in result[key].items()})
    lines.append("| 2′. the emulator's error alone, linearised (floor at the Sun) | " + " | ".join(
        fmt[n].format(result["floor"][n]) if n in result["floor"] else "" for n in names) + " |")
    if result.get("real"):
        offsets("3. UVES Sun → cINN (+ PySME vs the real Sun; one noise draw)", result["real"])
    elif result.get("real_missing"):
        lines.append(f"| 3. UVES Sun: not shown ({result['real_missing']}) |" + " |" * len(names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the three steps and write the report (``--out`` .md and .json)."""
    from runtime.bundle import load_bundle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "runtime" / "default_bundle")
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--snr", type=float, default=250.0)
    parser.add_argument("--work", type=Path, required=True, help="folder for the intermediate grids and catalogues")
    parser.add_argument("--out", type=Path, default=RESULTS / "sun_chain")
    args = parser.parse_args(argv)
    sha = load_bundle(args.bundle, check_graphs=False).sha256
    work = args.work / f"draws{args.draws}_snr{args.snr:g}_{sha[:12]}"
    work.mkdir(parents=True, exist_ok=True)
    grids = sun_grids(args.bundle, work, args.draws)
    bundle = args.bundle.resolve()
    shown = str(bundle.relative_to(ROOT)) if bundle.is_relative_to(ROOT) else str(bundle)
    result: dict = {"bundle": shown, "bundle_sha256": sha, "draws": args.draws, "snr": args.snr, "machine": machine()}
    for key, grid in grids.items():
        result[key] = estimates(args.bundle, grid, args.snr, work)
    result["truth"] = {n: v["truth"] for n, v in result["emulator"].items()}
    result["floor"] = floor_at_sun(args.bundle, grids["pysme"], work)
    result["real"], result["real_missing"] = real_sun(args.snr, sha)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    table = render(result)
    print(table)
    args.out.with_suffix(".md").write_text(
        "# The Sun through the default model, one difference at a time (issue 20)\n\n"
        f"Made by `python benchmarks/sun_chain.py --draws {args.draws} --snr {args.snr:g} --work W` · bundle "
        f"`{shown}` (`runtime process`, its default precision) · {result['machine']}. "
        "Offsets from the Sun's labels (5772 K, 4.44, 0.00, v_mic 1.0, "
        f"[X/Fe] 0), MAP mean over {args.draws} noise draws at S/N {args.snr:g} per Å ± its standard error; the real "
        "Sun's row is the committed `real_stars_default.json` of the same bundle: one noise draw of the UVES spectrum "
        "degraded to this S/N, so it scatters by about √draws × the standard errors above.\n\n"
        + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
