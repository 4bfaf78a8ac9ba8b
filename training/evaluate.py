"""Evaluate a trained cINN on a split of its grid, as in the paper's Sect. 4.2 and Appendix A.

For each spectrum of the split and each requested S/N a noisy copy is made (seeded by the spectrum's
row, the S/N and ``seed``), 4096 posterior samples are drawn with their densities, samples outside
the training bounds are rejected, and the MAP (highest-density valid sample) and quantiles are
computed with ``runtime.posterior.summarize`` (the same code the runtime uses). Parameters, transforms, bounds,
labels and units are the run's recorded schema (run.json), never the live ``spectra.schema``, so a later edit
of the schema cannot change the evaluation of a run trained before it. Reported per S/N and parameter:

* Table A.1 analogue: mean residual (MAP - truth) +/- its standard deviation;
* Table A.2 analogue: NRMSE = RMSE / (max - min of the parameter over the training rows);
* calibration: fraction of true values inside the central 68 % and 95 % intervals, and simulation-
  based-calibration (SBC) ranks: the fraction of valid samples below the truth, uniform if calibrated;
* median width of the 68 % interval and the mean rejected fraction;
* with ``bound`` (the ``bound.json`` of ``benchmarks/information_limit.py``): the efficiency σ / bound =
  rms(MAP - truth) / rms Cramér-Rao bound at that S/N, so that a poor network can be told from poor data
  (1 = as good as any unbiased estimator; 'n/a' for S/N values the bound file does not have).

Writes ``report.md``, ``metrics.json``, ``predicted_vs_true.png`` (Fig. 5 style), ``residuals_vs_snr.png``
(Fig. 4 style), ``sbc.png`` and ``evaluation.npz``: the per-spectrum numbers every metric is computed from (truth,
MAP, quantiles, valid samples, SBC ranks, S/N; one slice per S/N), so that a number of the report can be checked,
or another statistic computed, without re-running the evaluation.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from runtime.posterior import summarize
from spectra import schema
from spectra.common.outputs import claim_report_folder
from spectra.contracts import quantiles as quantile_levels
from spectra.contracts.density import log_density
from spectra.contracts.parameters import to_physical as standardised_to_physical
from spectra.stores.survey import SnrSpec

from .config import Config
from .data import GridData
from .fit import load_run, recorded_schema
from .model import CINN

__all__ = ["efficiency", "evaluate", "load_bound", "sample_posterior"]


def sample_posterior(model: CINN, flux: np.ndarray, snr: np.ndarray, n_samples: int, seeds: list,
                     device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardised posterior samples (N, S, D) and their log densities (N, S) for N spectra.

    ``seeds[i]`` seeds spectrum i's latent draws, so results do not depend on batching.
    """
    device = device or torch.device("cpu")
    n, d = flux.shape[0], model.n_params
    z = np.stack([np.random.default_rng(s).standard_normal((n_samples, d)) for s in seeds]).astype(np.float32)
    with torch.no_grad():
        c = model.features(torch.from_numpy(flux).to(device), torch.from_numpy(snr).to(device))
        c_rep = c.repeat_interleave(n_samples, dim=0)
        zt = torch.from_numpy(z.reshape(n * n_samples, d)).to(device)
        x, log_det_xz = model.reverse(zt, c_rep)
    density = log_density(z.reshape(n * n_samples, d), log_det_xz.cpu().numpy())
    return x.cpu().numpy().reshape(n, n_samples, d), density.reshape(n, n_samples)


def to_physical(x_std: np.ndarray, x_mean: np.ndarray, x_std_dev: np.ndarray) -> np.ndarray:
    """Standardised network outputs -> physical units with the transforms of the live ``spectra.schema.TARGETS``
    (for a network of the current schema, as the benchmarks train; :func:`evaluate` uses the run's own record)."""
    return standardised_to_physical(x_std, x_mean, x_std_dev, [p.transform for p in schema.TARGETS])


