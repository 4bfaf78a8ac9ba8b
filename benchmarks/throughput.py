"""Throughput of posterior sampling and of `runtime process` on one CPU core, against the paper's figures.

    python benchmarks/throughput.py [--bundle BUNDLE --run RUN] [--survey SURVEY.zarr] [--core 0] [--out DIR]

Defaults: the packaged default model (its training run is not shipped, so its PyTorch eager column is left out
unless ``--run`` is given) and the packaged synthetic example survey.

Everything runs in one process pinned to one core (``--core``), so the ratios compare like with like:
1. sampling stage (features + 4096 flow samples per spectrum + the summary), interleaved repeats, best of each:
   PyTorch eager FrEIA reverse pass (the paper's way), ONNX Runtime plain fp32 graph, hoisted fp32 graph, the
   hoisted int8 variant, and OpenVINO (``runtime.engines``) fp32 and, on CPUs with bf16 units (AMX, AVX-512 BF16),
   bf16, for an untrained model of the paper's exact size and for the trained ``--bundle``;
2. the summary on the CPU: numpy reference against the ``posterior_summary.onnx`` graph, ms per spectrum;
3. end to end (``runtime process``: Zarr in -> catalogue out, in-process, one thread) on the trained bundle for
   each engine and precision, against the sampling stage of the same spectra with the same engine and precision;
4. the projection to 4 million spectra next to the paper: 100 spectra/s on an RTX 6000 Ada, 0.78 spectra/s
   on one AMD EPYC 9554P core, and the half-day target (>= 93 spectra/s).
GPU figures come from ``benchmarks/gpu.sh`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import survey_subset

from runtime.bundle import load_bundle
from runtime.engines import bf16_hardware, cpu_features, engine_version, openvino_available
from runtime.pipeline import ProcessOptions, process_survey
from runtime.posterior import summarize
from runtime.precision import describe_check
from runtime.sampler import EXACT_MARGIN, EXACT_TOP, OnnxPosterior
from training.config import CONFIGS
from training.fit import load_run, save_untrained_run
from training.model import CINN

RESULTS = Path(__file__).parent / "results"
SURVEY_SIZE = 4_000_000
HALF_DAY_RATE = SURVEY_SIZE / (12 * 3600)
SAMPLES = 4096


def cpu_info() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {"model": fields.get("Model name", "?").strip(), "cores_available": len(os.sched_getaffinity(0)),
            "flags": list(cpu_features()), "bf16_hardware": bf16_hardware(),
            "openvino": engine_version("openvino"), "onnxruntime": engine_version("onnxruntime")}


def flops_per_sample(config, n_params: int = 13) -> dict:
    """Multiply-adds x 2 of the inverse flow per posterior sample; 'hoisted' excludes the condition
    term of each subnet's first layer (computable once per spectrum)."""
    split1, split2 = n_params // 2, n_params - n_params // 2
    f = config.feature_layers[-1]
    total = hoistable = 0
    for _ in range(config.n_blocks):
        for n_in, n_out in ((split1, 2 * split2), (split2, 2 * split1)):
            sizes = [n_in + f] + [config.subnet_width] * (config.subnet_layers - 1) + [n_out]
            total += sum(a * b for a, b in itertools.pairwise(sizes))
            hoistable += f * config.subnet_width
    return {"flops": 2 * total, "flops_hoisted": 2 * (total - hoistable)}


def matmul_peak() -> float:
    """Best fp32 GFLOP/s of a 4096x512 @ 512x512 product on this core (torch, oneDNN)."""
    a, b = torch.randn(4096, 512), torch.randn(512, 512)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 4096 * 512 * 512 / (time.perf_counter() - t))
    return best / 1e9


def _interleaved(methods: dict, repeats: int) -> dict[str, float]:
    """Best seconds of each method, the methods taking turns (so a slow spell of the machine hits them all)."""
    for fn in methods.values():
        fn()  # warm-up
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _engines_here() -> list[tuple[str, str]]:
    """(engine, precision) pairs beyond ONNX Runtime worth timing here: OpenVINO fp32, and bf16 only on bf16 units
    (elsewhere OpenVINO emulates bf16 in software, ~20x slower than fp32: a figure of no use to anyone)."""
    if not openvino_available():
        return []
    return [("openvino", "fp32")] + ([("openvino", "bf16")] if bf16_hardware() else [])


