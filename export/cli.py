"""``export``: turn a training run into a model bundle, and verify a bundle against its run.

Subcommands: ``onnx``, ``quantize``, ``verify``, ``emulator``, ``attach-emulator``, ``calibrate-poor-fit``,
``calibrate-intervals``, ``bias-correction``. Errors become one line on stderr and exit status 2; a failed
verification exits with status 1.
"""

from __future__ import annotations

import argparse
import sys

from spectra.common.cliargs import run_command, use_help_formatter
from spectra.contracts.manifest import ENGINES, VARIANTS

__all__ = ["main"]


def _cmd_onnx(args: argparse.Namespace) -> int:
    from .onnx import export_bundle

    correction = None if args.bias_correction in (None, "none") else args.bias_correction
    precisions = list(args.precision or []) + (["fp16"] if args.fp16 and "fp16" not in (args.precision or []) else [])
    out = export_bundle(args.run, args.out, opset=args.opset, precisions=tuple(precisions),
                        bias_correction=correction, overwrite=args.overwrite, grid=args.grid)
    print(f"{out}: feature_extractor.onnx, inverse_flow.onnx, condition_projection.onnx, hoisted_flow.onnx, "
          f"posterior_summary.onnx, wavelength.npy, manifest.json"
          + "".join(f", hoisted_flow.{p}.onnx" for p in precisions))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .variants import quantize_bundle

    if args.engine != "onnxruntime":
        from .variants import quantize_engine

        variants = quantize_engine(args.bundle, args.engine, args.precision, grid=args.grid, n_spectra=args.spectra,
                                   overwrite=args.overwrite)
    else:
        variants = quantize_bundle(args.bundle, args.precision, grid=args.grid, n_spectra=args.spectra,
                                   overwrite=args.overwrite)
    failed = [p for p in args.precision if not variants[p]["verification"]["passed"]]
    if failed:
        print(f"export quantize: {', '.join(failed)} above the tolerance: kept in the bundle with its measured "
              "error, and `runtime process` refuses it unless --force-precision", file=sys.stderr)
        return 1
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import FP32_TOLERANCE, verify_bundle

    report = verify_bundle(args.bundle, args.run, n_samples=args.samples, grid=args.grid)
    print("\n".join(report.lines()))
    if not report.ok:
        print(f"export verify: FAILED: worst fp32 error {report.worst:.2e} (limit {FP32_TOLERANCE:.0e}); variants: "
              + (", ".join(f"{k} {'ok' if v['passed'] else 'FAILED'}" for k, v in report.variants.items()) or "none"),
              file=sys.stderr)
        return 1
    print(f"export verify: OK (worst fp32 error {report.worst:.2e} <= {FP32_TOLERANCE:.0e})")
    return 0


def _cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator import export_emulator

    out = export_emulator(args.run, args.out, errors=args.errors, overwrite=args.overwrite, weights=args.weights)
    print(f"{out}: emulator.onnx, wavelength.npy, emulator.json")
    return 0


def _cmd_attach_emulator(args: argparse.Namespace) -> int:
    from .resim import attach_emulator

    entry = attach_emulator(args.bundle, args.emulator, overwrite=args.overwrite)
    print(f"{args.bundle}: emulator attached ({len(entry['inputs'])} inputs, {len(entry['fill'])} filled from the "
          f"prior's trends, model error {100 * entry['model_error']:.2f} %); calibrate POOR_FIT with "
          "`python -m export calibrate-poor-fit`")
    return 0


def _cmd_calibrate_poor_fit(args: argparse.Namespace) -> int:
    from .resim import calibrate_poor_fit

    entry = calibrate_poor_fit(args.bundle, args.catalog, args.percentile)
    cal = entry["poor_fit_calibration"]
    print(f"{args.bundle}: POOR_FIT above chi2_resim = {entry['poor_fit_chi2']:.3f} ({cal['percentile']:g}th "
          f"percentile of {cal['rows']} rows; median {cal['chi2_median']:.3f})")
    return 0


