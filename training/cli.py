"""``training``: fit the cINN on a grid, evaluate it, describe a config.

Subcommands: ``fit``, ``evaluate``, ``describe``. Errors become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from spectra.common.cliargs import run_command, use_help_formatter
from spectra.contracts.masks import INPUT_MASKS

if TYPE_CHECKING:
    from .emulator import EmulatorConfig

__all__ = ["main"]


def _cmd_fit(args: argparse.Namespace) -> int:
    from .config import load_config
    from .fit import fit

    config = load_config(args.config, epochs=args.epochs, batches_per_epoch=args.batches_per_epoch,
                         snr_mode=args.snr_mode, seed=args.seed)
    if args.input_mask is not None:
        from dataclasses import replace

        config = replace(config, input_mask=None if args.input_mask == "none" else args.input_mask)
    source = args.emulator or args.grid
    if (config.data == "stream") != bool(args.emulator):
        raise ValueError(f"config {config.name!r} has data = {config.data!r}: "
                         + ("give --emulator (an emulator run folder)" if config.data == "stream" else
                            "give --grid, not --emulator"))
    result = fit(source, config, args.out, device=args.device, restart=args.restart, progress=not args.quiet,
                 workers=args.workers)
    print(f"{result.run}: {result.epochs_done} epochs, best validation loss {result.best_val:.4f} at epoch "
          f"{result.best_epoch}{' (stopped early)' if result.stopped_early else ''}; {result.n_parameters:,} "
          f"parameters; {result.seconds:.0f} s this call. Loss curves: {result.run / 'loss.png'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from spectra.stores.survey import parse_snr

    from .evaluate import evaluate

    metrics = evaluate(args.run, args.grid, args.out, split=args.split, snr=parse_snr(args.snr),
                       n_samples=args.samples, seed=args.seed, max_spectra=args.max_spectra, progress=not args.quiet,
                       bound=args.bound, normalise_after_noise=args.normalise_after_noise, overwrite=args.overwrite)
    print(f"{args.out}/report.md: {metrics['n_spectra']} spectra x {len(metrics['per_snr'])} S/N, "
          f"{metrics['spectra_per_second']:.2f} spectra/s")
    for key in ("250", "50"):
        if key in metrics["per_snr"]:
            p = metrics["per_snr"][key]["params"]
            print(f"  S/N {key}: " + ", ".join(f"{n} {p[n]['bias']:+.3g}±{p[n]['sigma']:.3g} "
                                               f"(cov68 {p[n]['coverage68']:.2f})" for n in ("teff", "logg", "fe_h")))
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from spectra.wavegrid import hr_grid

    from .config import load_config
    from .model import CINN, count_parameters

    config = load_config(args.config)
    model = CINN(config, hr_grid().size, 13)
    fe, flow = count_parameters(model.feature_extractor), count_parameters(model.flow)
    blocks = sum(1 for m in model.flow.module_list if type(m).__name__ == "GLOWCouplingBlock")
    layers = " -> ".join(map(str, config.feature_layers))
    print(f"config {config.name}: feature extractor {hr_grid().size}+1 -> {layers} ({fe:,} parameters); "
          f"{blocks} GLOW blocks with subnets of {config.subnet_layers} layers x "
          f"{config.subnet_width} ({flow:,} parameters); total {fe + flow:,}")
    print(config.to_json())
    return 0


def _cmd_saliency(args: argparse.Namespace) -> int:
    from .saliency import saliency

    result = saliency(args.run, args.grid, args.out, snr=args.snr, n_spectra=args.n_spectra, samples=args.samples,
                      seed=args.seed, progress=not args.quiet, overwrite=args.overwrite)
    for name, e in result["enrichment"].items():
        print(f"{name}: {100 * e['peak_fraction']:.0f} % of the top peaks on {e['element']} lines "
              f"(chance {100 * e['chance_fraction']:.0f} %, enrichment {e['enrichment']:.1f})")
    print(f"{args.out}/saliency.md")
    return 0


def emulator_config(args: argparse.Namespace) -> EmulatorConfig:
    """The ``EmulatorConfig`` of parsed ``emulator-fit`` options (also what ``benchmarks/emulator_study.py``
    builds its recipes with, so a recipe means what the command means)."""
    from .emulator import EmulatorConfig

    return EmulatorConfig(hidden=tuple(int(h) for h in args.hidden.split(",")), steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, basis=args.basis,
                          weight_decay=args.weight_decay, schedule=args.schedule, members=args.members,
                          clip_factor=args.clip_factor)


def _cmd_emulator_fit(args: argparse.Namespace) -> int:
    from .emulator import fit_emulator

    record = fit_emulator(args.grid, args.out, emulator_config(args), progress=not args.quiet)
    print(f"{args.out}: emulator trained on {record['n_train']} spectra in {record['cpu_seconds']:.0f} s; "
          f"validation rms (median) {100 * record['val_rms_median']:.3f} %")
    return 0


def _cmd_emulator_evaluate(args: argparse.Namespace) -> int:
    from .emulator import evaluate_emulator

    table = evaluate_emulator(args.run, args.grid, args.out, overwrite=args.overwrite)
    print(f"{args.out}/emulator_errors.md: {table['n_spectra']} held-out spectra, per-pixel median "
          f"{100 * table['pixel_abs_median']:.3f} %, per-spectrum rms median {100 * table['rms_median']:.3f} %")
    return 0


def _cmd_emulate_grid(args: argparse.Namespace) -> int:
    from .emulator import emulate_grid

    if args.n is None and args.labels_from is None:
        raise ValueError("give --n (labels from the prior) or --labels-from GRID")
    out = emulate_grid(args.run, args.out, args.n or 0, args.seed, progress=not args.quiet,
                       labels_from=args.labels_from)
    origin = (f"the labels of {args.labels_from}" if args.labels_from
              else f"labels from the grid prior, seed {args.seed}")
    print(f"{out}: emulated, rotated spectra ({origin})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train a cINN on a grid or a fresh emulated stream (resumes a run in --out)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--grid", help="grid HDF5 file (spectra grid)")
    source.add_argument("--emulator", help="emulator run folder: fresh stars every batch (configs with data=stream)")
    p.add_argument("--workers", type=int, default=1, help="processes making stream batches ahead of the optimiser")
    p.add_argument("--config", default="small", help="paper | small | tiny | a JSON file of config fields")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--epochs", type=int, help="override the config's epoch count")
    p.add_argument("--batches-per-epoch", type=int, help="override the config's batches per epoch")
    p.add_argument("--snr-mode", choices=["paper", "continuous"], help="discrete paper S/N or log-uniform 10-1000")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--input-mask", choices=[*INPUT_MASKS, "none"],
                   help="override the config's input mask (default model-invalid: the telluric O2 band and the "
                        "H-alpha core never reach the network; spectra.contracts.masks); none: every pixel")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("evaluate", help="posterior accuracy and calibration on a split of the grid")
    p.add_argument("--run", required=True)
    p.add_argument("--grid", required=True)
    p.add_argument("--split", default="test", choices=["train", "test", "val", "all"],
                   help="part of --grid to evaluate on; 'all' for a held-out grid the run never saw")
    p.add_argument("--snr", default="paper", help="'paper' (19 values), a list like 50,250, or LOW-HIGH")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--max-spectra", type=int, help="evaluate only the first N spectra of the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="report folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation report in --out")
    p.add_argument("--normalise-after-noise", action="store_true",
                   help="--grid has the true continuum: normalise each noisy copy (like observed spectra)")
    p.add_argument("--bound", help="bound.json of benchmarks/information_limit.py: adds σ / bound per S/N")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("saliency", help="median normalised gradients dX/dflux per parameter (paper Figs. A.4-A.5)")
    p.add_argument("--run", required=True)
    p.add_argument("--grid", required=True)
    p.add_argument("--out", required=True, help="output folder, new or empty (maps, PNGs, saliency.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier saliency report in --out")
    p.add_argument("--snr", type=float, default=250.0, help="S/N per A of the noisy test spectra")
    p.add_argument("--n-spectra", type=int, default=64, help="test spectra to average over")
    p.add_argument("--samples", type=int, default=64, help="latent draws per spectrum for the posterior mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_saliency)

    p = sub.add_parser("emulator-fit", help="train a spectral emulator (labels -> unrotated HR spectrum)")
    p.add_argument("--grid", required=True, nargs="+", help="unrotated grid file(s) (spectra grid --unrotated); "
                   "a margin beyond the windows is kept: the emulator's output is rotated on it, then cropped")
    p.add_argument("--out", required=True, help="emulator folder")
    p.add_argument("--hidden", default="256,256,512", help="hidden layer widths")
    p.add_argument("--steps", type=int, default=3000, help="Adam steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="(peak) learning rate")
    p.add_argument("--schedule", choices=("cosine", "onecycle"), default="cosine",
                   help="learning-rate schedule: cosine decay from --lr, or one cycle (5 %% warm-up, then annealing)")
    p.add_argument("--basis", type=int, default=0, help="principal components of the training spectra as the "
                   "output basis (0: one output weight per pixel); 384 rebuilds held-out spectra to 0.03 %%")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--members", type=int, default=1, help="networks trained with independent seeds on the same "
                   "split and averaged (an ensemble; training costs this many times one network)")
    p.add_argument("--clip-factor", type=float, default=0.0,
                   help="> 1: clip a step's gradient norm to this many times the median of the recent steps' "
                        "(training.emulator.SpikeGuard: a guard against the rare batch whose gradient is 100x the "
                        "usual); 0: off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_emulator_fit)

    p = sub.add_parser("emulator-evaluate", help="emulator errors on held-out PySME spectra (never trained on)")
    p.add_argument("--run", required=True, help="emulator folder")
    p.add_argument("--grid", required=True, nargs="+", help="held-out unrotated grid file(s)")
    p.add_argument("--out", required=True, help="report folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier error report in --out")
    p.set_defaults(func=_cmd_emulator_evaluate)

    p = sub.add_parser("emulate-grid", help="a training grid of emulated spectra (prior labels, rotated)")
    p.add_argument("--run", required=True, help="emulator folder (training emulator-fit --out)")
    p.add_argument("--out", required=True, help="grid HDF5 file to write (resumable)")
    p.add_argument("--n", type=int, help="number of spectra (labels from the grid prior)")
    p.add_argument("--labels-from", help="a grid whose labels to emulate instead (e.g. the held-out PySME set)")
    p.add_argument("--seed", type=int, default=1, help="prior seed (use one the PySME test set does not)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_emulate_grid)

    p = sub.add_parser("describe", help="build a config's model and print its size")
    p.add_argument("--config", default="paper")
    p.set_defaults(func=_cmd_describe)
    use_help_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("training", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
