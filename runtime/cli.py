"""``runtime``: process a Zarr survey with a model bundle into a catalogue (numpy + onnxruntime + dask only).

Subcommands: ``process``, ``example-survey``, ``corner`` (one spectrum's posterior as a corner plot). Errors become
one line on stderr and exit status 2; re-running with ``--resume`` after an interruption completes only the missing
chunks.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from spectra.common.cliargs import HelpFormatter, add_option, run_command, use_help_formatter

from .engines import ENGINE_CHOICES
from .precision import PRECISIONS
from .sampler import SUMMARY_MODES
from .sessions import DEVICES

__all__ = ["main"]


def _cmd_process(args: argparse.Namespace) -> int:
    from .pipeline import ProcessOptions, process_survey

    options = ProcessOptions(samples=args.samples, seed=args.seed, batch=args.batch, device=args.device,
                             threads=args.threads, bias_correction=args.bias_correction, snr_cap=args.snr_cap,
                             precision=args.precision, force_precision=args.force_precision, summary=args.summary,
                             cuda_graph=args.cuda_graph, engine=args.engine)
    bundle = args.bundle
    if bundle is None:
        from .packaged import default_bundle

        bundle = default_bundle()
        print(f"runtime process: using the packaged default model ({bundle})", file=sys.stderr)
    report = process_survey(args.survey, bundle, args.out, options, workers=args.workers,
                            scheduler=args.scheduler, chunk=args.chunk, resume=args.resume, progress=not args.quiet,
                            overwrite=args.overwrite, tls=_tls(args), dashboard=args.dashboard)
    for warning in report.warnings:
        print(f"runtime process: warning: {warning}", file=sys.stderr)
    print(f"{report.output}: {report.n_rows} rows; {report.chunks_run} chunks run, {report.chunks_skipped} "
          f"already done; device {report.device}, engine {report.engine}, precision {report.precision} "
          f"({report.workers}); "
          f"{report.seconds:.1f} s = "
          f"{report.spectra_per_second:.2f} spectra/s")
    return 0


def _cmd_example_survey(args: argparse.Namespace) -> int:
    from .packaged import unpack_examples

    for survey in unpack_examples(args.out, overwrite=args.overwrite):
        print(survey)
    return 0


def _cmd_corner(args: argparse.Namespace) -> int:
    """One survey row's posterior as a corner plot, through the Python API (the draws ``runtime process`` summarises
    for the same --seed and --samples: the plot shows what the catalogue row was made from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectra.common.outputs import claim_output
    from spectra.common.scratch import written_atomically
    from spectra.stores.survey_reader import open_survey

    from .api import load_model

    out = claim_output(args.out, "corner plot", overwrite=args.overwrite)
    survey = open_survey(args.survey)
    ids, _ = survey.source_ids()
    rows = np.flatnonzero(ids == args.source_id)
    if rows.size == 0:
        raise ValueError(f"--source-id {args.source_id}: not in {args.survey} (its ids run from {ids.min()} to "
                         f"{ids.max()}, {ids.size} rows)")
    block = survey.read_rows(int(rows[0]), int(rows[0]) + 1)
    model = load_model(args.bundle, precision=args.precision, device=args.device, engine=args.engine)
    params = args.params.split(",") if args.params else None
    posterior = model.posterior(block.flux[0], block.snr[0], args.source_id, seed=args.seed, samples=args.samples,
                                snr_cap=args.snr_cap)
    figure = posterior.corner(params)
    with written_atomically(out) as building:
        figure.savefig(building, format=out.suffix.lstrip(".").lower() or "png", dpi=100)
    plt.close(figure)
    name = str(block.extra["object"][0]) if "object" in block.extra else ""
    print(f"{out}: source_id {args.source_id}{f' ({name})' if name else ''}, {int(posterior.valid.sum())} of "
          f"{args.samples} samples inside the training bounds")
    return 0