def sampling_rates(model: CINN | None, bundle_path: Path, flux: np.ndarray, snr: np.ndarray,
                   int8_graph: Path | None, repeats: int) -> dict:
    """spectra/s of the sampling stage (features + flow + summary) for each back-end, one thread; ``model``
    None leaves out PyTorch eager (ratios are then to ONNX Runtime's hoisted fp32 graph)."""
    n = flux.shape[0]
    ids = np.arange(n)
    bundle = load_bundle(bundle_path)
    posts = {"onnx_plain_fp32": OnnxPosterior(bundle, threads=1, use_hoisted=False, precision="fp32"),
             "onnx_hoisted_fp32": OnnxPosterior(bundle, threads=1, precision="fp32")}
    if int8_graph is not None:
        posts["onnx_hoisted_int8"] = OnnxPosterior(bundle, threads=1, precision="int8", flow_graph=int8_graph)
    for engine, precision in _engines_here():
        posts[f"{engine}_{precision}"] = OnnxPosterior(bundle, threads=1, engine=engine, precision=precision,
                                                       force_precision=True)  # speed: accuracy is in the manifest

    snr32 = snr.reshape(-1, 1).astype(np.float32)
    methods = {}

    def torch_eager():
        assert model is not None
        with torch.no_grad():
            for i in range(n):
                c = model.features(torch.from_numpy(flux[i:i + 1]), torch.from_numpy(snr32[i:i + 1]))
                z = torch.randn(SAMPLES, model.n_params)
                x, log_det = model.reverse(z, c.expand(SAMPLES, -1))
                log_p = -0.5 * (z.double() ** 2).sum(1).numpy() - log_det.double().numpy().reshape(-1)
                summarize(bundle.manifest.to_physical(x.numpy()[None]), log_p[None], bundle.manifest.lower,
                          bundle.manifest.upper)

    if model is not None:
        model = model.float().eval()
        methods["pytorch_eager"] = torch_eager
    for name, post in posts.items():
        methods[name] = (lambda p: lambda: p.posterior(flux, snr, ids, 0, SAMPLES))(post)
    best = _interleaved(methods, repeats)
    rates = {name: n / seconds for name, seconds in best.items()}
    base = "pytorch_eager" if model is not None else "onnx_hoisted_fp32"
    recomputed = {name: post.exact_counts[0] / post.exact_counts[1] for name, post in posts.items()
                  if getattr(post, "exact_counts", [0, 0])[1]}
    return {"spectra_per_s": rates, "over_pytorch": {k: v / rates[base] for k, v in rates.items()},
            "baseline": base, "spectra": n, "repeats": repeats, "fraction_recomputed_fp32": recomputed}


def summary_cost(bundle_path: Path, n: int = 16) -> dict:
    """ms per spectrum of the summary on this core: numpy reference vs the ONNX summary graph."""
    import onnxruntime as ort

    bundle = load_bundle(bundle_path)
    d = bundle.manifest.n_params
    rng = np.random.default_rng(0)
    x = (0.5 * rng.standard_normal((n, SAMPLES, d))).astype(np.float32)
    z = rng.standard_normal((n, SAMPLES, d)).astype(np.float32)
    log_det = rng.standard_normal((n, SAMPLES)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bundle.path / "posterior_summary.onnx"), options,
                                   providers=["CPUExecutionProvider"])

    def numpy_summary():
        logp = -0.5 * np.sum(z.astype(np.float64) ** 2, axis=2) - log_det
        summarize(bundle.manifest.to_physical(x), logp, bundle.manifest.lower, bundle.manifest.upper)

    best = _interleaved({"numpy": numpy_summary,
                         "onnx_graph": lambda: session.run(None, {"x": x, "log_jac_det": log_det, "z": z})}, 5)
    return {k: 1e3 * v / n for k, v in best.items()}