def open_run_with_grid(run: str | Path, grid: str | Path) -> tuple[CINN, Config, dict, GridData]:
    """A trained run and a grid split the way that run split it, its targets those the run recorded
    (:func:`training.fit.recorded_schema`); the pixel grids must agree."""
    model, config, meta = load_run(run)
    trained_for = recorded_schema(run, meta, model.n_params, "the evaluation reads what the network was trained for")
    data = GridData(grid, config.split, config.split_seed, targets=trained_for["parameters"])
    if data.n_pixels != model.n_pixels:
        data.close()
        raise ValueError(f"{grid}: {data.n_pixels} pixels, but the model in {run} expects {model.n_pixels}")
    return model, config, meta, data


def load_bound(path: str | Path) -> dict:
    """A ``bound.json`` of ``benchmarks/information_limit.py``, checked for the part used here:
    ``bound`` = {S/N: {parameter: {"rms": ..., "median": ...}}}."""
    raw = json.loads(Path(path).read_text())
    table = raw.get("bound") if isinstance(raw, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"{path}: not a bound file of benchmarks/information_limit.py (no 'bound' per S/N)")
    try:
        [float(k) for k in table]
    except ValueError:
        raise ValueError(f"{path}: the keys of 'bound' must be S/N values, got {list(table)}") from None
    return raw


def efficiency(per_snr: dict, bound: dict, setup: str | None = None) -> dict[str, dict[str, float | None]]:
    """σ / bound per S/N key of ``per_snr`` and parameter: rms(MAP - truth) / rms bound at the same S/N, both
    over stars of the grid prior (the bound file's stars need not be these ones). None where the bound file has no
    such S/N (matched by value, so "250" and "250.0" agree; "continuous" never matches) or no such parameter.
    ``setup``: against that bound of the training setup (the file's ``setup_bound``) instead of the Eq. 1 one."""
    source = bound["bound"] if setup is None else bound["setup_bound"][setup]
    table = {float(k): v for k, v in source.items()}
    out: dict[str, dict[str, float | None]] = {}
    for key, result in per_snr.items():
        try:
            row = table.get(float(key))
        except ValueError:
            row = None
        out[key] = {}
        for name, p in result["params"].items():
            rms = p.get("rmse", math.hypot(p["bias"], p["sigma"]))  # older metrics: rms^2 = bias^2 + sigma^2
            b = (row or {}).get(name, {}).get("rms")
            out[key][name] = float(rms / b) if b and math.isfinite(b) and b > 0 else None
    return out


