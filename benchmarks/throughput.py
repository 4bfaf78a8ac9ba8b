"""Throughput of posterior sampling and of `runtime process`, against the paper's figures.

    python benchmarks/throughput.py --bundle BUNDLE --run RUN --survey SURVEY.zarr [--paper-size] [--out DIR]

Measured in one process on this machine (CPU model recorded), so ratios are fair:
1. sampling stage alone (4096 samples per spectrum): ONNX Runtime (our runtime's sampler) on 1 and
   2 threads vs PyTorch eager FrEIA reverse pass on the same core(s) (the paper's way), for the
   trained bundle and, with ``--paper-size``, for an untrained model of the paper's exact size;
2. end to end (Zarr in -> catalogue out) with `runtime process`, 1 and 2 Dask workers (scaling efficiency);
3. FLOPs per posterior sample from the architecture and the fraction of this core's measured fp32
   matmul peak that the sampler reaches;
4. projection to 4 million spectra next to the paper: 100 spectra/s on an RTX 6000 Ada, 0.78 spectra/s
   on one AMD EPYC 9554P core, and the half-day target (>= 93 spectra/s).
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

from runtime.bundle import load_bundle
from runtime.pipeline import ProcessOptions, process_survey
from runtime.sampler import OnnxPosterior
from training.config import CONFIGS
from training.fit import load_run, save_untrained_run
from training.model import CINN

RESULTS = Path(__file__).parent / "results"
SURVEY_SIZE = 4_000_000
HALF_DAY_RATE = SURVEY_SIZE / (12 * 3600)


def cpu_info() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    return {"model": fields.get("Model name", "?").strip(), "cores": len(os.sched_getaffinity(0)),
            "avx512": "avx512f" in flags, "avx2": "avx2" in flags}


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


def matmul_peak(threads: int) -> float:
    torch.set_num_threads(threads)
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


def time_it(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def sampling_rates(model: CINN, bundle_path: Path, n_spectra: int, samples: int, threads: int) -> dict:
    """spectra/s of the sampling stage (features + 4096 flow samples + summaries excluded) for both back-ends."""
    rng = np.random.default_rng(0)
    flux = rng.uniform(0.5, 1.0, (n_spectra, model.n_pixels)).astype(np.float32)
    snr = np.full((n_spectra, 1), 250.0, dtype=np.float32)
    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_path)
    ids = np.arange(n_spectra)
    plain = OnnxPosterior(bundle, device="cpu", threads=threads, max_rows=8 * samples, use_hoisted=False)
    plain_s = time_it(lambda: plain.sample(flux, snr, ids, 0, samples))
    post = OnnxPosterior(bundle, device="cpu", threads=threads, max_rows=8 * samples)
    onnx_s = time_it(lambda: post.sample(flux, snr, ids, 0, samples))
    model = model.float().eval()

    def torch_run():
        with torch.no_grad():
            for i in range(n_spectra):
                c = model.features(torch.from_numpy(flux[i:i + 1]), torch.from_numpy(snr[i:i + 1]))
                z = torch.randn(samples, model.n_params)
                model.reverse(z, c.expand(samples, -1))

    torch_s = time_it(torch_run)
    return {"threads": threads, "onnx_spectra_per_s": n_spectra / onnx_s, "torch_spectra_per_s": n_spectra / torch_s,
            "onnx_plain_spectra_per_s": n_spectra / plain_s, "onnx_over_torch": torch_s / onnx_s,
            "hoisted": post.hoisted}


def _independent_worker(bundle_path: str, survey: str, n_spectra: int, barrier) -> float:
    """One process: sample + summarise ``n_spectra`` survey spectra (16 at a time), no Dask; spectra/s."""
    import zarr

    from runtime.bundle import load_bundle as load
    from runtime.sampler import OnnxPosterior as Posterior

    posterior = Posterior(load(bundle_path), device="cpu", threads=1)
    root = zarr.open_group(survey, mode="r")
    flux = root["flux"][:n_spectra].astype(np.float32)
    snr = root["snr"][:n_spectra].astype(float).reshape(-1, 1)
    ids = root["source_id"][:n_spectra]
    posterior.posterior(flux[:2], snr[:2], ids[:2], 0, 4096)  # warm-up
    barrier.wait()
    start = time.perf_counter()
    for b in range(0, n_spectra, 16):
        posterior.posterior(flux[b:b + 16], snr[b:b + 16], ids[b:b + 16], 0, 4096)
    return n_spectra / (time.perf_counter() - start)


def independent_processes(bundle_path: str, survey: str, n_spectra: int = 128) -> dict:
    """The machine's own ceiling for 1 -> 2 processes: the same sampling work in 1 and in 2 independent
    processes started together (no Dask, no shared anything): what 'perfect' scaling looks like here."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    rates = {}
    ctx = mp.get_context("spawn")
    for n in (1, 2):
        with ctx.Manager() as manager:
            barrier = manager.Barrier(n)
            with ProcessPoolExecutor(n, mp_context=ctx) as pool:
                futures = [pool.submit(_independent_worker, bundle_path, survey, n_spectra, barrier) for _ in range(n)]
                rates[n] = [f.result() for f in futures]
    return {"per_process_spectra_per_s": rates, "efficiency_1_to_2": sum(rates[2]) / (2 * rates[1][0])}


