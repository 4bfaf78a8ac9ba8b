"""Emulator recipes compared on the emulator's own validation stars: which output layer, width, length and
regularisation make the best labels -> spectrum network from a few hundred PySME spectra (issue 20).

    python benchmarks/emulator_study.py --grid train.h5 [--recipe NAME=ARGS ...] [--work DIR] [--out DIR]

Each recipe is a set of ``training emulator-fit`` options (``--recipe "pca384=--basis 384 --steps 20000"``;
without ``--recipe``, :data:`RECIPES`, the session-12 study). Every recipe sees the same training/validation split
(``EmulatorConfig.seed`` 0: 10 % of the grid's stars, never fitted), so the table compares recipes, not splits;
the fixed held-out set is not used, so choosing a recipe here does not bias the accuracy reports that use it.
Per recipe: per-spectrum rms of PySME − emulator on the validation stars (median, 95th percentile), the training
wall time and the number of weights. The folder of a finished recipe is reused, so an interrupted study resumes.
Writes ``results/emulator/recipe_study.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from _common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.cli import build_parser, emulator_config  # noqa: E402
from training.emulator import EmulatorConfig, fit_emulator, validation_residuals  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "emulator"
PCA = "--basis 384 --hidden 512,512,512,512 --batch-size 128 --lr 1e-3 --schedule onecycle"
RECIPES: dict[str, str] = {
    "per-pixel head, 4000 steps (the recipe up to session 11)": "--hidden 256,256,512 --steps 4000",
    "PCA 384, 256-256-512, 3000 steps": "--basis 384 --hidden 256,256,512 --steps 3000 --schedule onecycle",
    "PCA 384, 256-256-512, 20 000 steps": "--basis 384 --hidden 256,256,512 --steps 20000 --schedule onecycle",
    "PCA 384, 3 x 512, 20 000 steps, batch 128": "--basis 384 --hidden 512,512,512 --steps 20000 --batch-size 128 "
                                                 "--schedule onecycle",
    "PCA 384, 4 x 512, 20 000 steps, wd 1e-5": f"{PCA} --steps 20000 --weight-decay 1e-5",
    "PCA 384, 4 x 512, 40 000 steps, wd 1e-5": f"{PCA} --steps 40000 --weight-decay 1e-5",
    "PCA 256, 4 x 512, 20 000 steps, wd 1e-5": f"{PCA.replace('384', '256')} --steps 20000 --weight-decay 1e-5",
    "PCA 384, 4 x 512, 20 000 steps, wd 1e-4 (the default model's)": f"{PCA} --steps 20000 --weight-decay 1e-4",
}


def recipe_config(args: str) -> EmulatorConfig:
    """The ``EmulatorConfig`` that ``training emulator-fit`` would build from these options."""
    return emulator_config(build_parser().parse_args(["emulator-fit", "--grid", "x", "--out", "x",
                                                      *shlex.split(args)]))


def measure(name: str, args: str, grids: list[str], folder: Path) -> dict:
    """Train (or reuse) one recipe and measure it on its validation stars."""
    record_path = folder / "emulator.json"
    record = (json.loads(record_path.read_text()) if record_path.is_file()
              else fit_emulator(grids, folder, recipe_config(args), progress=False))
    rms = np.sqrt(np.mean(validation_residuals(folder).astype(float) ** 2, axis=1))
    return {"name": name, "args": args, "folder": str(folder), "n_train": record["n_train"], "n_val": record["n_val"],
            "rms_median": float(np.median(rms)), "rms_p95": float(np.percentile(rms, 95)),
            "seconds": record["cpu_seconds"], "parameters": record["parameters"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", nargs="+", required=True, help="unrotated training grid(s), as emulator-fit takes")
    parser.add_argument("--recipe", action="append", metavar="NAME=ARGS", help="a recipe (repeatable)")
    parser.add_argument("--work", default="emulator-study", help="folder for the trained recipes (reused)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    recipes = dict(r.split("=", 1) for r in args.recipe) if args.recipe else RECIPES
    work = Path(args.work)
    rows = []
    for i, (name, options) in enumerate(recipes.items()):
        rows.append(measure(name, options, args.grid, work / f"recipe{i}"))
        print(f"{name}: validation rms median {100 * rows[-1]['rms_median']:.3f} %", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe_study.json").write_text(json.dumps({"machine": machine(), "grids": args.grid, "rows": rows},
                                                      indent=1))
    lines = ["# Emulator recipes on the emulator's own validation stars", "",
             f"`python benchmarks/emulator_study.py --grid {' '.join(args.grid)}` · {machine()} · "
             f"{rows[0]['n_train']} training and {rows[0]['n_val']} validation stars (the same split for every "
             "recipe; the fixed held-out set is not used here).", "",
             "| recipe | `training emulator-fit` options | rms median | rms 95th pct | training [s] | weights |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | `{r['args']}` | {100 * r['rms_median']:.3f} % | {100 * r['rms_p95']:.2f} % | "
              f"{r['seconds']:.0f} | {r['parameters'] / 1e6:.2f} M |" for r in rows]
    (out / "recipe_study.md").write_text("\n".join(lines) + "\n")
    print(f"{out / 'recipe_study.md'}")


if __name__ == "__main__":
    main()
