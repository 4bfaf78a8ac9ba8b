"""The GPU measurement, run by ``benchmarks/gpu.sh`` on a GPU machine: spectra/s of the sampler on the device.

    python benchmarks/gpu.py --out DIR [--bundle TRAINED_BUNDLE --grid GRID] [--spectra 2048]

For the paper-size flow (untrained, exported here) and, when given, a trained bundle, 4096 samples per spectrum:
* sampling stage (features, projection, flow and the summary graph on the device through IO binding; only the
  summaries come back), spectra/s, for each provider (CUDA, TensorRT when ONNX Runtime offers it) and precision
  (fp32, fp16, bf16), with and without CUDA graphs on CUDA;
* end to end (``runtime process``: Zarr in -> catalogue out, one worker on the device) at the best setting;
* the quantile agreement of fp16/bf16 with fp32 (device summaries against the fp32 CPU reference), in half-widths;
* PyTorch on the same GPU as a reference: the paper's way (FrEIA eager, fp32) and the hoisted flow in bf16 autocast
  (also the fallback figure when onnxruntime-gpu cannot be installed, labelled as such);
against the paper's 100 spectra/s (RTX 6000 Ada), the half-day target (93 spectra/s), the goal of 3,400 spectra/s
end to end (4 M spectra in 20 minutes) and the arithmetic bound (≈ 71 GFLOP per spectrum hoisted).
Writes ``gpu.json`` and ``gpu.md`` into ``--out``. Never used by the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

SAMPLES = 4096
HALF_DAY = 4_000_000 / (12 * 3600)
GOAL = 3400.0
PAPER_GPU = 100.0


def gpu_name() -> dict:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        out = f"nvidia-smi failed: {exc}"
    info = {"nvidia_smi": out}
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(torch_name=p.name, multiprocessors=p.multi_processor_count, memory_gb=p.total_memory / 1e9)
    except ImportError:
        pass
    return info


def bf16_peak() -> float | None:
    """Measured dense bf16 TFLOP/s of this GPU (8192^3 product, torch), for the arithmetic bound."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


def _rate(fn, n: int, repeats: int = 3) -> float:
    fn()  # warm-up (and TensorRT engine build)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def onnx_rates(bundle_path: Path, flux: np.ndarray, snr: np.ndarray, reference, batches: tuple[int, ...]) -> list:
    """Sampling-stage spectra/s for each provider x precision x CUDA graph x spectra per call."""
    import onnxruntime as ort

    from runtime.bundle import load_bundle
    from runtime.sampler import OnnxPosterior

    bundle = load_bundle(bundle_path)
    available = ort.get_available_providers()
    devices = [d for d, p in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"))
               if p in available]
    ids = np.arange(flux.shape[0])
    rows = []
    for device in devices:
        for precision in ("fp32", "fp16", "bf16"):
            if precision != "fp32" and precision not in bundle.manifest.precisions:
                continue
            for batch in batches:
                for graph in ((False, True) if device == "cuda" else (False,)):
                    row = {"device": device, "precision": precision, "spectra_per_call": batch, "cuda_graph": graph}
                    try:
                        post = OnnxPosterior(bundle, device=device, precision=precision, force_precision=True,
                                             summary="device", cuda_graph=graph, max_rows=batch * SAMPLES,
                                             n_samples=SAMPLES)
                        row["providers"] = post.providers
                        row["spectra_per_s"] = _rate(lambda p=post: p.posterior(flux, snr, ids, 0, SAMPLES),
                                                     flux.shape[0])
                        if reference is not None:
                            row["agreement"] = agreement(post.posterior(flux[:64], snr[:64], ids[:64], 0, SAMPLES),
                                                         reference)
                    except Exception as exc:  # a provider/precision that fails is reported, not fatal
                        row["error"] = f"{type(exc).__name__}: {exc}"[:400]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def agreement(summary, reference) -> dict:
    """|quantile and MAP differences| / fp32 68 % half-width: max and median."""
    from spectra.contracts import quantiles as quantile_levels

    q = reference.quantiles
    half = 0.5 * (q[:, quantile_levels.index("p84")] - q[:, quantile_levels.index("p16")])
    ok = np.isfinite(half) & (half > 0)
    dq = (np.abs(summary.quantiles - q) / np.where(ok, half, np.nan)[:, None, :])
    dm = np.abs(summary.map - reference.map) / np.where(ok, half, np.nan)
    dq, dm = dq[np.isfinite(dq)], dm[np.isfinite(dm)]
    return {"quantile_max": float(dq.max()), "quantile_median": float(np.median(dq)),
            "map_p95": float(np.percentile(dm, 95))}