def paper_size_bundle(tmp: Path) -> tuple[CINN, Path]:
    from export.onnx import export_bundle

    model, run = save_untrained_run(CONFIGS["paper"], 25_200, 13, tmp / "paper_run")
    return model, export_bundle(run, tmp / "paper_bundle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--survey", required=True, help="survey for the end-to-end figure")
    parser.add_argument("--e2e-rows", type=int, default=1024, help="survey rows used end to end")
    parser.add_argument("--paper-size", action="store_true")
    parser.add_argument("--spectra", type=int, default=8, help="spectra per sampling timing")
    parser.add_argument("--chunk", type=int, default=32, help="catalogue rows per Dask task end to end")
    parser.add_argument("--skip-sampling", action="store_true", help="only the end-to-end and scaling figures")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = [f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
             for k, v in vars(args).items() if k != "out" and v is not False]
    report = {"cpu": cpu_info(), "date": time.strftime("%Y-%m-%d"), "samples": 4096,
              "command": "python benchmarks/throughput.py " + " ".join(flags)}
    report["matmul_peak_gflops"] = {t: matmul_peak(t) for t in (1, 2)}
    model, config, _ = load_run(args.run)
    models = {"small (trained)": (model, config, Path(args.bundle))}
    tmp = Path(tempfile.mkdtemp())
    try:
        if args.paper_size:
            paper_model, paper_bundle = paper_size_bundle(tmp)
            models["paper size (untrained)"] = (paper_model, CONFIGS["paper"], paper_bundle)
        report["sampling"] = {}
        for name, (m, cfg, bundle) in ([] if args.skip_sampling else models.items()):
            fl = flops_per_sample(cfg)
            rows = [sampling_rates(m, bundle, args.spectra, 4096, t) for t in (1, 2)]
            for r in rows:
                flops = fl["flops_hoisted" if r["hoisted"] else "flops"]
                r["flow_gflops_per_s"] = r["onnx_spectra_per_s"] * 4096 * flops / 1e9
                r["fraction_of_matmul_peak"] = r["flow_gflops_per_s"] / report["matmul_peak_gflops"][r["threads"]]
            report["sampling"][name] = {"flops_per_sample": fl, "rates": rows}

        # end to end: Zarr in -> catalogue out, 1 and 2 workers, on the first e2e_rows rows
        import zarr

        src = zarr.open_group(args.survey, mode="r")
        sub = tmp / "survey.zarr"
        root = zarr.open_group(str(sub), mode="w")
        for key in ("flux", "snr", "source_id", "wavelength"):
            data = src[key][: args.e2e_rows] if key != "wavelength" else src[key][:]
            chunks = (args.chunk, *data.shape[1:]) if key != "wavelength" else data.shape
            root.create_array(key, data=data, chunks=chunks)
        e2e, in_process = {}, None
        from dask.distributed import LocalCluster

        opts = ProcessOptions(samples=4096, device="cpu", threads=1)
        t = time.perf_counter()
        process_survey(sub, args.bundle, tmp / "cat_inproc.zarr", opts, workers=1, progress=False)
        in_process = args.e2e_rows / (time.perf_counter() - t)
        for workers in (1, 2):  # Dask workers of an already running cluster: start-up excluded, like a long survey
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster:
                t = time.perf_counter()
                process_survey(sub, args.bundle, tmp / f"cat{workers}.zarr", opts,
                               scheduler=cluster.scheduler_address, progress=False)
                e2e[workers] = args.e2e_rows / (time.perf_counter() - t)
        report["end_to_end"] = {"rows": args.e2e_rows, "chunk": args.chunk, "spectra_per_s": e2e,
                                "in_process_1_worker": in_process, "scaling_efficiency_1_to_2": e2e[2] / (2 * e2e[1])}
        report["independent_processes"] = independent_processes(str(Path(args.bundle).resolve()), str(sub))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stem = "throughput_scaling" if args.skip_sampling else "throughput"  # never overwrite a full report with part
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(render(report))
    print((out / f"{stem}.md").read_text())