def _tls(args: argparse.Namespace):
    from .cluster import TLSFiles

    given = [args.tls_ca_file, args.tls_cert, args.tls_key]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("TLS needs all three of --tls-ca-file, --tls-cert and --tls-key")
    return TLSFiles(*given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runtime", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("process", help="survey.zarr + bundle -> catalogue.zarr (resumable)",
                       formatter_class=HelpFormatter)
    add_option(p, "--survey", "--input", required=True, help="survey Zarr (flux, snr, source_id, wavelength)")
    add_option(p, "--bundle", "--model", help="model bundle folder (export onnx); default: the model packaged with "
               "cinn4most (runtime/default_bundle, pseudo-continuum normalised, for observed spectra)")
    add_option(p, "--out", "--output", required=True, help="catalogue Zarr to write")
    p.add_argument("--samples", type=int, default=4096, help="posterior samples per spectrum")
    p.add_argument("--device", default="auto", choices=DEVICES, help="execution provider (auto: CUDA if present)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="flow precision: auto = OpenVINO bf16 on CPUs with bf16 units (AMX, AVX-512 BF16) when "
                   "verified, else the bundle's verified int8 variant on CPUs, fp16 on GPUs, else fp32 (the catalogue "
                   "records which ran)")
    p.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                   help="CPU inference engine: auto = openvino where it runs a verified bf16 on bf16 units, else "
                   "onnxruntime; openvino needs the 'openvino' extra (the catalogue records engine and CPU flags)")
    p.add_argument("--force-precision", action="store_true",
                   help="run a --precision variant even if its recorded error against fp32 exceeds the tolerance")
    p.add_argument("--summary", default="auto", choices=SUMMARY_MODES,
                   help="where rejection, MAP and quantiles are computed: device (the bundle's summary graph), host "
                   "(numpy), auto (device on GPUs, host on CPUs where numpy is faster)")
    p.add_argument("--cuda-graph", action="store_true", help="CUDA: capture the flow once as a CUDA graph and "
                   "replay it (every call padded to --batch spectra)")
    p.add_argument("--workers", type=int, default=1, help="local Dask worker processes (1 = in this process); their "
                   "cluster is the run's alone: 127.0.0.1, TLS with a certificate made for the run, no HTTP")
    p.add_argument("--dashboard", action="store_true", help="with --workers N: serve the run's Dask dashboard on "
                   "127.0.0.1 (address printed; needs bokeh). Without it the run's cluster serves no HTTP at all")
    p.add_argument("--scheduler", help="address of an existing dask.distributed scheduler: tls://HOST:8786 (with the "
                   "--tls-* files) or tcp://HOST:8786 (trusted networks only: it runs whatever it is sent)")
    p.add_argument("--tls-ca-file", help="CA certificate that signed the scheduler's and workers' certificates")
    p.add_argument("--tls-cert", help="this client's certificate (PEM)")
    p.add_argument("--tls-key", help="this client's private key (PEM)")
    p.add_argument("--batch", type=int, default=0, help="spectra per flow call (memory ~ batch x samples x 2 kB); "
                   "0: 16 on a CPU, 256 on a GPU (hundreds x 4096 rows keep a GPU busy)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per worker (0: 1 per Dask worker, "
                   "all cores in-process)")
    p.add_argument("--chunk", type=int, help="catalogue rows per task = per shard (default: about 4 tasks per "
                   "worker, at most 16384; rounded up to a multiple of 1024 above 2048)")
    p.add_argument("--seed", type=int, default=0, help="posterior draws depend on (seed, source_id) only")
    p.add_argument("--bias-correction", action="store_true", help="add <param>_corr columns (paper Eq. B.1) "
                   "from the manifest's coefficients")
    p.add_argument("--snr-cap", action="store_true", help="use the trained maximum S/N for spectra above it "
                   "(flag SNR_CAPPED) instead of only flagging them SNR_OUT_OF_RANGE")
    p.add_argument("--resume", action="store_true", help="complete an interrupted catalogue")
    p.add_argument("--overwrite", action="store_true", help="replace an existing catalogue made by this command")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_process)
    p = sub.add_parser("example-survey", help="unpack the packaged example surveys (synthetic + observed)",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="folder to unpack synthetic.zarr and observed.zarr into")
    p.add_argument("--overwrite", action="store_true", help="replace example surveys unpacked there before")
    p.set_defaults(func=_cmd_example_survey)
    p = sub.add_parser("corner", help="corner plot of one survey spectrum's posterior (the draws runtime process "
                       "summarises for the same --seed and --samples)", formatter_class=HelpFormatter)
    add_option(p, "--survey", required=True, help="survey Zarr (or simulated-survey JSON) holding the spectrum")
    p.add_argument("--source-id", type=int, required=True, help="source_id of the spectrum")
    add_option(p, "--bundle", help="model bundle folder; default: the packaged default model")
    add_option(p, "--out", required=True, help="image to write (.png, .pdf, .svg)")
    p.add_argument("--params", default="teff,logg,fe_h,vbroad,mg_fe", help="parameters to plot, comma-separated "
                   "(empty: all)")
    p.add_argument("--samples", type=int, default=4096, help="posterior samples")
    p.add_argument("--seed", type=int, default=0, help="the run's --seed (draws depend on (seed, source_id))")
    p.add_argument("--snr-cap", action="store_true", help="as runtime process --snr-cap")
    p.add_argument("--device", default="auto", choices=DEVICES, help="execution provider")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="flow precision (as runtime process)")
    p.add_argument("--engine", default="auto", choices=ENGINE_CHOICES, help="CPU engine (as runtime process)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing image")
    p.set_defaults(func=_cmd_corner)
    use_help_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("runtime", build_parser(), argv, interrupted="re-run with --resume to complete")


if __name__ == "__main__":
    sys.exit(main())