def evaluate(run: str | Path, grid: str | Path, out: str | Path, split: str = "test",
             snr: SnrSpec | None = None, n_samples: int = 4096, seed: int = 0, max_spectra: int | None = None,
             spectra_per_call: int = 8, progress: bool = True, bound: str | Path | None = None,
             normalise_after_noise: bool = False, overwrite: bool = False) -> dict:
    """Run the evaluation and write the report files; returns the metrics dictionary.

    ``out``: a new or empty folder, or with ``overwrite`` an earlier evaluation report (:func:`claim_report_folder`).

    ``bound``: a ``bound.json`` of ``benchmarks/information_limit.py``; adds σ / bound (``sigma_over_bound``) per
    S/N and parameter. Read before sampling, so that a wrong path fails in a second, not after the run.
    ``normalise_after_noise``: ``grid`` holds true-continuum spectra; each noisy copy is divided by its own
    pseudo-continuum (``spectra.forward.continuum.BatchNormaliser``), as observed spectra and ``spectra survey
    --continuum pseudo`` are, instead of adding noise to spectra normalised before.
    """
    bound_table = load_bound(bound) if bound is not None else None
    out = claim_report_folder(out, "evaluation report", "metrics.json", overwrite)
    model, config, meta, data = open_run_with_grid(run, grid)
    normaliser = None
    if normalise_after_noise:
        from spectra.contracts.conventions import continuum_kind
        from spectra.forward.continuum import BatchNormaliser

        if continuum_kind(data.grid_attrs) == "pseudo":
            data.close()
            raise ValueError(f"{grid}: already pseudo-continuum normalised; --normalise-after-noise needs the "
                             "true-continuum grid")
        normaliser = BatchNormaliser(data.wavelength)
    rows = data.rows if split == "all" else data.split[split]  # all: a held-out grid the run never saw
    if max_spectra:
        rows = rows[:max_spectra]
    snr = snr or SnrSpec(values=(250.0,))
    snr_values = list(snr.values) if snr.values else [None]
    names, targets = data.target_names, data.targets  # the run's recorded parameters, not the live schema
    transforms = [p["transform"] for p in targets]
    lower = np.array([p["lower"] for p in targets], dtype=float)
    upper = np.array([p["upper"] for p in targets], dtype=float)
    train_labels = data.labels[data.rows if split == "all" else data.split.train]
    label_range = train_labels.max(axis=0) - train_labels.min(axis=0)
    x_mean, x_sd = model.x_mean.numpy().astype(float), model.x_std.numpy().astype(float)

    results = {}
    start = time.perf_counter()
    total = len(rows) * len(snr_values)
    bar = tqdm(total=total, desc="evaluate", unit="spec", disable=not progress)
    for k, snr_value in enumerate(snr_values):
        truth_all, maps, q_all, n_valid, ranks, snrs = [], [], [], [], [], []
        for start_i in range(0, len(rows), spectra_per_call):
            batch = rows[start_i:start_i + spectra_per_call]
            rng = np.random.default_rng([seed, k, start_i])
            fixed = None if snr_value is None else np.full(len(batch), float(snr_value))
            flux, snr_in, _ = data.noisy_batch(batch, rng, config.snr_mode, fixed)
            if normaliser is not None:
                flux = normaliser(flux).astype(np.float32)
            seeds = [[seed, int(r), k, 17] for r in batch]
            x_std, logp = sample_posterior(model, flux, snr_in, n_samples, seeds)
            phys = standardised_to_physical(x_std, x_mean, x_sd, transforms)
            summary = summarize(phys, logp, lower, upper)
            truth = data.labels[batch]
            valid = np.all((phys >= lower) & (phys <= upper), axis=2)
            below = np.where(valid[..., None], phys < truth[:, None, :], False).sum(axis=1)
            ranks.append(below / np.maximum(summary.n_valid, 1)[:, None])
            truth_all.append(truth)
            maps.append(summary.map)
            q_all.append(summary.quantiles)
            n_valid.append(summary.n_valid)
            snrs.append(snr_in[:, 0])
            bar.update(len(batch))
        key = "continuous" if snr_value is None else f"{snr_value:g}"
        results[key] = _metrics(np.concatenate(truth_all), np.concatenate(maps), np.concatenate(q_all),
                                np.concatenate(n_valid), np.concatenate(ranks), n_samples, label_range, names)
        results[key]["_arrays"] = {"truth": np.concatenate(truth_all), "map": np.concatenate(maps),
                                   "quantiles": np.concatenate(q_all), "n_valid": np.concatenate(n_valid),
                                   "ranks": np.concatenate(ranks), "snr": np.concatenate(snrs)}
    bar.close()
    seconds = time.perf_counter() - start
    metrics = {
        "run": str(Path(run).resolve()), "grid": str(Path(grid).resolve()), "split": split,
        "n_spectra": len(rows), "n_samples": n_samples,
        "normalised_after_noise": bool(normalise_after_noise), "config": config.name, "epoch": meta.get("epoch"),
        "seconds": seconds, "spectra_per_second": total / seconds, "parameters": names,
        "per_snr": {k: {m: v for m, v in r.items() if m != "_arrays"} for k, r in results.items()},
    }
    if bound_table is not None:
        ratios = efficiency(metrics["per_snr"], bound_table)
        for key, per in ratios.items():
            for name, ratio in per.items():
                metrics["per_snr"][key]["params"][name]["sigma_over_bound"] = ratio
        setups = list(bound_table.get("setup_bound") or {})
        for setup in setups:
            for key, per in efficiency(metrics["per_snr"], bound_table, setup).items():
                for name, ratio in per.items():
                    metrics["per_snr"][key]["params"][name].setdefault("sigma_over_setup_bound", {})[setup] = ratio
        metrics["bound"] = {"file": str(Path(bound).resolve()), "snr": list(bound_table["bound"]),
                            "emulator": bound_table.get("meta", {}).get("emulator"),
                            "n_stars": bound_table.get("meta", {}).get("n_stars"), "setups": setups}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    _save_arrays(out / "evaluation.npz", results, rows, names)
    _plots(results, names, {p["name"]: f"{p['label']} [{p['unit']}]" for p in targets}, out)
    (out / "report.md").write_text(_render(metrics, {p["name"]: p["unit"] for p in targets}))
    data.close()
    return metrics