def render(r: dict) -> str:
    cpu = r["cpu"]
    lines = ["# Throughput", "", f"Made by `{r['command']}` on {r['date']}.", "",
             f"Machine: {cpu['model']}, {cpu['cores']} cores available, AVX-512 {'yes' if cpu['avx512'] else 'no'}, "
             f"AVX2 {'yes' if cpu['avx2'] else 'no'}; no GPU. Measured fp32 matmul peak (4096x512 @ 512x512, torch): "
             f"{r['matmul_peak_gflops'][1]:.0f} GFLOP/s on 1 core, {r['matmul_peak_gflops'][2]:.0f} on 2.", "",
             "## Sampling stage (features + 4096 flow samples per spectrum)", "",
             "| model | FLOP/sample (hoisted) | threads | ONNX Runtime, plain graphs | ONNX Runtime, hoisted "
             "(runtime default) | PyTorch eager | hoisted/PyTorch | flow GFLOP/s | of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in r["sampling"].items():
        fl = s["flops_per_sample"]
        for row in s["rates"]:
            lines.append(f"| {name} | {fl['flops'] / 1e6:.2f} M ({fl['flops_hoisted'] / 1e6:.2f} M) | {row['threads']} "
                         f"| {row['onnx_plain_spectra_per_s']:.2f} | {row['onnx_spectra_per_s']:.2f} "
                         f"| {row['torch_spectra_per_s']:.2f} "
                         f"| {row['onnx_over_torch']:.2f}x | {row['flow_gflops_per_s']:.1f} "
                         f"| {100 * row['fraction_of_matmul_peak']:.0f} % |")
    e = r["end_to_end"]
    lines += ["", "## End to end (`runtime process`, Zarr in -> catalogue out, 4096 samples, trained small bundle)",
              "",
              f"{e['rows']} spectra on a running Dask LocalCluster (start-up excluded, as in a long survey): "
              f"{e['spectra_per_s'][1]:.2f} spectra/s with 1 worker, {e['spectra_per_s'][2]:.2f} with 2 workers: "
              f"scaling efficiency **{100 * e['scaling_efficiency_1_to_2']:.0f} %** from 1 to 2 workers. "
              f"Without Dask (`--workers 1`, in-process): {e['in_process_1_worker']:.2f} spectra/s. "
              f"Tasks of {e.get('chunk', 32)} rows.", ""]
    if "independent_processes" in r:
        ip = r["independent_processes"]
        lines += [f"The machine's own ceiling, without Dask: the same sampling work in 1 process ran at "
                  f"{ip['per_process_spectra_per_s'][1][0]:.2f} spectra/s; in 2 independent processes started "
                  f"together at {', '.join(f'{v:.2f}' for v in ip['per_process_spectra_per_s'][2])} spectra/s each: "
                  f"**{100 * ip['efficiency_1_to_2']:.0f} %** efficiency. Dask's end-to-end figure above is to be "
                  f"read against this (shared caches, memory bandwidth and clock of the two cores), not 100 %.", ""]
    lines += [
              "## Projection to the 4MIDABLE-HR survey (4 million spectra)", "",
              "| configuration | spectra/s | time for 4 M spectra | vs half-day target (93 spectra/s) |",
              "|---|---|---|---|",
              "| paper: RTX 6000 Ada GPU | 100 | 11.1 h | 1.08x |",
              "| paper: one EPYC 9554P core (Zen 4), PyTorch | 0.78 | 59 d | 0.008x |"]
    for name, s in r["sampling"].items():
        for row in s["rates"]:
            rate = row["onnx_spectra_per_s"]
            lines.append(f"| ours, {name}, ONNX Runtime, {row['threads']} core(s) here | {rate:.2f} | "
                         f"{SURVEY_SIZE / rate / 86400:.1f} d | {rate / HALF_DAY_RATE:.3f}x |")
    rate = e["spectra_per_s"][2]
    lines.append(f"| ours, small, end to end, 2 workers here | {rate:.2f} | {SURVEY_SIZE / rate / 86400:.1f} d | "
                 f"{rate / HALF_DAY_RATE:.3f}x |")
    lines += ["", "The paper-size row is the fair per-core comparison with the paper's 0.78 spectra/s (same "
              "architecture, 4096 samples); the PyTorch eager column is the paper's way of sampling measured in the "
              "same run on the same core(s). No GPU was lent to this session: GPU figures are not measured.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
