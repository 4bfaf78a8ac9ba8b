"""``spectra``: make, import and inspect synthetic 4MOST HR spectra.

Subcommands: ``grid``, ``synth``, ``survey``, ``import-tsfitpy``, ``info``, ``plot``, and the maintenance
commands ``atmospheres pack`` and ``linelist build`` that (re)build the data shipped in the package.
Each subcommand parses its arguments and calls one library function; errors become one clear
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from .common.cliargs import run_command, use_help_formatter
from .contracts.conventions import KNOT_SPACING
from .prior import FOCUS_REGIONS
from .synth.linelists import PACKAGED_LINELISTS
from .wavegrid import GRID_MARGIN

__all__ = ["main"]


def _cmd_grid(args: argparse.Namespace) -> int:
    from .synth.grid import MakerSettings, build_grid

    settings = MakerSettings(linelist=args.linelist, margin=args.margin)
    report = build_grid(args.out, args.n, args.seed, workers=args.workers, progress=not args.quiet,
                        extend=args.extend, rotated=not args.unrotated, settings=settings, focus=args.focus)
    per_core = report.spectra_per_second_per_core
    print(f"{report.path}: {report.n} rows, {report.written} written now, {report.skipped} already done, "
          f"{len(report.failed)} failed; {report.seconds:.1f} s with {report.workers} worker(s)"
          + (f" = {per_core:.3f} spectra/s per core" if report.written else ""))
    for index, error in list(report.failed.items())[:10]:
        print(f"  row {index} failed: {error}", file=sys.stderr)
    if report.failed:
        print("re-run the same command to retry the failed rows", file=sys.stderr)
        return 1
    return 0


def _parse_xfe(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        element, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[element.strip().capitalize()] = float(value)
        except ValueError:
            raise ValueError(f"--xfe {item!r}: expected ELEMENT=VALUE, e.g. Mg=0.2") from None
    return out


def _cmd_synth(args: argparse.Namespace) -> int:
    from . import schema
    from .common.outputs import claim_output
    from .stores.gridstore import GridWriter
    from .synth.atmospheres import AtmosphereGrid
    from .synth.grid import grid_attrs
    from .synth.linelists import linelist_from_option
    from .synth.synthesis import PySMEEngine, SpectrumMaker, labels_from_values

    labels = labels_from_values(args.teff, args.logg, args.feh, args.vmic, args.vbroad, _parse_xfe(args.xfe))
    atmospheres = AtmosphereGrid.from_path(args.atmospheres) if args.atmospheres else None
    linelist = linelist_from_option(args.linelist)
    maker = SpectrumMaker(PySMEEngine(atmospheres, linelist))
    out = claim_output(Path(args.out), "spectrum file", overwrite=args.overwrite)
    flux, synthesis = maker.hr_spectrum(labels)
    with GridWriter(out, 1, maker.hr, grid_attrs(maker, None, "single:spectra synth")) as writer:
        writer.write_row(0, flux, np.array([labels[n] for n in schema.label_names()]),
                         synthesis.atmosphere_method, synthesis.seconds)
    print(f"{out}: 1 spectrum, {flux.size} pixels, atmosphere {synthesis.atmosphere_method}, "
          f"synthesis {synthesis.seconds:.1f} s")
    return 0


def _cmd_survey(args: argparse.Namespace) -> int:
    from .forward.continuum import ContinuumOptions
    from .stores.survey import make_survey, parse_snr

    continuum = ContinuumOptions(knot_spacing=args.knot_spacing) if args.continuum == "pseudo" else None
    out = make_survey(args.grid, parse_snr(args.snr), args.out, seed=args.seed, chunk=args.chunk,
                      progress=not args.quiet, continuum=continuum, overwrite=args.overwrite)
    import zarr

    n = zarr.open_group(str(out), mode="r")["flux"].shape
    print(f"{out}: {n[0]} spectra x {n[1]} pixels")
    return 0


def _cmd_normalise_grid(args: argparse.Namespace) -> int:
    from .forward.continuum import ContinuumOptions
    from .stores.derived import normalise_grid

    out = normalise_grid(args.grid, args.out, ContinuumOptions(knot_spacing=args.knot_spacing),
                         progress=not args.quiet, workers=args.workers)
    print(f"{out}: pseudo-continuum normalised copy of {args.grid}")
    return 0


def _cmd_rotate_grid(args: argparse.Namespace) -> int:
    from .stores.derived import rotate_grid

    out = rotate_grid(args.grid, args.out, copies=args.copies, seed=args.seed, progress=not args.quiet)
    print(f"{out}: {args.copies} rotated cop{'y' if args.copies == 1 else 'ies'} of each spectrum of {args.grid}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from .forward.continuum import ContinuumOptions
    from .observed.ingest import IngestOptions, expand_inputs, ingest, read_options_table

    options = IngestOptions(fmt=args.fmt, wave_unit=args.wave_unit, medium=args.medium, rv=args.rv,
                            resolution=args.resolution, snr=args.snr,
                            continuum=ContinuumOptions(knot_spacing=args.knot_spacing))
    per_file = read_options_table(args.table, options) if args.table else None
    n_files = len(args.files)
    if all(Path(f).exists() for f in args.files):  # else ingest names the missing ones
        files, folders = expand_inputs(args.files)
        n_files = len(files)
        for folder, count in folders.items():
            print(f"spectra ingest: {folder}: {count} spectrum file(s) inside it, in name order", file=sys.stderr)
    try:
        report = ingest(args.files, args.out, options, chunk=args.chunk, first_id=args.first_id,
                        progress=not args.quiet, resume=args.resume, per_file=per_file, overwrite=args.overwrite)
    except Exception as exc:
        for note in getattr(exc, "__notes__", []):  # e.g. how to continue after a failure that kept rows
            print(f"spectra ingest: {note}", file=sys.stderr)
        raise
    flagged = ", ".join(f"{k} {v}" for k, v in report.flag_counts.items() if v) or "none"
    print(f"{report.output}: {report.n_spectra} spectra from {n_files} file(s), {report.n_failed} failed; "
          f"flags: {flagged}")
    _tell_failures(report)
    if report.n_spectra and report.n_failed == report.n_spectra:
        print(f"spectra ingest: error: every spectrum failed (see the `message` array of {report.output})",
              file=sys.stderr)
        return 1
    return 0


def _tell_failures(report) -> None:
    """Each failed spectrum with its reason (the first few; the survey's ``message`` array has them all): a count
    alone sent every user to read the survey with Python to learn that, say, their ASCII files need --resolution."""
    for source, reason in report.failures:
        print(f"  failed: {source}: {reason}", file=sys.stderr)
    more = report.n_failed - len(report.failures)
    if more > 0:
        print(f"  ... and {more} more; see the survey's `message` array ({report.output}/message)", file=sys.stderr)


def _cmd_pack_grid(args: argparse.Namespace) -> int:
    from .stores.gridpack import pack_grid

    paths = pack_grid(args.grid, args.out, args.name, rows_per_shard=args.rows_per_shard)
    size = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{args.out}: {len(paths)} shard(s) {paths[0].name} ... ({size:.1f} MB)")
    return 0


def _cmd_unpack_grid(args: argparse.Namespace) -> int:
    from .stores.gridpack import unpack_grid

    out = unpack_grid(args.shards, args.out)
    print(f"{out}: grid rebuilt from {len(args.shards)} path(s)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .stores.simulated import write_simulated_survey

    out = write_simulated_survey(args.grid, args.n, args.snr, args.out, seed=args.seed, chunk=args.chunk,
                                 overwrite=args.overwrite)
    print(f"{out}: simulated survey of {args.n} spectra from {args.grid} (rows made when read)")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .stores.merge import merge_surveys

    out = merge_surveys(args.surveys, args.out, chunk=args.chunk, overwrite=args.overwrite)
    import zarr

    print(f"{out}: {zarr.open_group(str(out), mode='r')['flux'].shape[0]} spectra from {len(args.surveys)} surveys")
    return 0


def _cmd_example_l1(args: argparse.Namespace) -> int:
    from .common.outputs import claim_output
    from .observed.examples import fourmost_l1_from_grid

    claim_output(args.out, "example file", overwrite=args.overwrite)
    out = fourmost_l1_from_grid(args.grid, args.rows, args.out, snr=args.snr, seed=args.seed)
    print(f"{out}: {len(args.rows)} spectra in 4MOST L1-style layout (S/N {args.snr:g} per A)")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .synth.importers import import_tsfitpy

    vbroad = args.vbroad if args.vbroad == "prior" else float(args.vbroad)
    report = import_tsfitpy(args.folder, args.out, params_file=args.params, medium=args.medium,
                            vbroad=vbroad, seed=args.seed, input_resolution=args.input_resolution,
                            progress=not args.quiet)
    print(f"{args.out}: {report.written} of {report.n} spectra imported, {len(report.skipped)} skipped, "
          f"{report.outside_bounds} with labels outside the training bounds")
    for name, why in list(report.skipped.items())[:10]:
        print(f"  skipped {name}: {why}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(_describe(Path(args.path)), indent=2, default=str))
    return 0


#: what ``spectra info`` reads, for its error message
_INFO_EXPECTS = ("expected a grid file (.h5, `spectra grid`), a survey (.zarr folder from `spectra survey`, `ingest` "
                 "or `merge`) or a simulated survey (.json from `spectra simulate`)")


def _describe(path: Path) -> dict:
    """What ``spectra info`` prints for ``path``: a grid, a Zarr survey or a simulated survey, told apart by content
    (a survey folder used to be opened as a grid file and reported "grid file not found")."""
    from .common.outputs import is_our_store
    from .stores.survey import SURVEY_FORMAT

    if not path.exists():
        raise FileNotFoundError(f"{path} not found; {_INFO_EXPECTS}")
    if path.is_dir():
        if is_our_store(path, (SURVEY_FORMAT,)):
            return _describe_survey(path)
        raise ValueError(f"{path} is a folder but not a survey{_store_kind(path)}; {_INFO_EXPECTS}")
    if path.suffix.lower() == ".json":
        return _describe_simulated(path)
    return _describe_grid(path)


def _store_kind(path: Path) -> str:
    """", a <format> store" for a Zarr store of another kind (a catalogue, say), else ""."""
    try:
        found = json.loads((path / "zarr.json").read_text()).get("attributes", {}).get("format")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" (a {found} store)" if found else ""


def _describe_grid(path: Path) -> dict:
    from collections import Counter

    from .stores.gridstore import GridReader

    with GridReader(path) as grid:
        return {
            "path": str(grid.path),
            "kind": "grid",
            "rows": grid.n,
            "done": int(grid.done.sum()),
            "pixels": int(grid.wavelength.size),
            "labels": grid.label_names,
            "atmosphere_methods": dict(Counter(grid.atmosphere_method[grid.done])),
            "attrs": grid.attrs,
        }


def _describe_survey(path: Path) -> dict:
    """Rows, S/N range, continuum, arrays (and for ingested surveys how far the ingest got and its flag counts)."""
    import zarr

    from .contracts.conventions import continuum_kind

    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    snr = np.asarray(root["snr"][:], dtype=float) if "snr" in root else np.array([])
    finite = snr[np.isfinite(snr)]
    info = {
        "path": str(path),
        "kind": "survey",
        "survey_kind": attrs.get("kind", "synthetic"),
        "rows": int(root["flux"].shape[0]) if "flux" in root else 0,
        "pixels": int(root["wavelength"].shape[0]) if "wavelength" in root else 0,
        "snr": ({"min": float(finite.min()), "median": float(np.median(finite)), "max": float(finite.max()),
                 "not_finite": int(snr.size - finite.size)} if finite.size else {"not_finite": int(snr.size)}),
        "continuum_kind": continuum_kind(attrs),
        "continuum": attrs.get("continuum", ""),
        "arrays": {name: f"{tuple(array.shape)} {_dtype_name(array.dtype)}" for name, array in sorted(root.arrays())},
    }
    if "committed" in attrs:  # an ingested survey: finished, or to be completed with --resume
        info["committed"] = int(attrs["committed"])
        info["finished"] = "n_spectra" in attrs
    if "ingest_flags" in root:
        flags = np.asarray(root["ingest_flags"][:])
        bits = dict(root["ingest_flags"].attrs.get("bits", {}))
        info["ingest_flags"] = {name: int(np.count_nonzero(flags & int(bit))) for name, bit in bits.items()}
    info["attrs"] = attrs
    return info


def _dtype_name(dtype) -> str:
    return "string" if "String" in str(dtype) or str(dtype).startswith("<U") else str(dtype)


def _describe_simulated(path: Path) -> dict:
    from .stores.survey_reader import open_survey

    survey = open_survey(path)  # checks the format: a one-line error for other JSON
    return {"path": str(path), "kind": "simulated survey", "rows": int(survey.n),
            "pixels": int(np.asarray(survey.wavelength).size), "continuum_kind": "true",
            "attrs": dict(survey.attrs)}


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_grid_rows, plot_survey_rows

    zoom = None
    if args.zoom:
        try:
            lo, hi = (float(x) for x in args.zoom.split("-"))
        except ValueError:
            raise ValueError(f"--zoom {args.zoom!r}: expected LOW-HIGH in Angstrom, e.g. 6700-6715") from None
        zoom = (lo, hi)
    if bool(args.grid) == bool(args.survey):
        raise ValueError("give exactly one of --grid or --survey")
    plot = plot_grid_rows if args.grid else plot_survey_rows
    out = plot(args.grid or args.survey, args.rows, args.out, zoom)
    print(f"{out}: {len(args.rows)} spectra")
    return 0


def _cmd_atmospheres_pack(args: argparse.Namespace) -> int:
    from .common.outputs import claim_output
    from .synth.atmospheres import AtmosphereGrid

    out = Path(args.out)
    if out.suffix != ".npz":  # numpy would add the suffix and write a file nobody claimed
        raise ValueError(f"--out {out}: expected a .npz file")
    if not args.overwrite:
        claim_output(out, "atmosphere grid")  # refused before the models are read
    grid = AtmosphereGrid.from_path(args.source)
    claim_output(out, "atmosphere grid", overwrite=args.overwrite)  # an old grid is removed only once a new one is made
    grid.save(out)
    print(f"{out}: {len(grid)} MARCS models packed from {args.source}")
    return 0


def _cmd_linelist_build(args: argparse.Namespace) -> int:
    from .common.outputs import claim_output
    from .common.scratch import written_atomically
    from .synth.linelists import build_merged_linelist

    merged = build_merged_linelist(Path(args.vald), Path(args.fasma), [Path(p) for p in args.linemake])
    claim_output(args.out, "line list", overwrite=args.overwrite)
    with written_atomically(args.out) as tmp, gzip.open(tmp, "wt") as fh:
        fh.write(merged.to_csv_text())
    print(f"{args.out}: {len(merged)} lines, sha256 {merged.sha256()[:16]}..., {merged.species_counts()}")
    return 0


def _cmd_linelist_survey(args: argparse.Namespace) -> int:
    from .common.outputs import claim_output
    from .common.scratch import written_atomically
    from .synth.linelist_survey import build_survey_linelist

    claim_output(args.out, "line list", overwrite=args.overwrite)  # refused before minutes of PySME
    made = build_survey_linelist(args.shared, threshold=args.threshold, log=lambda m: print(m, flush=True))
    with written_atomically(args.out) as tmp, gzip.open(tmp, "wt") as fh:
        fh.write(made.lines.to_csv_text())
    record = Path(str(args.out).removesuffix(".csv.gz") + ".json")
    record.write_text(json.dumps({**made.record, "sha256": made.lines.sha256()}, indent=1))
    print(f"{args.out}: {len(made.lines)} lines, sha256 {made.lines.sha256()[:16]}...; record {record}")
    return 0


def _cmd_linelist_calibrate(args: argparse.Namespace) -> int:
    from .common.outputs import claim_output
    from .common.scratch import written_atomically
    from .synth.linecal import calibrate_linelist, recorded_gf_change
    from .synth.linelists import LineListData, read_linelist

    stages = tuple(s.strip() for s in args.stages.split(","))
    claim_output(args.out, "line list", overwrite=args.overwrite)
    source = read_linelist(args.linelist)
    prior = recorded_gf_change(source.lines, args.prior_changes) if args.prior_changes else None
    result = calibrate_linelist(source.lines, args.solar, iterations=args.iterations, workers=args.workers,
                                log=lambda m: print(m, flush=True), stages=stages, prior_change=prior)
    calibrated = LineListData(result.lines, source=f"{args.linelist} calibrated on {Path(args.solar).name}")
    with written_atomically(args.out) as tmp, gzip.open(tmp, "wt") as fh:
        fh.write(calibrated.to_csv_text())
    stem = str(args.out).removesuffix(".csv.gz")
    result.changes.to_csv(stem + ".changes.csv", index=False, float_format="%.6g")
    Path(stem + ".json").write_text(json.dumps({
        "input": str(args.linelist), "input_sha256": source.sha256(), "solar_spectrum": str(args.solar),
        "stages": list(stages), "prior_changes": args.prior_changes, "sha256": calibrated.sha256(),
        "rms_before": result.rms_before, "rms_after": result.rms_after,
        "history": result.history, "changed_parameters": len(result.changes)}, indent=1))
    print(f"{args.out}: rms {result.rms_before} -> {result.rms_after}; {len(result.changes)} changes in "
          f"{stem}.changes.csv")
    return 0


def _cmd_templates_build(args: argparse.Namespace) -> int:
    from .common.outputs import claim_output
    from .observed.rv import build_templates

    claim_output(args.out, "template file")  # refused before minutes of synthesis
    templates = build_templates(progress=not args.quiet)
    claim_output(args.out, "template file", overwrite=args.overwrite)
    templates.save(args.out)
    print(f"{args.out}: {len(templates.names)} RV templates ({', '.join(templates.names)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectra", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("grid", help="synthesise a grid of noiseless 4MOST HR spectra (resumable)")
    p.add_argument("--n", type=int, required=True, help="number of spectra")
    p.add_argument("--seed", type=int, default=0, help="prior seed (same seed + larger n extends a grid)")
    p.add_argument("--out", required=True, help="output HDF5 file; an existing one with the same settings is resumed")
    p.add_argument("--workers", type=int, default=1, help="Dask worker processes (one core each)")
    p.add_argument("--extend", help="a smaller grid of the same seed whose rows are copied, not recomputed")
    p.add_argument("--unrotated", action="store_true",
                   help="store spectra without rotational broadening (v_broad applied on the fly in training)")
    p.add_argument("--linelist", help="a packaged line list (" + ", ".join(PACKAGED_LINELISTS)
                   + ") or a line-list CSV (default: merged)")
    p.add_argument("--margin", type=float, default=0.0,
                   help=f"Å of spectrum kept beyond each window edge (multiple of 0.05; {GRID_MARGIN:g} for new "
                        "unrotated grids: rotation then sees real spectrum at the edges)")
    p.add_argument("--focus", choices=FOCUS_REGIONS,
                   help="draw the labels from this region of the prior only (more training spectra where an "
                        "emulator is worst; spectra.prior)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_grid)

    p = sub.add_parser("synth", help="synthesise one star (grid layout with N = 1)")
    p.add_argument("--teff", type=float, required=True, help="effective temperature [K]")
    p.add_argument("--logg", type=float, required=True, help="surface gravity [dex, cgs]")
    p.add_argument("--feh", type=float, required=True, help="[Fe/H] [dex]")
    p.add_argument("--vmic", type=float, default=1.0, help="microturbulence [km/s] (default 1.0)")
    p.add_argument("--vbroad", type=float, default=3.5, help="rotational broadening [km/s] (default 3.5)")
    p.add_argument("--xfe", nargs="*", default=[], metavar="X=VALUE", help="abundance ratios, e.g. Mg=0.2 Li=1.0")
    p.add_argument("--atmospheres", help="MARCS folder, .tar.gz or packed .npz (default: packaged grid)")
    p.add_argument("--linelist", help="a packaged line list (" + ", ".join(PACKAGED_LINELISTS)
                   + ") or a line-list CSV (default: merged)")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("survey", help="noisy Zarr survey from a grid (the runtime's input)")
    p.add_argument("--grid", required=True, help="grid HDF5 file")
    p.add_argument("--snr", default="250", help="S/N per A: a value, a comma list, 'paper' (19 values) or LOW-HIGH")
    p.add_argument("--out", required=True, help="output survey .zarr folder (never replaced unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing survey at --out")
    p.add_argument("--seed", type=int, default=0, help="noise seed; noise depends on (seed, source_id) only")
    p.add_argument("--chunk", type=int, default=256, help="spectra per Zarr chunk")
    p.add_argument("--continuum", choices=["true", "pseudo"], default="true",
                   help="keep the synthesis' true continuum, or divide each noisy spectrum by a fitted "
                        "pseudo-continuum as `spectra ingest` does for observed spectra")
    p.add_argument("--knot-spacing", type=float, default=KNOT_SPACING, help="pseudo-continuum spline knot spacing [A]")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_survey)

    p = sub.add_parser("normalise-grid", help="copy of a grid with each spectrum divided by its pseudo-continuum")
    p.add_argument("grid", help="grid HDF5 file")
    p.add_argument("--out", required=True, help="new grid HDF5 file")
    p.add_argument("--knot-spacing", type=float, default=KNOT_SPACING, help="pseudo-continuum spline knot spacing [A]")
    p.add_argument("--workers", type=int, default=1, help="processes fitting continua in parallel")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_normalise_grid)

    p = sub.add_parser("rotate-grid", help="rotated grid from an unrotated one (v_broad: own label + prior draws)")
    p.add_argument("grid", help="unrotated grid HDF5 file (spectra grid --unrotated)")
    p.add_argument("--out", required=True, help="new grid HDF5 file (resumable)")
    p.add_argument("--copies", type=int, default=1, help="rotated copies per spectrum: the first with its own "
                   "v_broad label, the others with fresh prior draws")
    p.add_argument("--seed", type=int, default=0, help="seed of the v_broad draws")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_rotate_grid)

    p = sub.add_parser("simulate", help="a survey of any size generated on the fly from a grid (a small .json file)")
    p.add_argument("--grid", required=True, help="grid HDF5 file (its finished rows are the base spectra)")
    p.add_argument("--n", type=int, required=True, help="number of spectra")
    p.add_argument("--snr", default="paper", help="S/N per A: a value, a comma list, 'paper' or LOW-HIGH")
    p.add_argument("--seed", type=int, default=0, help="row i depends on (seed, i) only")
    p.add_argument("--chunk", type=int, default=4096, help="rows per reading chunk")
    p.add_argument("--out", required=True, help="output .json description")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("pack-grid", help="compact float16 shards of a grid's finished rows (kept in the repository)")
    p.add_argument("grid", help="grid HDF5 file")
    p.add_argument("--out", required=True, help="folder for the shard files")
    p.add_argument("--name", required=True, help="shard file prefix, e.g. train-s7001")
    p.add_argument("--rows-per-shard", type=int, default=250, help="rows per shard file (~4 MB each)")
    p.set_defaults(func=_cmd_pack_grid)

    p = sub.add_parser("unpack-grid", help="rebuild a grid file (float32) from packed shards")
    p.add_argument("shards", nargs="+", help="shard files or folders of them (one packed grid)")
    p.add_argument("--out", required=True, help="output grid HDF5 (resumed if it exists with the same settings)")
    p.set_defaults(func=_cmd_unpack_grid)

    p = sub.add_parser("merge", help="several surveys (same pixel grid and continuum) -> one survey")
    p.add_argument("surveys", nargs="+", help="survey .zarr folders, rows kept in this order")
    p.add_argument("--out", required=True, help="output survey .zarr folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing survey at --out")
    p.add_argument("--chunk", type=int, default=256, help="spectra per Zarr chunk")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("ingest", help="observed spectra (FITS/ASCII) -> Zarr survey for `runtime process`")
    p.add_argument("files", nargs="+", help="spectrum files (4MOST L1-style, ESO Phase 3, 1D FITS, ASCII)")
    p.add_argument("--out", required=True, help="output survey .zarr folder (never replaced unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing survey at --out")
    p.add_argument("--table", help="CSV of per-file settings: file, resolution, rv, medium, snr (empty = default)")
    p.add_argument("--format", dest="fmt", choices=["4most-l1", "eso-phase3", "fits-1d", "ascii"],
                   help="force a reader (default: chosen by content)")
    p.add_argument("--wave-unit", choices=["Angstrom", "nm", "um"], help="wavelength unit when the file has none")
    p.add_argument("--medium", choices=["air", "vacuum"], help="wavelength medium (default: header, else air)")
    p.add_argument("--rv", type=float, help="radial velocity [km/s] to remove instead of cross-correlating")
    p.add_argument("--resolution", type=float, help="input resolving power for every file (else from the header or "
                   "the instrument table, spectra.observed.instruments)")
    p.add_argument("--snr", type=float, help="S/N per A to use instead of the error column / DER_SNR estimate")
    p.add_argument("--knot-spacing", type=float, default=KNOT_SPACING, help="pseudo-continuum spline knot spacing [A]")
    p.add_argument("--chunk", type=int, default=256, help="spectra per Zarr chunk")
    p.add_argument("--first-id", type=int, default=0, help="source_id of the first spectrum")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_ingest, interrupted="re-run the same command with --resume to continue")

    p = sub.add_parser("example-l1", help="write a 4MOST L1-style FITS file from grid rows (noisy)")
    p.add_argument("--grid", required=True, help="grid HDF5 file")
    p.add_argument("--rows", type=int, nargs="+", default=[0], help="grid rows, one spectrum each")
    p.add_argument("--snr", type=float, default=100.0, help="S/N per A of the added noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output FITS file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(func=_cmd_example_l1)

    p = sub.add_parser("import-tsfitpy", help="import a TSFitPy/Turbospectrum grid folder")
    p.add_argument("folder", help="folder with the .spec files and the parameter table")
    p.add_argument("--out", required=True, help="output HDF5 grid file")
    p.add_argument("--params", default="spectra_parameters.csv", help="parameter table file name in FOLDER")
    p.add_argument("--medium", choices=["air", "vacuum"], default="air", help="wavelength medium of the spectra")
    p.add_argument("--vbroad", default="prior", help="km/s, or 'prior' (log-uniform 1-100) when no column gives it")
    p.add_argument("--input-resolution", type=float, default=None, help="R of the input spectra (default: infinite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("info", help="summarise a grid file (.h5) or a survey (.zarr folder, or simulated .json)")
    p.add_argument("path", metavar="PATH", help="grid file, survey folder, or simulated-survey .json")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("plot", help="plot spectra of a grid or survey to PNG")
    p.add_argument("--grid", help="grid HDF5 file")
    p.add_argument("--survey", help="survey .zarr folder")
    p.add_argument("--rows", type=int, nargs="+", default=[0], help="row indices")
    p.add_argument("--zoom", help="wavelength range LOW-HIGH in Angstrom (default: both windows)")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("atmospheres", help="maintenance: pack MARCS models into the package grid")
    asub = p.add_subparsers(dest="action", required=True)
    q = asub.add_parser("pack", help="pack a folder/.tar.gz of MARCS .mod files into an .npz")
    q.add_argument("--source", required=True)
    q.add_argument("--out", default=str(Path(__file__).parent / "data" / "marcs_grid.npz"),
                   help="output .npz (default: the packaged grid; never replaced unless --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    q.set_defaults(func=_cmd_atmospheres_pack)

    p = sub.add_parser("linelist", help="maintenance: build the merged line list")
    lsub = p.add_subparsers(dest="action", required=True)
    q = lsub.add_parser("build", help="merge VALD + FASMA (Li, C2, CN, MgH) + linemake (Eu II)")
    q.add_argument("--vald", required=True)
    q.add_argument("--fasma", required=True)
    q.add_argument("--linemake", nargs="+", required=True)
    q.add_argument("--out", default=str(Path(__file__).parent / "data" / "linelist_4most_hr_vac.csv.gz"),
                   help="output .csv.gz (default: the packaged list; never replaced unless --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    q.set_defaults(func=_cmd_linelist_build)

    q = lsub.add_parser("survey", help="every line of the shared lists at least --threshold deep (PySME central "
                        "depth) somewhere in the training prior (issue 20; ~6 min)")
    q.add_argument("--shared", required=True, help="the shared data folder (holds linelists/)")
    q.add_argument("--threshold", type=float, default=0.005, help="central depth a line must reach in a corner")
    q.add_argument("--out", required=True, help="output .csv.gz (a .json record is written beside it)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    q.set_defaults(func=_cmd_linelist_survey)
    q = lsub.add_parser("calibrate", help="astrophysical log gf and vdW damping from a solar spectrum (bounded, "
                        "regularised; ~30 min on 2 cores)")
    q.add_argument("--linelist", required=True, help="line list .csv.gz to calibrate (vacuum)")
    q.add_argument("--solar", required=True, help="normalised solar spectrum, two columns: air wavelength [A], flux")
    q.add_argument("--iterations", type=int, default=3)
    q.add_argument("--stages", default="lines,features",
                   help="'lines' (every solar-visible line within 0.5 dex), then 'features' (what is left beyond "
                        "3 %%: wider log gf changes, pseudo-lines for unidentified solar lines)")
    q.add_argument("--prior-changes", help="the .changes.csv of an earlier 'lines' pass on --linelist (with "
                   "--stages features: its changes count against the total bound)")
    q.add_argument("--workers", type=int, default=2, help="PySME syntheses in parallel")
    q.add_argument("--out", required=True, help="output .csv.gz (with .changes.csv and .json beside it)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    q.set_defaults(func=_cmd_linelist_calibrate)

    p = sub.add_parser("templates", help="maintenance: synthesise the RV cross-correlation templates")
    tsub = p.add_subparsers(dest="action", required=True)
    q = tsub.add_parser("build", help="PySME templates on the R 80 000 working grid (about 1 min)")
    q.add_argument("--out", default=str(Path(__file__).parent / "data" / "rv_templates.npz"),
                   help="output .npz (default: the packaged templates; never replaced unless --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_cmd_templates_build)
    use_help_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("spectra", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
