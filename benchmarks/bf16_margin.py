"""How close to a training bound a bf16 sample must lie to have its acceptance decided in fp32.

    python benchmarks/bf16_margin.py --grid train.h5 --margins 0,0.0005,0.001,0.002,0.004,0.01 \
        --out benchmarks/results/bf16_margin.json [--bundle B]

OpenVINO bf16 flows (``runtime.sampler``) recompute in fp32 the samples within ``EXACT_MARGIN`` standardised units
of a bound, so that a bf16 rounding does not flip a sample's rejection. Each such sample costs an fp32 flow pass,
so the margin is a trade: this runs the bundle's own variant verification (24 real grid spectra x S/N 250/50/20,
quantiles and MAP against onnxruntime fp32, in fp32 68 % half-widths) at each margin and reports the largest
error (the share of samples recomputed, and its cost, is in ``benchmarks/throughput.py``'s report). Needs OpenVINO
and, for a meaningful answer, a CPU with bf16 units.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle (default: the packaged default model)")
    parser.add_argument("--grid", required=True, help="real grid spectra to verify on (the bundle's training grid)")
    parser.add_argument("--margins", default="0,0.0005,0.001,0.002,0.004,0.01")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import runtime.sampler as sampler
    from export.variants import variant_errors
    from runtime.engines import cpu_features, cpu_model
    from runtime.packaged import default_bundle
    from runtime.precision import describe_check, within_tolerance

    bundle = Path(args.bundle) if args.bundle else default_bundle()
    chosen = sampler.EXACT_MARGIN
    rows = []
    try:
        for margin in (float(m) for m in args.margins.split(",")):
            sampler.EXACT_MARGIN = margin  # read at call time by OnnxPosterior._near_bounds
            check = variant_errors(bundle, "bf16", None, args.grid, engine="openvino")
            rows.append({"margin": margin, "passes": within_tolerance(check),
                         **{k: check[k] for k in ("quantile_error", "quantile_error_p99", "quantile_error_median",
                                                  "map_error", "map_error_max")}})
            print(f"margin {margin:g}: {describe_check(check)}", flush=True)
    finally:
        sampler.EXACT_MARGIN = chosen
    report = {"bundle": str(bundle), "grid": str(args.grid), "cpu": cpu_model(), "cpu_features": list(cpu_features()),
              "python": platform.python_version(), "runtime_margin": chosen,
              "unit": "fraction of the fp32 posterior's 68 % half-width", "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
