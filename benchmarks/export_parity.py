"""Export + verify for the paper-size network (untrained) and a trained run; writes results/export_parity.md.

    python benchmarks/export_parity.py --run runs/small [--out benchmarks/results]

Reports graph sizes, node counts and the ONNX Runtime vs PyTorch errors of `export verify` (fp32, and fp16
when onnxconverter-common is installed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from export.onnx import export_bundle
from export.verify import FP32_TOLERANCE, verify_bundle
from training.config import CONFIGS
from training.fit import save_untrained_run

RESULTS = Path(__file__).parent / "results"


def paper_run(tmp: Path) -> Path:
    return save_untrained_run(CONFIGS["paper"], 25_200, 13, tmp / "paper_run", perturb=0.02)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a trained run (e.g. the small config)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--fp16", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows = {}
    try:
        for label, run in (("paper config, untrained (67.3 M parameters)", paper_run(tmp)),
                           (f"trained run {Path(args.run).name}", Path(args.run))):
            t = time.perf_counter()
            bundle = export_bundle(run, tmp / f"bundle{len(rows)}", fp16=args.fp16)
            export_s = time.perf_counter() - t
            report = verify_bundle(bundle, run, n_samples=4096)
            state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
            n_params = sum(v.numel() for k, v in state["model"].items()
                           if v.is_floating_point() and "mean" not in k and "std" not in k)
            rows[label] = {"export_seconds": export_s, "errors": report.errors, "fp16_errors": report.fp16_errors,
                           "graph_bytes": report.graph_bytes, "graph_nodes": report.graph_nodes,
                           "worst": report.worst, "ok": report.ok, "parameters": n_params}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    (out / "export_parity.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Export parity: ONNX Runtime vs PyTorch", "",
             f"Made by `python benchmarks/export_parity.py --run {args.run}{' --fp16' if args.fp16 else ''}` on "
             f"{time.strftime('%Y-%m-%d')}. Error = max |onnx - torch| / max(|torch|, 1); requirement <= "
             f"{FP32_TOLERANCE:.0e} in fp32. Inputs: random flux/S/N and noisy grid spectra; MAPs from 4096 samples "
             "per spectrum through `runtime.sampler` (numpy + onnxruntime) vs the same z through PyTorch.", ""]
    for label, r in rows.items():
        lines += [f"## {label}", "",
                  f"{r['parameters']:,} weights; export {r['export_seconds']:.1f} s; "
                  f"feature_extractor.onnx {r['graph_bytes']['feature_extractor'] / 1e6:.1f} MB, "
                  f"{r['graph_nodes']['feature_extractor']} nodes; inverse_flow.onnx "
                  f"{r['graph_bytes']['inverse_flow'] / 1e6:.1f} MB, {r['graph_nodes']['inverse_flow']} nodes. "
                  f"**{'PASS' if r['ok'] else 'FAIL'}** (worst {r['worst']:.1e}).", "",
                  "| check | fp32 error |" + (" fp16 error |" if r["fp16_errors"] else ""),
                  "|---|---|" + ("---|" if r["fp16_errors"] else "")]
        for key, err in r["errors"].items():
            extra = f" {r['fp16_errors'].get(key, float('nan')):.1e} |" if r["fp16_errors"] else ""
            lines.append(f"| {key} | {err:.1e} |{extra}")
        lines.append("")
    (out / "export_parity.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
