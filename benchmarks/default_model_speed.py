"""End-to-end speed of model bundles on one CPU core, measured in one run: ``runtime process`` in-process (Zarr in,
catalogue out, 4096 samples, the re-simulation check included), one ONNX Runtime thread, interleaved repeats.

    python benchmarks/default_model_speed.py --bundle NEW --bundle OLD --survey S.zarr [--rows 120] [--core 0]
        [--precision auto --precision auto] --out benchmarks/results/default_model_speed.md

``--precision`` (one per ``--bundle``, default auto) lets the same bundle appear twice, e.g. its int8 next to its
fp32, to see how much of a difference is the flow's arithmetic. The engine and precision each row ran with are read
back from its catalogue and printed.

Each repeat processes the same first ``--rows`` rows with each bundle in turn (best of ``--repeats`` is kept, so a
busy neighbour does not decide the ratio); the process is pinned to ``--core``. The machine is recorded.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", required=True, help="a bundle (repeat to compare)")
    parser.add_argument("--label", action="append", help="a name per --bundle")
    parser.add_argument("--precision", action="append", help="a runtime precision per --bundle (default auto)")
    parser.add_argument("--survey", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.core})
    import zarr

    from catalog.writers import CatalogueStore
    from runtime.pipeline import ProcessOptions, process_survey

    labels = args.label or [str(b) for b in args.bundle]
    precisions = args.precision or ["auto"] * len(args.bundle)
    if len(precisions) != len(args.bundle) or len(labels) != len(args.bundle):
        parser.error("give one --label and (if any) one --precision per --bundle")
    ran: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp())
    try:
        subset = tmp / "subset.zarr"
        source = zarr.open_group(str(args.survey), mode="r")
        target = zarr.open_group(str(subset), mode="w")
        target.attrs.update(source.attrs.asdict())
        for name in source.array_keys():
            array = source[name]
            data = array[: args.rows] if array.shape and array.shape[0] == source["source_id"].shape[0] else array[:]
            copy = target.create_array(name, shape=data.shape, dtype=data.dtype,
                                       chunks=(min(args.rows, 64), *data.shape[1:]) if data.ndim else None)
            copy[...] = data
            copy.attrs.update(array.attrs.asdict())
        best: dict[str, float] = {}
        for repeat in range(args.repeats + 1):  # the first round warms caches and sessions, not counted
            for label, bundle, precision in zip(labels, args.bundle, precisions, strict=True):
                options = ProcessOptions(samples=4096, device="cpu", threads=1, precision=precision)
                out = tmp / f"{repeat}-{labels.index(label)}.zarr"
                start = time.perf_counter()
                process_survey(subset, bundle, out, options, progress=False)
                seconds = time.perf_counter() - start
                attrs = CatalogueStore.open(out).attrs
                ran[label] = f"{attrs['engine']} {attrs['precision']}"
                shutil.rmtree(out)
                if repeat:
                    best[label] = min(best.get(label, float("inf")), seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = ["# End-to-end speed of the model bundles on one core", "",
             f"`python benchmarks/default_model_speed.py` on {_cpu()} (one core pinned, one ONNX Runtime thread), "
             f"{args.rows} rows of `{args.survey}`, 4096 samples, the re-simulation check included; best of "
             f"{args.repeats} interleaved repeats. Engine and precision as each run recorded them in its "
             "catalogue.", "",
             "| bundle | ran as | spectra/s | ms per spectrum |", "|---|---|---|---|"]
    for label in labels:
        rate = args.rows / best[label]
        lines.append(f"| {label} | {ran[label]} | {rate:.1f} | {1000 / rate:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
