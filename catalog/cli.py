"""``catalog``: export, check and report on catalogues written by ``runtime process``.

Subcommands: ``export`` (Parquet or FITS), ``check`` (exit status 1 when a problem is found), ``report``.
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