def end_to_end(bundle_path: Path, survey: Path, rows: int, tmp: Path, precision: str, engine: str = "onnxruntime",
               int8_graph: Path | None = None) -> dict:
    """``runtime process`` in this process (one thread) against the sampling stage of the same spectra, same
    engine and precision, arrays already in memory."""
    import zarr

    sub = survey_subset(survey, rows, tmp)
    root = zarr.open_group(str(sub), mode="r")
    rows = root["flux"].shape[0]
    flux = root["flux"][:].astype(np.float32)
    snr = root["snr"][:].astype(float)
    ids = root["source_id"][:]
    post = OnnxPosterior(load_bundle(bundle_path), threads=1, precision=precision, max_rows=16 * SAMPLES,
                         engine=engine, force_precision=True)
    post.posterior(flux[:2], snr[:2], ids[:2], 0, SAMPLES)
    t = time.perf_counter()
    for a in range(0, rows, 16):
        post.posterior(flux[a:a + 16], snr[a:a + 16], ids[a:a + 16], 0, SAMPLES)
    stage = rows / (time.perf_counter() - t)
    options = ProcessOptions(samples=SAMPLES, device="cpu", threads=1, precision=precision, engine=engine,
                             force_precision=True)
    target = tmp / f"catalogue_{engine}_{precision}.zarr"
    report = process_survey(sub, bundle_path, target, options, workers=1, progress=False)
    shutil.rmtree(target)
    check = report.timings.get("resim", 0.0)  # the re-simulation check, which the stage does not do
    without_check = rows / max(rows / report.spectra_per_second - check, 1e-9)
    return {"engine": engine, "precision": precision, "rows": rows, "stage_spectra_per_s": stage,
            "end_to_end_spectra_per_s": report.spectra_per_second,
            "ratio": report.spectra_per_second / stage, "task_seconds": report.timings,
            "check_ms_per_spectrum": 1e3 * check / rows, "ratio_without_check": without_check / stage}


def paper_size_bundle(tmp: Path) -> tuple[CINN, Path, Path]:
    """An untrained model of the paper's size, exported, and its int8 variant (speed only: the accuracy of int8
    is measured on trained bundles by ``export quantize``)."""
    from export.onnx import export_bundle
    from export.variants import make_variant

    model, run = save_untrained_run(CONFIGS["paper"], 25_200, 13, tmp / "paper_run")
    bundle = export_bundle(run, tmp / "paper_bundle")
    make_variant("int8", bundle / "hoisted_flow.onnx", tmp / "paper_int8.onnx")
    return model, bundle, tmp / "paper_int8.onnx"


def _bundle_with_int8(bundle_path: Path, grid: str | None, tmp: Path) -> tuple[Path, dict | None]:
    """The bundle, or a copy of it with an int8 variant verified on ``grid`` when it has none (None: no grid)."""
    bundle = load_bundle(bundle_path)
    if "int8" in bundle.manifest.precisions:
        return bundle_path, bundle.manifest.precisions["int8"]["verification"]
    if grid is None:
        return bundle_path, None
    from export.variants import quantize_bundle

    copy = tmp / "bundle_int8"
    shutil.copytree(bundle_path, copy)
    print("adding a verified int8 variant to a copy of the bundle ...", flush=True)
    quantize_bundle(copy, ["int8"], grid=grid, log=lambda *_: None)
    return copy, load_bundle(copy).manifest.precisions["int8"]["verification"]


def _bf16_verified_here(bundle_path: Path, grid: str | None, tmp: Path) -> tuple[Path, dict | None]:
    """The bundle, or a copy whose OpenVINO bf16 verification was remeasured on this CPU's bf16 units.

    The kernels OpenVINO picks for bf16 (and so its roundings) depend on the CPU's units (AMX tiles or AVX-512 BF16),
    so a verification recorded on another CPU says little about this one; with ``grid`` and bf16 hardware here the
    check is repeated on a copy (the bundle given is never written)."""
    bundle = load_bundle(bundle_path)
    recorded = bundle.manifest.engine_precisions.get("openvino", {}).get("bf16")
    if grid is None or not openvino_available() or not bf16_hardware():
        return bundle_path, recorded
    from export.variants import quantize_engine

    copy = tmp / "bundle_bf16_here"
    shutil.copytree(bundle_path, copy)
    print("verifying OpenVINO bf16 on this CPU (a copy of the bundle) ...", flush=True)
    entry = quantize_engine(copy, "openvino", ["bf16"], grid=grid, overwrite=True, log=lambda *_: None)
    return copy, entry["bf16"]