def torch_rates(run: Path, flux: np.ndarray, snr: np.ndarray) -> dict:
    """The paper's way on this GPU (FrEIA eager fp32, one spectrum x 4096 samples per call), and the hoisted flow
    in bf16 autocast with many spectra per call: PyTorch figures on the same weights."""
    import torch

    from export.hoisted import hoisted_modules
    from training.fit import load_run

    model, _, _ = load_run(run)
    model = model.float().eval().cuda()
    projection, flow = (m.cuda() for m in hoisted_modules(model))
    f = torch.from_numpy(flux).cuda()
    s = torch.from_numpy(snr.reshape(-1, 1).astype(np.float32)).cuda()
    n = flux.shape[0]

    def eager():
        with torch.no_grad():
            for i in range(n):
                c = model.features(f[i:i + 1], s[i:i + 1])
                model.reverse(torch.randn(SAMPLES, model.n_params, device="cuda"), c.expand(SAMPLES, -1))
        torch.cuda.synchronize()

    def hoisted_bf16(per_call: int = 64):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for a in range(0, n, per_call):
                proj = projection(model.features(f[a:a + per_call], s[a:a + per_call]))
                flow(torch.randn(proj.shape[0], SAMPLES, model.n_params, device="cuda"), proj.float())
        torch.cuda.synchronize()

    return {"pytorch_eager_fp32": _rate(eager, n, repeats=1),
            "pytorch_hoisted_bf16_autocast": _rate(hoisted_bf16, n)}


def end_to_end(bundle_path: Path, flux: np.ndarray, snr: np.ndarray, tmp: Path, best: dict) -> dict:
    import zarr

    from runtime.bundle import load_bundle
    from runtime.pipeline import ProcessOptions, process_survey

    survey = tmp / "survey.zarr"
    root = zarr.open_group(str(survey), mode="w")
    root.create_array("flux", data=flux, chunks=(256, flux.shape[1]))
    root.create_array("snr", data=snr, chunks=(256,))
    root.create_array("source_id", data=np.arange(flux.shape[0], dtype=np.int64), chunks=(256,))
    root.create_array("wavelength", data=load_bundle(bundle_path).wavelength)
    root.attrs["continuum_kind"] = load_bundle(bundle_path).manifest.continuum
    options = ProcessOptions(samples=SAMPLES, device=best["device"], precision=best["precision"],
                             force_precision=True, summary="device", cuda_graph=best["cuda_graph"],
                             batch=best["spectra_per_call"])
    report = process_survey(survey, bundle_path, tmp / "catalogue.zarr", options, workers=1, progress=False)
    return {**{k: best[k] for k in ("device", "precision", "cuda_graph", "spectra_per_call")},
            "rows": flux.shape[0], "spectra_per_s": report.spectra_per_second, "task_seconds": report.timings}


def measure(name: str, bundle: Path, run: Path | None, flux, snr, tmp: Path, batches) -> dict:
    from runtime.bundle import load_bundle
    from runtime.sampler import OnnxPosterior

    print(f"== {name}", flush=True)
    out: dict = {"bundle": str(bundle)}
    reference = OnnxPosterior(load_bundle(bundle), device="cpu", precision="fp32", summary="host").posterior(
        flux[:64], snr[:64], np.arange(64), 0, SAMPLES)
    try:
        out["onnx"] = onnx_rates(bundle, flux, snr, reference, batches)
    except Exception:
        out["onnx_error"] = traceback.format_exc()[-1500:]
    ok = [r for r in out.get("onnx", []) if "spectra_per_s" in r]
    if ok:
        best = max(ok, key=lambda r: r["spectra_per_s"])
        try:
            out["end_to_end"] = end_to_end(bundle, flux, snr, tmp, best)
        except Exception:
            out["end_to_end_error"] = traceback.format_exc()[-1500:]
    if run is not None:
        try:
            out["torch"] = torch_rates(run, flux[:256], snr[:256])
        except Exception:
            out["torch_error"] = traceback.format_exc()[-1500:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--bundle", help="a trained bundle (with fp16/bf16 variants from export quantize)")
    parser.add_argument("--run", help="its training run (PyTorch reference figures)")
    parser.add_argument("--spectra", type=int, default=2048, help="spectra per timing")
    parser.add_argument("--batches", default="64,256", help="spectra per device call to try")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime as ort

    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": gpu_name(), "python": platform.python_version(),
              "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
              "bf16_tflops": bf16_peak(), "samples": SAMPLES, "spectra": args.spectra}
    batches = tuple(int(b) for b in args.batches.split(","))
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp())
    try:
        from export.onnx import export_bundle
        from export.variants import make_variant, variant_errors  # noqa: F401  (fails early if export is broken)
        from training.config import CONFIGS
        from training.fit import save_untrained_run

        _, run = save_untrained_run(CONFIGS["paper"], 25_200, 13, tmp / "paper_run")
        paper = export_bundle(run, tmp / "paper_bundle")
        _add_unverified_variants(paper)
        flux = rng.uniform(0.5, 1.0, (args.spectra, 25_200)).astype(np.float32)
        snr = np.full(args.spectra, 250.0)
        report["paper size (untrained)"] = measure("paper size", paper, run, flux, snr, tmp / "p", batches)
        if args.bundle:
            from runtime.bundle import load_bundle

            n_pix = load_bundle(args.bundle).manifest.n_pixels
            flux_t = rng.uniform(0.5, 1.0, (args.spectra, n_pix)).astype(np.float32)
            report["trained bundle"] = measure("trained", Path(args.bundle), Path(args.run) if args.run else None,
                                               flux_t, snr, tmp / "t", batches)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=1))
    (out / "gpu.md").write_text(render(report))
    print((out / "gpu.md").read_text())