def _save_arrays(path: Path, results: dict, rows: np.ndarray, names: list[str]) -> None:
    """``evaluation.npz``: each per-spectrum array stacked over the S/N values (axis 0, in the order of ``snr_keys``),
    with the grid ``rows`` and ``parameters`` that index them."""
    keys = list(results)
    stacked = {name: np.stack([results[k]["_arrays"][name] for k in keys])
               for name in ("truth", "map", "quantiles", "n_valid", "ranks", "snr")}
    np.savez_compressed(path, snr_keys=np.array(keys), rows=np.asarray(rows), parameters=np.array(names), **stacked)


def _metrics(truth, maps, quantiles, n_valid, ranks, n_samples, label_range, names) -> dict:
    resid = maps - truth
    ok = np.isfinite(resid).all(axis=1)
    r = resid[ok]
    p2_5, p16, p84, p97_5 = (quantiles[:, quantile_levels.index(q)] for q in ("p2_5", "p16", "p84", "p97_5"))
    inside68 = (p16 <= truth) & (truth <= p84)
    inside95 = (p2_5 <= truth) & (truth <= p97_5)
    width68 = p84 - p16
    out = {"n": len(truth), "n_with_valid_samples": int(ok.sum()),
           "mean_f_reject": float(np.mean(1 - n_valid / n_samples)), "params": {}}
    for j, name in enumerate(names):
        out["params"][name] = {
            "bias": float(r[:, j].mean()) if len(r) else float("nan"),
            "sigma": float(r[:, j].std()) if len(r) else float("nan"),
            "rmse": float(np.sqrt(np.mean(r[:, j] ** 2))) if len(r) else float("nan"),
            "nrmse": float(np.sqrt(np.mean(r[:, j] ** 2)) / label_range[j]) if len(r) else float("nan"),
            "coverage68": float(inside68[ok, j].mean()) if len(r) else float("nan"),
            "coverage95": float(inside95[ok, j].mean()) if len(r) else float("nan"),
            "median_width68": float(np.median(width68[ok, j])) if len(r) else float("nan"),
            "sbc_hist": np.histogram(ranks[ok, j], bins=10, range=(0, 1))[0].tolist(),
        }
    return out