def _example_survey(tmp: Path) -> Path:
    from runtime.packaged import unpack_examples

    return next(p for p in unpack_examples(tmp / "examples") if "synthetic" in p.name)


def main() -> None:
    from runtime.packaged import default_bundle

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="trained bundle (default: the packaged default model)")
    parser.add_argument("--run", help="its training run (for the PyTorch eager figure of the trained bundle)")
    parser.add_argument("--grid", help="grid to verify on: an int8 variant when the bundle has none, and OpenVINO "
                        "bf16 on this CPU's bf16 units (on a copy of the bundle)")
    parser.add_argument("--survey", help="survey for the end-to-end figure (default: the packaged synthetic example)")
    parser.add_argument("--e2e-rows", type=int, default=512, help="survey rows used end to end")
    parser.add_argument("--spectra", type=int, default=4, help="spectra per sampling timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (best of each is kept)")
    parser.add_argument("--core", type=int, default=0, help="the CPU core everything runs on")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None]
    report = {"cpu": cpu_info(), "core": args.core, "date": time.strftime("%Y-%m-%d"), "samples": SAMPLES,
              "load_average_at_start": os.getloadavg()[0],
              "command": "python benchmarks/throughput.py " + " ".join(flags),
              "exact_top": EXACT_TOP, "exact_margin": EXACT_MARGIN}
    report["matmul_peak_gflops"] = matmul_peak()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    try:
        bundle_path, report["trained_int8_verification"] = _bundle_with_int8(
            Path(args.bundle) if args.bundle else default_bundle(), args.grid, tmp)
        bundle_path, report["trained_openvino_bf16"] = _bf16_verified_here(bundle_path, args.grid, tmp)
        bundle = load_bundle(bundle_path)
        provenance = bundle.manifest.raw["provenance"]
        report["trained_bundle"] = {"path": str(args.bundle or "the packaged default model"),
                                    "config": provenance["config"]["name"], "grid": Path(provenance["grid"]).name,
                                    "grid_rows": provenance.get("grid_attrs", {}).get("n"),
                                    "epoch": provenance["epoch"]}
        trained_model = load_run(args.run)[0] if args.run else None
        trained_config = CONFIGS.get(provenance["config"]["name"])
        paper_model, paper_bundle, paper_int8 = paper_size_bundle(tmp)
        flux = rng.uniform(0.5, 1.0, (args.spectra, 25_200)).astype(np.float32)
        snr = np.full(args.spectra, 250.0)
        report["sampling"] = {}
        int8 = bundle.manifest.precisions.get("int8")
        models = {"paper size (untrained)": (paper_model, CONFIGS["paper"], paper_bundle, paper_int8, args.spectra),
                  "trained bundle": (trained_model, trained_config, bundle_path,
                                     bundle_path / int8["files"]["hoisted_flow"] if int8 else None,
                                     8 * args.spectra)}
        for name, (model, config, path, int8_graph, n) in models.items():
            print(f"sampling stage: {name} ...", flush=True)
            rates = sampling_rates(model, path, np.resize(flux, (n, flux.shape[1])), np.resize(snr, n),
                                   int8_graph, args.repeats)
            if config is not None:
                fl = flops_per_sample(config)
                rates["flops_per_sample"] = fl
                rates["hoisted_fp32_gflops"] = rates["spectra_per_s"]["onnx_hoisted_fp32"] * SAMPLES * \
                    fl["flops_hoisted"] / 1e9
            report["sampling"][name] = rates
        report["summary_ms_per_spectrum"] = summary_cost(bundle_path)
        print("end to end ...", flush=True)
        survey = Path(args.survey) if args.survey else _example_survey(tmp)
        combos = [("onnxruntime", "fp32")] + ([("onnxruntime", "int8")] if int8 else []) + _engines_here()
        report["end_to_end"] = [end_to_end(bundle_path, survey, args.e2e_rows, tmp, p, engine=e) for e, p in combos]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "throughput.json").write_text(json.dumps(report, indent=1))
    (out / "throughput.md").write_text(render(report))
    print((out / "throughput.md").read_text())