def _cmd_calibrate_intervals(args: argparse.Namespace) -> int:
    from .intervals import calibrate_intervals

    entry = calibrate_intervals(args.bundle, args.catalog, args.survey)
    print(f"{args.bundle}: interval factors at S/N {', '.join(f'{v:g}' for v in entry['snr'])} fitted on "
          f"{sum(entry['fitted_on']['rows_per_snr'])} rows; 68 % coverage per S/N (min-max over parameters):")
    for snr, flow in entry["coverage68_flow"].items():
        after = entry["coverage68_calibrated"][snr]
        print(f"  S/N {snr}: {min(flow):.2f}-{max(flow):.2f} -> {min(after):.2f}-{max(after):.2f}")
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
    p.add_argument("--precision", nargs="+", choices=VARIANTS,
                   help="also write these verified reduced-precision variants of the flow (see `export quantize`)")
    p.add_argument("--grid", help="grid of real spectra to verify the variants on (default: the run's grid)")
    p.add_argument("--fp16", action="store_true", help=argparse.SUPPRESS)  # old spelling of --precision fp16
    p.add_argument("--bias-correction", metavar="paper|FILE",
                   help="store Eq. B.1 coefficients in the bundle (applied only with `runtime process "
                   "--bias-correction`): a coefficients JSON from `catalog calibrate` for this model, or 'paper' "
                   "(Table B.3, fitted to the paper's NLTE network, not to this model); default: none")
    p.set_defaults(func=_cmd_onnx)
    p = sub.add_parser("verify", help="compare a bundle with its PyTorch run (fails loudly)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--grid", help="grid of real spectra to re-measure precision variants on (default: training grid)")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("quantize", help="add int8/fp16/bf16 variants of the flow to a bundle, verified against fp32")
    p.add_argument("--bundle", required=True)
    p.add_argument("--precision", nargs="+", required=True, choices=VARIANTS)
    p.add_argument("--grid", help="grid of real spectra on the bundle's pixel grid (default: the training grid)")
    p.add_argument("--spectra", type=int, default=24, help="grid spectra per S/N (250, 50, 20) to verify on")
    p.add_argument("--overwrite", action="store_true", help="remake a variant the bundle already has")
    p.add_argument("--engine", default="onnxruntime", choices=ENGINES,
                   help="onnxruntime: write variant graphs; openvino: verify its bf16 precision hint on the fp32 "
                   "graphs (no file added) and record it for `runtime process --engine openvino|auto`")
    p.set_defaults(func=_cmd_quantize)
    p = sub.add_parser("emulator", help="write a trained spectral emulator as ONNX + manifest")
    p.add_argument("--run", required=True, help="emulator folder (training emulator-fit --out)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--errors", help="emulator_errors.json from `training emulator-evaluate`, recorded in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an exported emulator in --out")
    p.add_argument("--weights", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: large weight matrices stored in half precision (half the size; float32 arithmetic)")
    p.set_defaults(func=_cmd_emulator)
    p = sub.add_parser("attach-emulator", help="put an exported emulator into a bundle (re-simulation check)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--emulator", required=True, help="folder written by `export emulator`")
    p.add_argument("--overwrite", action="store_true", help="replace an emulator the bundle already carries")
    p.set_defaults(func=_cmd_attach_emulator)
    p = sub.add_parser("calibrate-poor-fit", help="set the POOR_FIT chi2_resim threshold from held-out spectra")
    p.add_argument("--bundle", required=True)
    p.add_argument("--catalog", required=True, help="catalogue of held-out synthetic spectra made with this bundle")
    p.add_argument("--percentile", type=float, default=99.0, help="percentile of chi2_resim used as threshold")
    p.set_defaults(func=_cmd_calibrate_poor_fit)
    p = sub.add_parser("calibrate-intervals", help="fit the factors that make the 68 %% intervals hold 68 %% of the "
                       "truths, per parameter and S/N (runtime.intervals), from a synthetic survey with labels")
    p.add_argument("--bundle", required=True)
    p.add_argument("--catalog", required=True, nargs="+",
                   help="catalogue(s) of the --survey(s), in the same order, made with this bundle (runtime process)")
    p.add_argument("--survey", required=True, nargs="+", help="synthetic survey(s) (with truth) at a few S/N values, "
                   "e.g. noise draws of the same stars: spectra the model will not be judged on")
    p.set_defaults(func=_cmd_calibrate_intervals)
    p = sub.add_parser("bias-correction", help="store Eq. B.1 coefficients (catalog calibrate, or 'paper') in a bundle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--coefficients", required=True, help="coefficients JSON from `catalog calibrate`, or 'paper'")
    p.set_defaults(func=_cmd_bias_correction)
    use_help_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("export", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
