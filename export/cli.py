"""``export``: turn a training run into a model bundle, and verify a bundle against its run.

Subcommands: ``onnx``, ``verify``, ``bias-correction``. Errors become one line on stderr and exit status 2; a failed
verification exits with status 1.
"""

from __future__ import annotations

import argparse
import sys

from catalog.cliargs import use_help_formatter

__all__ = ["main"]


def _cmd_onnx(args: argparse.Namespace) -> int:
    from .onnx import export_bundle

    correction = None if args.bias_correction == "none" else args.bias_correction
    out = export_bundle(args.run, args.out, opset=args.opset, fp16=args.fp16, bias_correction=correction,
                        overwrite=args.overwrite)
    print(f"{out}: feature_extractor.onnx, inverse_flow.onnx, wavelength.npy, manifest.json"
          + (" (+ fp16 graphs)" if args.fp16 else ""))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import FP32_TOLERANCE, verify_bundle

    report = verify_bundle(args.bundle, args.run, n_samples=args.samples)
    print("\n".join(report.lines()))
    if not report.ok:
        print(f"export verify: FAILED: worst fp32 error {report.worst:.2e} > {FP32_TOLERANCE:.0e}", file=sys.stderr)
        return 1
    print(f"export verify: OK (worst fp32 error {report.worst:.2e} <= {FP32_TOLERANCE:.0e})")
    return 0


def _cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator import export_emulator

    out = export_emulator(args.run, args.out, errors=args.errors, overwrite=args.overwrite)
    print(f"{out}: emulator.onnx, wavelength.npy, emulator.json")
    return 0


def _cmd_bias_correction(args: argparse.Namespace) -> int:
    from runtime.bundle import store_bias_correction

    stored = store_bias_correction(args.bundle, args.coefficients)
    print(f"{args.bundle}/manifest.json: bias correction for {', '.join(stored['coefficients'])} stored "
          f"(applied only with `runtime process --bias-correction`)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("onnx", help="write the model bundle of a training run")
    p.add_argument("--run", required=True, help="training run folder (training fit --out)")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle in --out")
    p.add_argument("--fp16", action="store_true", help="also write half-precision graphs (needs onnxconverter-common)")
    p.add_argument("--bias-correction", default="paper",
                   help="'paper' (Table B.3, stored not applied), a coefficients JSON, or 'none'")
    p.set_defaults(func=_cmd_onnx)
    p = sub.add_parser("verify", help="compare a bundle with its PyTorch run (fails loudly)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--samples", type=int, default=4096)
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("emulator", help="write a trained spectral emulator as ONNX + manifest")
    p.add_argument("--run", required=True, help="emulator folder (training emulator-fit --out)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--errors", help="emulator_errors.json from `training emulator-evaluate`, recorded in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an exported emulator in --out")
    p.set_defaults(func=_cmd_emulator)
    p = sub.add_parser("bias-correction", help="store Eq. B.1 coefficients (catalog calibrate, or 'paper') in a bundle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--coefficients", required=True, help="coefficients JSON from `catalog calibrate`, or 'paper'")
    p.set_defaults(func=_cmd_bias_correction)
    use_help_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        print(f"export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