_LABELS = {"pytorch_eager": "PyTorch eager (the paper's way)", "onnx_plain_fp32": "ONNX Runtime fp32, plain graph",
           "onnx_hoisted_fp32": "ONNX Runtime fp32, hoisted graph", "onnx_hoisted_int8": "ONNX Runtime int8, hoisted",
           "openvino_fp32": "OpenVINO fp32, hoisted", "openvino_bf16": "OpenVINO bf16, hoisted"}


def _check_line(what: str, v: dict | None) -> str:
    if not v:
        return f"{what}: not verified in this bundle."
    return (f"{what} ({v['spectra']} grid spectra x S/N {', '.join(str(int(s)) for s in v['snr'])}, {v['samples']} "
            f"samples, in fp32 68 % half-widths): {describe_check(v)}; median quantile difference "
            f"{v['quantile_error_median']:.4f}.")


def _recompute_lines(r: dict) -> list[str]:
    """What OpenVINO bf16 recomputed in fp32 (the MAP candidates and near-bound samples, ``runtime.sampler``)."""
    parts = [f"{100 * s['fraction_recomputed_fp32'][k]:.1f} % {name}" for name, s in r["sampling"].items()
             for k in s.get("fraction_recomputed_fp32", {})]
    if not parts:
        return []
    top, margin = r.get("exact_top", 32), r.get("exact_margin", 0.01)  # reports before session 17: 32, 0.01
    return [f"OpenVINO bf16 recomputes in fp32 the {top} samples of highest density of each spectrum and every sample "
            f"within {margin:g} standardised units of a training bound: {' and '.join(parts)} of the samples drawn "
            "here (an untrained flow is the identity, x = z, so its standard-normal samples crowd the bounds that lie "
            "within a few units of the centre; trained posteriors are narrower).", ""]


def _verified_on(entry: dict | None) -> str:
    where = (entry or {}).get("verified_on") or {}
    if not where:
        return "CPU not recorded"
    return f"verified on {where.get('cpu', '?')} with {', '.join(where.get('cpu_features', []))}, " \
        f"{where.get('arithmetic', '?')} arithmetic"