def _plots(results: dict, names: list[str], labels: dict[str, str], out: Path) -> None:
    """The report's figures; ``labels``: axis title per parameter (label and unit, as the run recorded them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    show = "250" if "250" in results else keys[-1]
    arrays = results[show]["_arrays"]
    fig, axes = plt.subplots(3, 5, figsize=(17, 10))
    for ax, (j, name) in zip(axes.flat, enumerate(names), strict=False):
        t, m = arrays["truth"][:, j], arrays["map"][:, j]
        ok = np.isfinite(m)
        lo, hi = np.nanmin(t), np.nanmax(t)
        ax.hist2d(t[ok], m[ok], bins=30, range=[[lo, hi], [lo, hi]], cmap="viridis", cmin=1)
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_title(f"{labels[name]}  σ={results[show]['params'][name]['sigma']:.3g}", fontsize=9)
        ax.set_xlabel("true", fontsize=8)
        ax.set_ylabel("MAP", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"MAP vs truth, S/N {show}")
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_true.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(3, 5, figsize=(17, 9))
    for ax, name in zip(axes.flat, names, strict=False):
        hist = np.array(results[show]["params"][name]["sbc_hist"])
        ax.bar(np.arange(10) / 10 + 0.05, hist, width=0.1, color="0.6", edgecolor="k")
        ax.axhline(hist.sum() / 10, color="r", lw=1)
        ax.set_title(f"{labels[name]} cov68={results[show]['params'][name]['coverage68']:.2f}", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"SBC rank histograms (uniform = calibrated), S/N {show}")
    fig.tight_layout()
    fig.savefig(out / "sbc.png", dpi=100)
    plt.close(fig)

    numeric = [k for k in keys if k != "continuous"]
    if len(numeric) > 1:
        snr = np.array([float(k) for k in numeric])
        fig, axes = plt.subplots(3, 5, figsize=(17, 9))
        for ax, name in zip(axes.flat, names, strict=False):
            bias = [results[k]["params"][name]["bias"] for k in numeric]
            sigma = [results[k]["params"][name]["sigma"] for k in numeric]
            ax.semilogx(snr, bias, "k-o", ms=3, label="bias")
            ax.semilogx(snr, sigma, "-o", color="0.6", ms=3, label="σ")
            ax.axhline(0, color="k", ls=":")
            ax.set_title(labels[name], fontsize=9)
            ax.set_xlabel("S/N per Å", fontsize=8)
        axes.flat[0].legend(fontsize=8)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "residuals_vs_snr.png", dpi=100)
        plt.close(fig)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _render(m: dict, units: dict[str, str]) -> str:
    """report.md from the metrics; ``units``: per parameter, as the run recorded them."""
    names = m["parameters"]
    head = "| S/N | " + " | ".join(f"{n} [{units[n]}]" for n in names) + " |"
    sep = "|---" * (len(names) + 1) + "|"
    lines = [f"# Evaluation of `{Path(m['run']).name}` ({m['config']} config, epoch {m['epoch']})", "",
             f"Split `{m['split']}` of `{m['grid']}`: {m['n_spectra']} spectra, {m['n_samples']} posterior samples "
             f"each, {m['spectra_per_second']:.2f} spectra/s. MAP = highest-density sample inside the training "
             "bounds.", "", "## Bias ± σ of MAP − truth (Table A.1 analogue)", "", head, sep]
    for key, r in m["per_snr"].items():
        cells = [f"{r['params'][n]['bias']:.3g} ± {r['params'][n]['sigma']:.3g}" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## NRMSE (Table A.2 analogue; RMSE / training range)", "", head, sep]
    for key, r in m["per_snr"].items():
        lines.append(f"| {key} | " + " | ".join(f"{r['params'][n]['nrmse']:.3f}" for n in names) + " |")
    lines += ["", "## Calibration: fraction of true values inside the 68 % / 95 % central intervals", "",
              head, sep]
    for key, r in m["per_snr"].items():
        cells = [f"{r['params'][n]['coverage68']:.2f} / {r['params'][n]['coverage95']:.2f}" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Median width of the 68 % interval; mean rejected fraction", "",
              "| S/N | f_reject | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for key, r in m["per_snr"].items():
        cells = [f"{r['params'][n]['median_width68']:.3g}" for n in names]
        lines.append(f"| {key} | {r['mean_f_reject']:.3f} | " + " | ".join(cells) + " |")
    if m.get("bound"):
        b = m["bound"]
        lines += ["", "## σ / bound (efficiency): rms(MAP − truth) / rms Cramér–Rao bound", "",
                  f"Bound: `{b['file']}` ({b.get('n_stars')} stars, S/N {', '.join(b['snr'])}; "
                  "`benchmarks/information_limit.py`). 1 = as good as any unbiased estimator; n/a = S/N not in the "
                  "bound file.", "", head, sep]
        for key, r in m["per_snr"].items():
            cells = [_ratio(r["params"][n].get("sigma_over_bound")) for n in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        for setup in b.get("setups", []):
            lines += ["", f"σ / the bound of the training setup \"{setup}\" (what the network's input holds: "
                      "`benchmarks/information_limit.py`):", "", head, sep]
            for key, r in m["per_snr"].items():
                cells = [_ratio(r["params"][n].get("sigma_over_setup_bound", {}).get(setup)) for n in names]
                lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "![MAP vs truth](predicted_vs_true.png)", "", "![SBC](sbc.png)", ""]
    if len(m["per_snr"]) > 1:
        lines += ["![residuals vs S/N](residuals_vs_snr.png)", ""]
    return "\n".join(lines)
