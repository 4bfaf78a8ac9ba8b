"""How much of the int8 variant's error comes from which coupling layers: the bundle's flow quantized like
``export quantize --precision int8`` (ONNX Runtime dynamic, per-channel QInt8, the thin MatMuls in fp32), with the
hidden MatMuls of chosen coupling layers kept in fp32 too, verified exactly as the bundle's variant is
(``export.variants.variant_errors``: quantile and MAP differences in fp32 half-widths).

    python benchmarks/int8_exclusions.py --bundle B --grid train.h5 [--seed 0] [--keep 0-3 --keep 0-7 ...]

Each ``--keep A-B`` is one variant: the hidden MatMuls of ``/layers.A`` .. ``/layers.B`` stay fp32 (layer 0 is the
last the sampler runs, next to x). Without ``--keep`` only the bundle's own recipe (no extra layer) is measured.
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


def main(argv: list[str] | None = None) -> int:
    """Quantize and verify one variant per ``--keep``; print one line each."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.variants import thin_matmuls, variant_errors

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--grid", required=True, type=Path, help="PySME grid to verify on (never the held-out set)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the verification spectra")
    parser.add_argument("--keep", action="append", default=[], help="A-B: coupling layers whose hidden MatMuls "
                        "stay fp32 (repeat for more variants)")
    args = parser.parse_args(argv)
    source = args.bundle / "hoisted_flow.onnx"
    model = onnx.load(str(source))
    thin = thin_matmuls(model)
    hidden = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in thin]
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ["", *args.keep]:
            low, high = (int(v) for v in spec.split("-")) if spec else (1, 0)
            kept = [h for h in hidden if low <= _layer(h) <= high]
            graph = Path(tmp) / f"int8_{spec or 'recipe'}.onnx"
            quantize_dynamic(str(source), str(graph), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=thin + kept)
            e = variant_errors(args.bundle, "int8", graph, args.grid, seed=args.seed)
            print(f"fp32 also in layers {spec or '(none)'}: {len(hidden) - len(kept)} of {len(hidden)} hidden MatMuls "
                  f"int8; quantile error max {e['quantile_error']:.4f}, median {e['quantile_error_median']:.4f}; "
                  f"MAP p95 {e['map_error']:.4f} (tolerance {e['tolerance']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