def render(r: dict) -> str:
    cpu = r["cpu"]
    bf16 = "bf16 units present" if cpu.get("bf16_hardware") else (
        "**no bf16 units** (no AMX, no AVX-512 BF16): OpenVINO bf16 would be emulated in software, ~20x slower than "
        "its fp32, so it is not timed here and `--engine auto` keeps ONNX Runtime")
    trained = r["trained_bundle"]
    lines = ["# Throughput on one CPU core", "", f"Made by `{r['command']}` on {r['date']}.", "",
             f"Machine: {cpu['model']} ({', '.join(cpu['flags'])}; {bf16}); onnxruntime {cpu.get('onnxruntime')}, "
             f"openvino {cpu.get('openvino') or 'not installed'}; everything pinned to core {r['core']} "
             f"(load average at start {r['load_average_at_start']:.2f}); no GPU (see `benchmarks/gpu.sh`). "
             f"fp32 matmul peak of this core (4096x512 @ 512x512, torch): {r['matmul_peak_gflops']:.0f} GFLOP/s. "
             f"Trained bundle: {trained.get('path', '')} (`{trained['config']}` config, trained on "
             f"{trained['grid']}, {trained['grid_rows']} spectra).",
             "", "## Sampling stage (features + 4096 flow samples + summary per spectrum), spectra/s", "",
             "Interleaved repeats, best of each; ratios to the first column measured in the same run on the same core "
             "(PyTorch eager where the training run was given, else ONNX Runtime's hoisted fp32 graph).", "",
             "| model | " + " | ".join(_LABELS.values()) + " |", "|---|" + "---|" * len(_LABELS)]
    for name, s in r["sampling"].items():
        cells = [f"{s['spectra_per_s'][k]:.2f} ({s['over_pytorch'][k]:.2f}x)" if k in s["spectra_per_s"] else "-"
                 for k in _LABELS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paper = r["sampling"]["paper size (untrained)"]
    fl, rates = paper["flops_per_sample"], paper["spectra_per_s"]
    best = max((k for k in rates if k != "pytorch_eager"), key=rates.get)
    lines += ["", f"Paper size: {fl['flops'] / 1e6:.1f} MFLOP per sample ({fl['flops_hoisted'] / 1e6:.1f} hoisted); "
              f"the hoisted fp32 graph runs at {paper['hoisted_fp32_gflops']:.0f} GFLOP/s, "
              f"{100 * paper['hoisted_fp32_gflops'] / r['matmul_peak_gflops']:.0f} % of the core's fp32 matmul peak. "
              f"int8 is {paper['over_pytorch']['onnx_hoisted_int8']:.2f}x PyTorch eager; **the fastest here is "
              f"{_LABELS[best]}: {paper['over_pytorch'][best]:.2f}x PyTorch eager**.", "",
              *_recompute_lines(r),
              _check_line("int8 accuracy (trained bundle, `export quantize`)", r["trained_int8_verification"]), "",
              _check_line("OpenVINO bf16 accuracy (trained bundle, `export quantize --engine openvino`, "
                          f"{_verified_on(r.get('trained_openvino_bf16'))})",
                          (r.get("trained_openvino_bf16") or {}).get("verification")), "",
              "## Summary on the CPU (rejection, MAP, 5 quantiles of 4096 x 13 samples)", "",
              f"numpy reference {r['summary_ms_per_spectrum']['numpy']:.2f} ms per spectrum, the ONNX summary graph "
              f"{r['summary_ms_per_spectrum']['onnx_graph']:.2f} ms (ONNX Runtime's CPU TopK is slow): on the CPU the "
              "runtime therefore summarises with numpy (`--summary auto`); on GPUs the graph keeps the samples on "
              "the device.", "",
              "## End to end (`runtime process`, Zarr in -> catalogue out, trained bundle, one core)", "",
              "| engine | precision | rows | sampling stage, spectra/s | end to end, spectra/s | end to end / stage | "
              "re-simulation check, ms per spectrum | end to end less the check / stage |",
              "|---|---|---|---|---|---|---|---|"]
    for e in r["end_to_end"]:
        extra = (f"{e['check_ms_per_spectrum']:.1f} | {100 * e['ratio_without_check']:.0f} %"
                 if "check_ms_per_spectrum" in e else "- | -")
        lines.append(f"| {e.get('engine', 'onnxruntime')} | {e['precision']} | {e['rows']} | "
                     f"{e['stage_spectra_per_s']:.2f} | {e['end_to_end_spectra_per_s']:.2f} | "
                     f"**{100 * e['ratio']:.0f} %** | {extra} |")
    lines += ["", "The stage figure samples and summarises the same spectra already in memory; end to end adds "
              "reading and decoding the survey (read ahead in a background thread), validation, flags, the "
              "re-simulation check and the catalogue shard writes (behind the next shard's compute), all on the "
              "same core.", "",
              "## Projection to the 4MIDABLE-HR survey (4 million spectra)", "",
              "| configuration | spectra/s | time for 4 M spectra | vs half-day target (93 spectra/s) |",
              "|---|---|---|---|",
              "| paper: RTX 6000 Ada GPU | 100 | 11.1 h | 1.08x |",
              "| paper: one EPYC 9554P core (Zen 4), PyTorch | 0.78 | 59 d | 0.008x |"]
    for name, s in r["sampling"].items():
        for key, rate in s["spectra_per_s"].items():
            if key == "onnx_plain_fp32":
                continue
            lines.append(f"| ours, {name}, {_LABELS[key]}, 1 core here | {rate:.2f} | "
                         f"{SURVEY_SIZE / rate / 86400:.1f} d | {rate / HALF_DAY_RATE:.3f}x |")
    rate = rates[best]
    lines.append(f"| ours, paper size, {_LABELS[best]}, a 64-core node of this CPU (64 workers x 1 thread, "
                 f"linear scaling assumed) | {64 * rate:.0f} | {SURVEY_SIZE / (64 * rate) / 3600:.1f} h | "
                 f"{64 * rate / HALF_DAY_RATE:.2f}x |")
    lines += ["", "The paper-size rows are the fair per-core comparison with the paper's 0.78 spectra/s (same "
              "architecture, 4096 samples). Scaling over workers and machines: `throughput_scaling.md` and "
              "`scale.md`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
