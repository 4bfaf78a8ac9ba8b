"""The information limit of the fixed held-out set: Cramér–Rao bound per parameter at several S/N, and the floor
the emulator's own error puts under any model trained on emulated spectra; writes
results/information_limit/report.md + bound.json (+ per_star.json).

    python benchmarks/information_limit.py [--emulator runtime/default_bundle | EMULATOR_RUN] \
        [--grid test.h5 | training/grids/test-sun-s9001-*.h5] [--snr 20,50,250] [--stars N] [--out DIR]

Why: an accuracy table alone cannot say whether a network is poor or the data are; the bound is the yardstick
(``training evaluate --bound bound.json`` adds σ / bound to its report). Method (``training.information``):
for each held-out star, the emulated spectrum at its 25 emulator labels, rotated by its v_broad with
``spectra.forward.rotation.Rotator``; J = ∂flux/∂label for all 26 labels by central differences (v_broad through the
Rotator); Eq. 1 noise σ_i = f_i / (S/N_Å √Δλ); bound = √diag(F⁻¹), F = Jᵀ diag(σ⁻²) J, every other label
marginalised. F is computed once per star at S/N 1 (the bound scales as 1/(S/N)). Floor: the shift of a
linearised likelihood fit δ = F⁻¹ Jᵀ diag(σ⁻²) (PySME − emulator), both rotated; independent of S/N.

``--emulator``: a model bundle (its ONNX emulator graph via onnxruntime, as ``runtime.resim``) or an emulator
run folder (``training emulator-fit --out``; torch). ``--grid``: an unrotated PySME grid file, or packed shards
(``spectra pack-grid``; unpacked into a temporary folder); default the shipped held-out shards.

What a trained estimator can reach is less than the bound, because its spectra hold less than Eq. 1 says; the
report adds two bounds of the training setup (``training.information.nuisance_bound``, one per S/N): *normalised*,
the network's input pixels (the input mask's pixels left out) with the pseudo-continuum's B-spline coefficients
(``spectra.forward.continuum.BatchNormaliser``'s basis) free and marginalised; and, with ``--model-error`` (a cINN
run's ``model_error.npy``: the emulator residuals its training stars carry, one at random with a random sign), that
plus Gaussian noise of those residuals' covariance (each rotated with the star). The cINN sees exactly these
nuisances in training, so they, not the bound, are its best case on the emulator's own spectra.

Pixels: the emulator's output and the PySME spectra may each be stored with a wavelength margin beyond the HR
windows (``spectra.wavegrid.hr_grid(margin)``, not necessarily the same); each is rotated on its own pixels and
cropped to the 25 200 HR pixels (``spectra.forward.rotation.hr_rotator``), where the bound and the floor are taken.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from _common import machine
from tqdm.auto import tqdm

from spectra import schema
from spectra.contracts.masks import input_mask
from spectra.forward.degrade import noise_sigma
from spectra.forward.rotation import hr_rotator
from spectra.stores.gridstore import GridReader
from spectra.wavegrid import hr_grid
from training.information import central_jacobian, cramer_rao_bound, fit_shift, nuisance_bound

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "information_limit"
HEADLINE = ("teff", "logg", "fe_h", "mg_fe", "ca_fe")
# Central-difference steps: small against the labels' posterior widths, large against float32 rounding of the
# emulator (whose output changes by ~1e-7 for a 1e-5 input change).
STEPS = {"teff": 10.0, "logg": 0.02, "fe_h": 0.02, "vmic": 0.05, "vbroad": 0.5}
ABUNDANCE_STEP = 0.02


class RotatedEmulator:
    """Labels in grid order (M, 26) -> emulated spectra rotated by each row's v_broad, on the HR pixels (M, P),
    float64 (rotated on the emulator's margin, if its pixel grid has one)."""

    def __init__(self, source: str | Path, label_names: list[str], threads: int = 1):
        source = Path(source)
        self.run: Callable[[np.ndarray], np.ndarray]
        if (source / "manifest.json").is_file():
            import onnxruntime as ort

            from runtime.bundle import load_bundle

            bundle = load_bundle(source, check_graphs=False)
            entry = bundle.emulator
            if not entry:
                raise SystemExit(f"{source}: the bundle carries no emulator (export attach-emulator)")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(bundle.path / entry["file"]), options,
                                           providers=["CPUExecutionProvider"])
            self.run = lambda x: session.run(None, {"labels": x.astype(np.float32)})[0]
            inputs, wavelength = list(entry["inputs"]), bundle.wavelength
            if entry.get("margin"):  # export attach-emulator: it outputs the HR grid with this margin
                wavelength = hr_grid(float(entry["margin"])).wave
            self.description = f"ONNX emulator of bundle `{shown(source)}`" + (
                f" (trained on {entry['training']['n_train']} spectra)" if "training" in entry else "")
        elif (source / "emulator.pt").is_file():
            import torch

            from training.emulator import emulate, load_emulator

            torch.set_num_threads(threads)
            model, record, wavelength = load_emulator(source)
            self.run = lambda x: emulate(model, x)
            inputs = list(record["inputs"])
            self.description = f"torch emulator run `{shown(source)}` (trained on {record['n_train']} spectra)"
        else:
            raise SystemExit(f"{source}: neither a model bundle (manifest.json) nor an emulator run (emulator.pt)")
        try:
            self.rotator = hr_rotator(wavelength)
        except ValueError:
            raise SystemExit(f"{source}: the emulator's pixel grid is not the HR grid (with or without a margin)") \
                from None
        missing = [n for n in inputs if n not in label_names]
        if missing:
            raise SystemExit(f"{source}: emulator inputs {missing} are not grid labels")
        self.index = [label_names.index(n) for n in inputs]
        self.vbroad = label_names.index("vbroad")

    def unrotated(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(np.asarray(labels)[:, self.index]), dtype=np.float64)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=float)
        return self.rotator(self.unrotated(labels), labels[:, self.vbroad])


