"""``catalog``: export, check and report on catalogues written by ``runtime process``.

Subcommands: ``export`` (Parquet or FITS; the format follows the ``--out`` suffix), ``check`` (a JSON document
of counts on stdout, problems and the verdict on stderr; exit status 1 when a problem is found), ``report``,
``calibrate`` (bias-correction coefficients from reference stars).
"""

from __future__ import annotations

import argparse
import json
import sys

from spectra.common.cliargs import HelpFormatter, add_option, run_command, use_help_formatter

__all__ = ["main"]


def _cmd_export(args: argparse.Namespace) -> int:
    from .writers import export_fits, export_format, export_parquet

    fmt = export_format(args.out, args.format)
    if fmt == "fits":
        out = export_fits(args.catalog, args.out, overwrite=args.overwrite, complete_only=args.complete_only)
    else:
        out = export_parquet(args.catalog, args.out, overwrite=args.overwrite, complete_only=args.complete_only,
                             dataset=fmt == "parquet-dataset")
    note = " (finished rows only: --complete-only)" if args.complete_only else ""
    files = [out] if out.is_file() else [f for f in out.rglob("*") if f.is_file()]
    print(f"{out}: {fmt} export written, {sum(f.stat().st_size for f in files) / 1e6:.2f} MB{note}")
    return 0


def _cmd_flags(args: argparse.Namespace) -> int:
    from spectra.contracts.flags import flags_markdown

    print("flags (set by `runtime process`):\n")
    print(flags_markdown("flags"))
    print("\ningest_flags (set by `spectra ingest`, copied into the catalogue; INGEST_FLAGGED says one is set):\n")
    print(flags_markdown("ingest_flags"))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .show import show_rows

    print(show_rows(args.catalog, args.params.split(","), rows=args.rows))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """stdout is the JSON document only (``catalog check ... > check.json`` must parse); everything meant for a
    person (notes, problems, the verdict) goes to stderr, and the exit status carries the verdict too."""
    from .check import check_catalogue

    result = check_catalogue(args.catalog, args.survey)
    print(json.dumps(result.counts, indent=1))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{args.catalog}: {'OK' if result.ok else 'FAILED'}", file=sys.stderr)
    return 0 if result.ok else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    summary = make_report(args.catalog, args.out, args.truth, overwrite=args.overwrite)
    print(f"{args.out}/report.md: {summary['rows']} rows, {summary['usable']} usable; plots in {args.out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from spectra.common.outputs import claim_output

    from .calibrate import calibrate

    claim_output(args.out, "coefficients file", overwrite=args.overwrite)
    result = calibrate(args.catalog, args.reference, args.out, survey=args.survey,
                       parameters=args.parameters.split(",") if args.parameters else None, min_feh=args.min_feh)
    for name, c in result["coefficients"].items():
        print(f"{name}: a = {c['a']:+.4g} ± {c['a_err']:.2g}, b = {c['b']:+.4g} ± {c['b_err']:.2g} "
              f"({c['n']} stars; rms {c['rms_before']:.3g} -> {c['rms_after']:.3g})")
    print(f"{args.out}: store it in a bundle with `python -m export bias-correction --bundle B --coefficients "
          f"{args.out}`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalog", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        # help texts are %-formatted by argparse (a bare "68 % interval" crashed --help); descriptions are not
        return sub.add_parser(name, help=text.replace("%", "%%"), description=text, formatter_class=HelpFormatter)

    p = command("export", "write the catalogue as Parquet, a Parquet dataset folder or FITS, streamed (units, "
                "descriptions, provenance, flag table)")
    add_option(p, "--catalog", "--input", required=True, help="catalogue Zarr from `runtime process`")
    p.add_argument("--format", choices=["parquet", "parquet-dataset", "fits"],
                   help="output format; default: from the --out suffix (.parquet/.pq, .fits/.fit/.fits.gz), which "
                   "must agree when both are given. A parquet-dataset (a name without a suffix) is a folder of part "
                   "files that pyarrow.dataset, pandas and dask.dataframe read as one table")
    p.add_argument("--out", required=True, help="output file (or dataset folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--complete-only", action="store_true",
                   help="export the finished rows of an unfinished catalogue (refused otherwise)")
    p.set_defaults(func=_cmd_export)
    p = command("check", "schema, row count, no silent gaps (exit 1 on a problem)")
    add_option(p, "--catalog", "--input", required=True, help="catalogue Zarr")
    p.add_argument("--survey", help="the input survey, to compare rows and source ids")
    p.set_defaults(func=_cmd_check)
    p = command("report", "summary table and plots (residuals when --truth is given)")
    add_option(p, "--catalog", "--input", required=True, help="catalogue Zarr")
    p.add_argument("--truth", help="synthetic survey with a truth array")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.set_defaults(func=_cmd_report)
    p = command("calibrate", "fit the T_eff-linear bias correction (Eq. B.1) against reference stars")
    p.add_argument("--catalog", required=True, help="catalogue from `runtime process`")
    p.add_argument("--reference", required=True,
                   help="CSV: source_id or object, then teff, logg, fe_h, ... (optional <p>_err columns)")
    p.add_argument("--survey", help="the ingested survey, to match reference rows by object name")
    p.add_argument("--parameters", help="comma list (default: every reference column the catalogue has)")
    p.add_argument("--min-feh", type=float, default=-2.5, help="use stars with catalogue [Fe/H] >= this")
    p.add_argument("--out", required=True, help="coefficients JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing coefficients file")
    p.set_defaults(func=_cmd_calibrate)
    p = command("show", "print rows as a table: MAP and 68 % interval per parameter, re-simulation chi2, flag names")
    add_option(p, "--catalog", required=True, help="catalogue Zarr (runtime process --out)")
    p.add_argument("--params", default="teff,logg,fe_h,vbroad,mg_fe", help="parameters to show, comma-separated")
    p.add_argument("--rows", type=int, default=20, help="first N rows")
    p.set_defaults(func=_cmd_show)
    p = command("flags", "print the flag bits of the `flags` and `ingest_flags` columns (bit, name, threshold, "
                        "meaning)")
    p.set_defaults(func=_cmd_flags)
    use_help_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("catalog", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
