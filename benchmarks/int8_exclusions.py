"""How much of the int8 variant's error comes from which coupling layers: the bundle's flow quantized like
``export quantize --precision int8`` (ONNX Runtime dynamic, per-channel QInt8, the thin MatMuls in fp32), with the
hidden MatMuls of chosen coupling layers kept in fp32 too, verified exactly as the bundle's variant is
(``export.variants.variant_errors``: quantile and MAP differences in fp32 half-widths).

    python benchmarks/int8_exclusions.py --bundle B --grid train.h5 [--seed 0] [--keep 0-3 --keep 0-7 ...] [--where]

Each ``--keep A-B`` is one variant: the hidden MatMuls of ``/layers.A`` .. ``/layers.B`` stay fp32 (layer 0 is the
last the sampler runs, next to x). Without ``--keep`` only the bundle's own recipe (no extra layer) is measured.
``--where`` also lists, per variant, the largest errors (spectrum, S/N, parameter, quantile, and the fp32 posterior's
quantiles in half-widths from its median, to tell a Gaussian tail from a multi-modal posterior), the maximum and 99th
percentile per quantile level, and the 99th / 99.9th percentiles over all entries. ``--fp32-seeds`` measures, in
the same units, how far the fp32 quantiles themselves move when only the latent seed changes (0 → 1): the Monte-Carlo
error of 4 096 samples, the scale against which a variant's error is invisible.
Used in session 21 (``benchmarks/results/candidate_s21/README.md``): the largest quantile error does not come from
one layer; it sits in the tails of a few S/N 250 posteriors.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path


def _layer(name: str) -> int:
    """The coupling layer index of a node named like ``/layers.12.1.0/MatMul``."""
    return int(name.split(".")[1])


def where(bundle: Path, graph: Path, grid: Path, seed: int, top: int = 12) -> list[str]:
    """Lines describing where the variant ``graph`` differs most from fp32, on the verification spectra of
    ``export.variants.variant_errors`` (same spectra, noise, latent draws and units)."""
    import numpy as np

    from export.variants import fp32_reference
    from runtime.bundle import load_bundle
    from runtime.precision import half_widths, posterior_differences
    from runtime.sampler import OnnxPosterior
    from spectra.contracts import quantiles as levels

    loaded = load_bundle(bundle, check_graphs=False)
    ref = fp32_reference(loaded, grid, 24, (250.0, 50.0, 20.0), 4096, seed)
    fp32, snr, n_rows = ref.posterior, ref.snr, ref.n_rows
    int8 = OnnxPosterior(loaded, threads=1, summary="host", precision="int8", flow_graph=graph).posterior(
        ref.flux, snr, ref.ids, seed, 4096)
    error = posterior_differences(fp32.quantiles, fp32.map, int8.quantiles, int8.map)[0]  # (spectra, quantile, param)
    reference = fp32.quantiles
    half = half_widths(reference)  # for the shape column
    names, quantile_names = loaded.manifest.names, [q.name for q in levels.QUANTILE_LEVELS]
    lines = []
    for flat in np.argsort(np.nan_to_num(error, nan=-1.0).ravel())[::-1][:top]:
        i, q, d = np.unravel_index(flat, error.shape)
        shape = (reference[i, :, d] - reference[i, levels.index("p50"), d]) / half[i, d]
        lines.append(f"  {error[i, q, d]:.4f}: star {i % n_rows}, S/N {snr[i]:g}, {names[d]} {quantile_names[q]}; fp32 "
                     f"quantiles at {' '.join(f'{v:+.2f}' for v in shape)} half-widths from the median")
    for q, name in enumerate(quantile_names):
        at = error[:, q]
        lines.append(f"  {name}: max {np.nanmax(at):.4f}, 99th percentile {np.nanpercentile(at, 99):.4f}")
    p99, p999 = np.nanpercentile(error, [99, 99.9])
    lines.append(f"  all {np.isfinite(error).sum()} entries: 99th percentile {p99:.4f}, 99.9th {p999:.4f}")
    return lines


def fp32_seed_to_seed(bundle: Path, grid: Path, seed: int) -> str:
    """One line: how much the fp32 quantiles move between latent seeds ``seed`` and ``seed + 1`` (same spectra and
    noise as the verification), in fp32 half-widths: median, 99th, 99.9th percentile and maximum over the entries."""
    import numpy as np

    from export.variants import fp32_reference
    from runtime.bundle import load_bundle

    # the verification's own reference: fp32 at seed against fp32 at seed + 1 (export.variants)
    moved = fp32_reference(load_bundle(bundle, check_graphs=False), grid, 24, (250.0, 50.0, 20.0), 4096,
                            seed).scatter
    median, p99, p999, top = np.nanpercentile(moved, [50, 99, 99.9, 100])
    return (f"fp32, latent seed {seed} vs {seed + 1}: quantiles move by median {median:.4f}, "
            f"99th percentile {p99:.4f}, 99.9th {p999:.4f}, max {top:.4f} half-widths")


def main(argv: list[str] | None = None) -> int:
    """Quantize and verify one variant per ``--keep``; print one line each."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.variants import thin_matmuls, variant_errors
    from runtime.precision import describe_check, within_tolerance

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--grid", required=True, type=Path, help="PySME grid to verify on (never the held-out set)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the verification spectra")
    parser.add_argument("--keep", action="append", default=[], help="A-B: coupling layers whose hidden MatMuls "
                        "stay fp32 (repeat for more variants)")
    parser.add_argument("--where", action="store_true", help="also list where each variant's largest errors sit")
    parser.add_argument("--fp32-seeds", action="store_true", help="first, how much fp32 quantiles move between two "
                        "latent seeds (their Monte-Carlo error)")
    args = parser.parse_args(argv)
    source = args.bundle / "hoisted_flow.onnx"
    model = onnx.load(str(source))
    thin = thin_matmuls(model)
    hidden = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in thin]
    logging.getLogger().setLevel(logging.ERROR)
    if args.fp32_seeds:
        print(fp32_seed_to_seed(args.bundle, args.grid, args.seed), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ["", *args.keep]:
            low, high = (int(v) for v in spec.split("-")) if spec else (1, 0)
            kept = [h for h in hidden if low <= _layer(h) <= high]
            graph = Path(tmp) / f"int8_{spec or 'recipe'}.onnx"
            quantize_dynamic(str(source), str(graph), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=thin + kept)
            e = variant_errors(args.bundle, "int8", graph, args.grid, seed=args.seed)
            print(f"fp32 also in layers {spec or '(none)'}: {len(hidden) - len(kept)} of {len(hidden)} hidden MatMuls "
                  f"int8; {describe_check(e)}; median {e['quantile_error_median']:.4f}: "
                  f"{'passes' if within_tolerance(e) else 'fails'}", flush=True)
            if args.where:
                print("\n".join(where(args.bundle, graph, args.grid, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