def open_grid(paths: list[str], scratch: Path) -> Path:
    """An ordinary grid file: the one given, or packed shards unpacked into ``scratch``."""
    files = [Path(p) for p in paths]
    with h5py.File(files[0], "r") as f:
        packed = f.attrs.get("format") == "cinn4most-gridpack/1"
    if not packed:
        if len(files) > 1:
            raise SystemExit("--grid: give one grid file, or the packed shards of one grid")
        return files[0]
    from spectra.stores.gridpack import unpack_grid

    return unpack_grid(files, scratch / "grid.h5")


def shown(path: str | Path) -> str:
    """A path as the report shows it: relative to the repository when inside it (reports are committed)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def steps_for(names: list[str], labels: np.ndarray) -> np.ndarray:
    """Per-label steps; v_broad's is halved near 0 so that θ − h stays a valid rotation."""
    h = np.array([STEPS.get(n, ABUNDANCE_STEP) for n in names])
    iv = names.index("vbroad")
    h[iv] = min(h[iv], 0.5 * labels[iv])
    return h


def continuum_columns(wave: np.ndarray) -> np.ndarray:
    """(P, K) the B-spline basis of the pseudo-continuum fit (``BatchNormaliser``: its knots, each stretch's
    basis placed on its pixels): a normalised spectrum keeps nothing that these functions times it can absorb."""
    from spectra.forward.continuum import BatchNormaliser

    stretches = BatchNormaliser(wave).stretches
    out = np.zeros((wave.size, sum(s.basis.shape[1] for s in stretches)))
    col = 0
    for s in stretches:
        out[s.part, col:col + s.basis.shape[1]] = s.basis
        col += s.basis.shape[1]
    return out


def summarise(values: np.ndarray) -> dict:
    """rms and median over stars of one parameter's bound (or |floor|)."""
    return {"rms": float(np.sqrt(np.mean(values**2))), "median": float(np.median(values))}


def fmt(x: float) -> str:
    return "∞" if np.isinf(x) else "nan" if not np.isfinite(x) else f"{x:.3g}"


def setup_tables(result: dict, units: dict) -> list[str]:
    """The bounds of the training setup (module docstring), headline parameters, against the plain bound."""
    setups = result.get("setup_bound") or {}
    if not setups:
        return []
    m = result["meta"]
    lines = ["## What the network's input holds (the bounds of the training setup)", "",
             f"Normalised: the pixels outside the input mask `{m['input_mask']}`, the pseudo-continuum's B-spline "
             "coefficients free and marginalised." + (
                 f" + model error: and Gaussian noise of the covariance of the {m['model_error_residuals']} emulator "
                 f"residuals in `{m['model_error']}` (one of them with a random sign, rotated with the star), as in "
                 "the cINN's training." if m.get("model_error") else ""),
             "rms over the stars (median star in brackets); in brackets after the setup, × the plain bound's rms.", "",
             "| S/N per Å | setup | " + " | ".join(f"{n} [{units[n]}]" for n in HEADLINE) + " |",
             "|---|---" + "|---" * len(HEADLINE) + "|"]
    for key in result["bound"]:
        plain = result["bound"][key]
        lines.append(f"| {key} | Eq. 1 bound | " + " | ".join(
            f"{fmt(plain[n]['rms'])} ({fmt(plain[n]['median'])})" for n in HEADLINE) + " |")
        for setup, per_snr in setups.items():
            b = per_snr[key]
            lines.append(f"| {key} | {setup} | " + " | ".join(
                f"{fmt(b[n]['rms'])} ({fmt(b[n]['median'])}; {b[n]['rms'] / plain[n]['rms']:.2f}×)"
                for n in HEADLINE) + " |")
    return [*lines, ""]