def _add_unverified_variants(bundle: Path) -> None:
    """fp16 and bf16 variants for the untrained paper-size model (speed only: an untrained flow's posteriors say
    nothing about accuracy; the trained bundle's variants carry their verification)."""
    from export.variants import make_variant
    from runtime.bundle import hash_files, load_bundle, write_manifest

    raw = dict(load_bundle(bundle, check_graphs=False).manifest.raw)
    variants = {}
    for precision in ("fp16", "bf16"):
        target = f"hoisted_flow.{precision}.onnx"
        staging = bundle.parent / target
        make_variant(precision, bundle / "hoisted_flow.onnx", staging)
        shutil.move(staging, bundle / target)
        variants[precision] = {"files": {"hoisted_flow": target}, "verification": None,
                               "unverified_reason": "untrained model, speed measurement only"}
    raw["precisions"] = variants
    raw["files"] = hash_files(bundle, raw)
    write_manifest(bundle, raw)


def render(r: dict) -> str:
    gpu = r["gpu"]
    peak = r["bf16_tflops"] or float("nan")
    lines = ["# GPU throughput", "", f"Measured on {r['date']} by `bash benchmarks/gpu.sh`: {gpu.get('nvidia_smi')} "
             f"({gpu.get('multiprocessors', '?')} SMs); measured dense bf16 peak {peak:.0f} TFLOP/s; "
             f"ONNX Runtime {r['onnxruntime']}; Python {r['python']}. "
             f"{r['spectra']} spectra per timing, {r['samples']} samples each.", "",
             "Targets: half a day for 4 M spectra = 93 spectra/s; the goal 3,400 spectra/s end to end (4 M in "
             "20 min); the paper: 100 spectra/s on an RTX 6000 Ada.", ""]
    bound = (r["bf16_tflops"] or 800) * 1e12 / (17.42e6 * SAMPLES)  # 17.4 MFLOP per sample, hoisted
    lines += [f"Arithmetic bound at paper size: 17.4 MFLOP per sample x 4096 = 71 GFLOP per spectrum -> "
              f"{bound:,.0f} spectra/s at the measured bf16 peak.", ""]
    for name in ("paper size (untrained)", "trained bundle"):
        m = r.get(name)
        if not m:
            continue
        lines += [f"## {name}", "", "| provider | precision | CUDA graph | spectra per call | spectra/s | vs 93/s | "
                  "vs paper 100/s | quantiles vs fp32 (max / median half-widths) | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in m.get("onnx", []):
            rate = row.get("spectra_per_s")
            agree = row.get("agreement")
            speed = f"{rate:,.1f} | {rate / HALF_DAY:.1f}x | {rate / PAPER_GPU:.1f}x" if rate else "- | - | -"
            close = f"{agree['quantile_max']:.3f} / {agree['quantile_median']:.4f}" if agree else "-"
            lines.append(f"| {row['device']} | {row['precision']} | {'yes' if row['cuda_graph'] else 'no'} | "
                         f"{row['spectra_per_call']} | {speed} | {close} | {row.get('error', '')[:120]} |")
        if "onnx_error" in m:
            lines += ["", "ONNX Runtime GPU path failed:", "", "```", m["onnx_error"], "```"]
        e = m.get("end_to_end")
        if e:
            lines += ["", f"End to end (`runtime process`, Zarr in -> catalogue out, one worker, {e['device']} "
                      f"{e['precision']}, CUDA graph {e['cuda_graph']}, {e['spectra_per_call']} spectra per call): "
                      f"**{e['spectra_per_s']:,.1f} spectra/s** = {e['spectra_per_s'] / HALF_DAY:.1f}x the half-day "
                      f"target, {e['spectra_per_s'] / GOAL:.2f}x the 3,400/s goal; 4 M spectra in "
                      f"{4e6 / e['spectra_per_s'] / 3600:.2f} h."]
        t = m.get("torch")
        if t:
            lines += ["", "PyTorch on this GPU, same weights: FrEIA eager fp32 one spectrum per call (the paper's way) "
                      f"{t['pytorch_eager_fp32']:,.1f} spectra/s; hoisted flow in bf16 autocast, 64 spectra per call, "
                      f"{t['pytorch_hoisted_bf16_autocast']:,.1f} spectra/s (sampling only, no summary)."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
