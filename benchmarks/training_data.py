"""Accuracy and calibration on the fixed held-out PySME test set for models trained on different data.

    python benchmarks/training_data.py --model NAME EVAL_DIR RUN_DIR DESCRIPTION [--model ...] [--out DIR]

Each EVAL_DIR is the output of ``training evaluate --split all`` of RUN_DIR on the held-out test grid (never
seen by any model or emulator). The table gives, per model and S/N (20, 50, 250): sigma of MAP - truth for
T_eff, log g, [Fe/H], [Mg/Fe], [Ca/Fe], the 68 % coverage of all 13 parameters (range) and the training CPU
time from the run's history, against the goals of issue 16 (S/N 250: 60 K, 0.15, 0.08, 0.08, 0.08; coverage
0.63-0.73 for all 13).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SHOWN = (("teff", "T_eff [K]", 60.0, "{:.0f}"), ("logg", "log g", 0.15, "{:.2f}"), ("fe_h", "[Fe/H]", 0.08, "{:.3f}"),
         ("mg_fe", "[Mg/Fe]", 0.08, "{:.3f}"), ("ca_fe", "[Ca/Fe]", 0.08, "{:.3f}"))


def training_seconds(run: Path) -> float:
    """Wall seconds of training: ``training fit`` records the seconds since the start of each call in
    ``history.json``; a resumed run restarts that clock, so the end of every call is summed."""
    seconds = [r["seconds"] for r in json.loads((Path(run) / "history.json").read_text())]
    ends = [s for s, after in itertools.pairwise(seconds) if after < s]
    return float(sum(ends) + (seconds[-1] if seconds else 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs=4, action="append", required=True,
                        metavar=("NAME", "EVAL_DIR", "RUN_DIR", "DESCRIPTION"))
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    rows, record = [], {"models": []}
    for name, evaluation, run, description in args.model:
        metrics = json.loads((Path(evaluation) / "metrics.json").read_text())
        seconds = training_seconds(Path(run))
        entry = {"name": name, "description": description, "evaluation": str(evaluation), "run": str(run),
                 "n_spectra": metrics["n_spectra"], "train_seconds": seconds, "per_snr": {}}
        for snr, block in metrics["per_snr"].items():
            params = block["params"]
            cover = [p["coverage68"] for p in params.values()]
            entry["per_snr"][snr] = {"sigma": {k: params[k]["sigma"] for k, *_ in SHOWN if k in params},
                                     "coverage68_min": min(cover), "coverage68_max": max(cover),
                                     "coverage95_min": min(p["coverage95"] for p in params.values()),
                                     "coverage95_max": max(p["coverage95"] for p in params.values())}
            cells = [fmt.format(params[k]["sigma"]) if k in params else "-" for k, _, _, fmt in SHOWN]
            rows.append(f"| {name} | {snr} | " + " | ".join(cells) + f" | {min(cover):.2f}-{max(cover):.2f} | "
                        f"{entry['per_snr'][snr]['coverage95_min']:.2f}-{entry['per_snr'][snr]['coverage95_max']:.2f}"
                        f" | {(seconds or float('nan')) / 60:.0f} min |")
        record["models"].append(entry)
    lines = ["# Training data: PySME-only against emulated spectra", "",
             "Accuracy on the **fixed held-out PySME test set** (`training/grids/test-s9001-*`, 200 stars never seen "
             "by any model or emulator), noisy copies at each S/N, 4096 posterior samples: sigma of MAP - truth, and "
             "the range over all 13 parameters of the 68 % / 95 % interval coverage (ideal 0.68 / 0.95).", "",
             "| model | S/N | " + " | ".join(label for _, label, _, _ in SHOWN) + " | 68 % coverage (13 params) | "
             "95 % coverage | training CPU |", "|---|---|" + "---|" * len(SHOWN) + "---|---|---|", *rows, "",
             "Goal at S/N 250 (issue 16): " + ", ".join(f"{label} <= {goal:g}" for _, label, goal, _ in SHOWN)
             + ", 68 % coverage 0.63-0.73 for all 13 parameters.", "", "Models:", ""]
    lines += [f"- **{m['name']}**: {m['description']} (`{m['run']}`)" for m in record["models"]]
    lines += ["", *args.note, ""]
    out = Path(args.out)
    (out / "training_data.json").write_text(json.dumps(record, indent=1))
    (out / "training_data.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