def render(result: dict) -> str:
    units = {p.name: p.unit for p in schema.ALL_LABELS}
    snr_keys = list(result["bound"])

    def table(names: list[str] | tuple[str, ...]) -> list[str]:
        lines = ["| S/N per Å | " + " | ".join(f"{n} [{units[n]}]" for n in names) + " |",
                 "|---" * (len(names) + 1) + "|"]
        for key in snr_keys:
            b = result["bound"][key]
            lines.append(f"| {key} | " + " | ".join(f"{fmt(b[n]['rms'])} ({fmt(b[n]['median'])})" for n in names)
                         + " |")
        f = result["floor"]
        lines.append("| emulator floor | " + " | ".join(f"{fmt(f[n]['rms'])} ({fmt(f[n]['median_abs'])})"
                                                     for n in names) + " |")
        return lines

    targets = schema.target_names()
    nuisance = [p.name for p in schema.NUISANCE]
    m = result["meta"]
    lines = [f"# Information limit of the held-out set ({m['n_stars']} stars)", "",
             f"Emulator: {m['emulator_description']}. Stars: `{m['grid']}` (unrotated PySME, prior "
             f"{m['prior']}, seed {m['seed']}). {m['seconds']:.0f} s on {m['machine']}.", "",
             "Per star: the emulated spectrum at its labels, rotated by its v_broad; J = ∂flux/∂label for all "
             f"{len(result['parameters'])} labels by central differences (steps: " +
             ", ".join(f"{k} {v:g}" for k, v in m["steps"].items()) + f", abundances {m['abundance_step']:g}; "
             "v_broad through the Rotator); Eq. 1 noise on "
             f"{m['pixel_width']:g} Å pixels (σ_i = f_i / (S/N_Å √Δλ)); F = Jᵀ diag(σ⁻²) J; "
             "bound = √diag(F⁻¹), every other label marginalised (`training/information.py`).", "",
             "Entries: root-mean-square over the stars (median star in brackets). Emulator floor: the shift of a "
             "linearised likelihood fit F⁻¹ Jᵀ diag(σ⁻²) (PySME − emulator), both rotated, independent of S/N: "
             "rms over the stars (median |shift| in brackets) — the error left at infinite S/N for anything trained "
             "on this emulator's spectra and tested on PySME's.", "",
             "## Headline parameters", "", *table(HEADLINE), "",
             *setup_tables(result, units),
             "## All 13 network targets", "", *table(targets), "",
             "## The 13 nuisance abundances (not inferred, marginalised above)", "", *table(nuisance), "",
             "An accuracy report is put against this with `training evaluate --bound "
             "benchmarks/results/information_limit/bound.json` (column σ / bound = rms(MAP − truth) / rms bound, "
             "1 = as good as any unbiased estimator can be). The floor is not part of the bound: a likelihood fit "
             "with this emulator on PySME spectra has rms error ≈ √(bound² + floor²), and a network trained on "
             "this emulator's spectra inherits the floor too.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emulator", default=str(ROOT / "runtime" / "default_bundle"),
                        help="model bundle with an emulator, or an emulator run folder (training emulator-fit)")
    parser.add_argument("--grid", nargs="+", default=sorted(map(str, (ROOT / "training" / "grids").glob(
        "test-sun-s9001-*.h5"))), help="unrotated PySME grid file, or packed shards of one (default: the fixed "
                        "held-out set made with the calibrated list the default model is trained on)")
    parser.add_argument("--snr", default="20,50,250", help="S/N per Å, comma-separated")
    parser.add_argument("--stars", type=int, help="only the first N stars")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--model-error", help="a cINN run's model_error.npy (the emulator residuals its training "
                        "stars carry): adds the bound with them as correlated noise")
    parser.add_argument("--input-mask", default="model-invalid",
                        help="the input mask of the normalised bound (spectra.contracts.masks.INPUT_MASKS; 'none': no "
                        "mask)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    snrs = [float(s) for s in args.snr.split(",") if s.strip()]
    if not snrs or min(snrs) <= 0:
        raise SystemExit(f"--snr: positive values needed, got {args.snr!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = hr_grid()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        grid_path = open_grid(args.grid, Path(scratch))
        with GridReader(grid_path) as reader:
            if reader.attrs.get("rotation") != "none":
                raise SystemExit(f"{grid_path}: rotation = {reader.attrs.get('rotation')!r}; an unrotated PySME "
                                 "grid is needed (the stars are rotated here by their v_broad)")
            names = list(reader.label_names)
            rows = np.flatnonzero(reader.done)[:args.stars]
            labels = reader.labels[rows]
            pysme = np.stack([reader.flux[int(i), :] for i in rows]).astype(np.float64)
            pysme_rotator = hr_rotator(reader.wavelength)  # on the grid's margin, if it has one -> HR pixels
            attrs = dict(reader.attrs)
    model = RotatedEmulator(args.emulator, names, args.threads)
    iv = names.index("vbroad")
    n, d = len(rows), len(names)
    bound1, floor, emu_rms = np.empty((n, d)), np.empty((n, d)), np.empty(n)
    setups = ["normalised"] + (["normalised + model error"] if args.model_error else [])
    setup_bound = {k: np.empty((len(snrs), n, d)) for k in setups}
    continuum_basis = continuum_columns(grid.wave)
    masked = np.zeros(grid.size, dtype=bool) if args.input_mask == "none" else input_mask(grid.wave, args.input_mask)[0]
    residuals = np.load(args.model_error).astype(np.float64) if args.model_error else None
    for i in tqdm(range(n), desc="information limit", unit="star", disable=args.quiet):
        theta = labels[i]
        emulated = model(theta[None])[0]
        jacobian = central_jacobian(model, theta, steps_for(names, theta))
        sigma = noise_sigma(emulated, 1.0, grid.step)  # S/N 1 per Å; bound(S/N) = bound(1) / (S/N)
        bound1[i], _ = cramer_rao_bound(jacobian, sigma)
        residual = pysme_rotator(pysme[i], theta[iv]) - emulated
        floor[i] = fit_shift(jacobian, sigma, residual)
        emu_rms[i] = np.sqrt(np.mean(residual**2))
        free = emulated[:, None] * continuum_basis
        correlated = None
        if residuals is not None:  # one of K residuals with a random sign: covariance (1/K) sum r r^T
            correlated = model.rotator(residuals, theta[iv]).T / np.sqrt(len(residuals))
        s_input = np.where(masked, np.nan, sigma)  # the network's input pixels, S/N 1
        setup_bound["normalised"][:, i] = nuisance_bound(jacobian, s_input, free=free, snr=snrs)
        if correlated is not None:
            setup_bound["normalised + model error"][:, i] = nuisance_bound(jacobian, s_input, free=free,
                                                                           correlated=correlated, snr=snrs)
    seconds = time.perf_counter() - start

    result = {
        "meta": {"emulator": shown(args.emulator), "emulator_description": model.description,
                 "grid": ", ".join(map(shown, args.grid)), "prior": attrs.get("prior"), "seed": attrs.get("seed"),
                 "n_stars": int(n), "steps": STEPS, "abundance_step": ABUNDANCE_STEP, "pixel_width": grid.step,
                 "noise": "paper Eq. 1: sigma_i = f_i / (S/N per A * sqrt(pixel width)), f = emulated, rotated",
                 "emulator_rms_vs_pysme_median": float(np.median(emu_rms)), "seconds": round(seconds, 1),
                 "input_mask": args.input_mask, "model_error": shown(args.model_error) if args.model_error else None,
                 "model_error_residuals": None if residuals is None else len(residuals),
                 "machine": machine()},
        "parameters": names,
        "bound": {f"{s:g}": {name: summarise(bound1[:, k] / s) for k, name in enumerate(names)} for s in snrs},
        "setup_bound": {setup: {f"{s:g}": {name: summarise(values[j, :, k]) for k, name in enumerate(names)}
                                for j, s in enumerate(snrs)} for setup, values in setup_bound.items()},
        "floor": {name: {"rms": float(np.sqrt(np.mean(floor[:, k] ** 2))),
                         "median_abs": float(np.median(np.abs(floor[:, k]))), "mean": float(np.mean(floor[:, k]))}
                  for k, name in enumerate(names)},
    }
    (out / "bound.json").write_text(json.dumps(result, indent=1))
    (out / "per_star.json").write_text(json.dumps({
        "rows": rows.tolist(), "parameters": names, "labels": labels.round(4).tolist(),
        "bound_at_snr1": [[float(f"{x:.4g}") for x in b] for b in bound1],
        "floor": [[float(f"{x:.4g}") for x in f] for f in floor],
        "emulator_rms_vs_pysme": [float(f"{x:.4g}") for x in emu_rms]}, indent=None))
    (out / "report.md").write_text(render(result))
    print(f"{out / 'report.md'}: {n} stars, {seconds:.0f} s")
    for key, per in result["bound"].items():
        print(f"  S/N {key}: " + ", ".join(f"{p} {fmt(per[p]['rms'])} ({fmt(per[p]['median'])})" for p in HEADLINE))
    print("  floor: " + ", ".join(f"{p} {fmt(result['floor'][p]['rms'])}" for p in HEADLINE))


if __name__ == "__main__":
    main()
