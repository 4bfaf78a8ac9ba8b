"""How to spend a node's cores: Dask workers x engine threads, for each CPU engine, end to end.

    python benchmarks/workers_threads.py [--bundle B] [--survey S.zarr] [--rows 1024] [--out DIR]

For each engine (ONNX Runtime; OpenVINO when installed) at its ``auto`` precision on this CPU, ``runtime process``
runs the same rows with every layout of this machine's cores: 1 worker x T threads (in process) and W workers x 1
thread (the run's own local Dask cluster), W x T = the cores available. The run's own seconds are compared
(``ProcessReport.seconds``: shards computed and written; the cluster's start-up, a few seconds once per run, is
excluded as it is in a survey of hours). Writes ``workers_threads.md`` and ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import survey_subset

from runtime.engines import bf16_hardware, cpu_features, cpu_model, engine_version, openvino_available
from runtime.pipeline import ProcessOptions, process_survey

RESULTS = Path(__file__).parent / "results"


def _layouts(cores: int) -> list[tuple[int, int]]:
    """(workers, threads) pairs with workers x threads = cores: one process with every thread, or one thread each."""
    return sorted({(1, cores), (cores, 1)} | {(w, cores // w) for w in range(1, cores + 1) if cores % w == 0})


def main() -> None:
    from runtime.packaged import default_bundle, unpack_examples

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="model bundle (default: the packaged default model)")
    parser.add_argument("--survey", help="survey Zarr (default: the packaged synthetic example)")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    bundle = Path(args.bundle) if args.bundle else default_bundle()
    tmp = Path(tempfile.mkdtemp())
    results = []
    try:
        survey = Path(args.survey) if args.survey else next(
            p for p in unpack_examples(tmp / "examples") if "synthetic" in p.name)
        sub = survey_subset(survey, args.rows, tmp)
        engines = ["onnxruntime"] + (["openvino"] if openvino_available() else [])
        for engine in engines:
            for workers, threads in _layouts(cores):
                options = ProcessOptions(samples=args.samples, device="cpu", engine=engine, threads=threads)
                target = tmp / f"c_{engine}_{workers}x{threads}.zarr"
                print(f"{engine}: {workers} worker(s) x {threads} thread(s) ...", flush=True)
                report = process_survey(sub, bundle, target, options, workers=workers, progress=False)
                results.append({"engine": report.engine, "precision": report.precision, "workers": workers,
                                "threads": threads, "rows": report.n_rows, "seconds": report.seconds,
                                "spectra_per_s": report.spectra_per_second})
                shutil.rmtree(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"cpu": cpu_model(), "flags": list(cpu_features()), "bf16_hardware": bf16_hardware(), "cores": cores,
              "load_average_at_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d"),
              "openvino": engine_version("openvino"), "onnxruntime": engine_version("onnxruntime"),
              "bundle": str(args.bundle or "the packaged default model"), "results": results,
              "command": "python benchmarks/workers_threads.py " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "out")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "workers_threads.json").write_text(json.dumps(report, indent=1))
    (out / "workers_threads.md").write_text(render(report))
    print((out / "workers_threads.md").read_text())


def render(r: dict) -> str:
    lines = ["# Workers x threads, end to end (`runtime process`)", "", f"Made by `{r['command']}` on {r['date']}.",
             "", f"Machine: {r['cpu']} ({', '.join(r['flags'])}; bf16 units: {'yes' if r['bf16_hardware'] else 'no'}),"
             f" {r['cores']} cores available, load average at start {r['load_average_at_start']:.2f}; onnxruntime "
             f"{r['onnxruntime']}, openvino {r['openvino'] or 'not installed'}; bundle: {r['bundle']}; 4096 samples "
             "per spectrum, each engine at its `auto` precision on this CPU.", "",
             "| engine | precision | workers x threads | rows | spectra/s | vs the engine's best |",
             "|---|---|---|---|---|---|"]
    best = {}
    for e in r["results"]:
        best[e["engine"]] = max(best.get(e["engine"], 0.0), e["spectra_per_s"])
    for e in r["results"]:
        lines.append(f"| {e['engine']} | {e['precision']} | {e['workers']} x {e['threads']} | {e['rows']} | "
                     f"{e['spectra_per_s']:.2f} | {e['spectra_per_s'] / best[e['engine']]:.2f} |")
    lines += ["", "Seconds are the run's own (shards computed and written), without the local cluster's start-up.",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
