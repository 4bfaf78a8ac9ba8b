"""``catalog``: export, check and report on catalogues written by ``runtime process``.

Subcommands: ``export`` (Parquet or FITS), ``check`` (exit status 1 when a problem is found), ``report``,
``calibrate`` (bias-correction coefficients from reference stars).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _cmd_export(args: argparse.Namespace) -> int:
    from .writers import export_fits, export_parquet

    out = (export_parquet if args.format == "parquet" else export_fits)(args.input, args.out)
    print(f"{out}: {args.format}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import check_catalogue

    result = check_catalogue(args.input, args.survey)
    print(json.dumps(result.counts, indent=1))
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{args.input}: {'OK' if result.ok else 'FAILED'}")
    return 0 if result.ok else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    summary = make_report(args.input, args.out, args.truth)
    print(f"{args.out}/report.md: {summary['rows']} rows, {summary['usable']} usable; plots in {args.out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate

    result = calibrate(args.catalog, args.reference, args.out, survey=args.survey,
                       parameters=args.parameters.split(",") if args.parameters else None, min_feh=args.min_feh)
    for name, c in result["coefficients"].items():
        print(f"{name}: a = {c['a']:+.4g} ± {c['a_err']:.2g}, b = {c['b']:+.4g} ± {c['b_err']:.2g} "
              f"({c['n']} stars; rms {c['rms_before']:.3g} -> {c['rms_after']:.3g})")
    print(f"{args.out}: store it in a bundle with `python -m export bias-correction --bundle B --coefficients "
          f"{args.out}`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalog", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write the catalogue as Parquet or FITS (with units)")
    p.add_argument("--input", required=True)
    p.add_argument("--format", choices=["parquet", "fits"], required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("check", help="schema, row count, no silent gaps")
    p.add_argument("--input", required=True)
    p.add_argument("--survey", help="the input survey, to compare rows and source ids")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("report", help="summary table and plots (residuals when --truth is given)")
    p.add_argument("--input", required=True)
    p.add_argument("--truth", help="synthetic survey with a truth array")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("calibrate", help="fit the T_eff-linear bias correction (Eq. B.1) against reference stars")
    p.add_argument("--catalog", required=True, help="catalogue from `runtime process`")
    p.add_argument("--reference", required=True,
                   help="CSV: source_id or object, then teff, logg, fe_h, ... (optional <p>_err columns)")
    p.add_argument("--survey", help="the ingested survey, to match reference rows by object name")
    p.add_argument("--parameters", help="comma list (default: every reference column the catalogue has)")
    p.add_argument("--min-feh", type=float, default=-2.5, help="use stars with catalogue [Fe/H] >= this")
    p.add_argument("--out", required=True, help="coefficients JSON")
    p.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"catalog {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
