"""Saliency maps: which pixels does the network use for each parameter (paper Figs. A.4-A.5)?

For each test spectrum (noisy at ``snr``), the posterior mean of each standardised parameter over
``samples`` latent draws is differentiated with respect to the input flux: ∂X̄_j/∂f_λ. Per spectrum
and parameter the absolute gradient is normalised by its maximum; the map is the median over spectra.

Does a parameter look at its own element? For each parameter with an element (``mg_fe`` → Mg, ...) we
take the ``n_peaks`` highest local maxima of its map and count how many lie within ``LINE_HALF_WIDTH``
of a line of that element (neutral and ionised species, solar central depth ≥ ``min_depth`` in the
line list), and compare with the fraction of all pixels that are that close to such a line (what
random peaks would give): the enrichment factor. ≫ 1 means the peaks fall on the element's lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spectra.common.outputs import claim_report_folder
from spectra.synth.linelists import default_linelist
from spectra.wavegrid import vacuum_to_air

from .evaluate import open_run_with_grid

__all__ = ["element_lines", "line_enrichment", "saliency"]

LINE_HALF_WIDTH = 0.15  # Å, about half the R 20 000 resolution element at 5500-6500 Å
ELEMENT_OF = {"ca_fe": "Ca", "c_fe": "C", "mg_fe": "Mg", "mn_fe": "Mn", "n_fe": "N", "si_fe": "Si",
              "ti_fe": "Ti", "li_fe": "Li", "fe_h": "Fe"}


def element_lines(element: str, min_depth: float = 0.05) -> np.ndarray:
    """Air wavelengths of the element's atomic lines (all ionisation stages) in the shipped line list.
    C and N also count their molecules (C2, CH, CN), which carry most of their signal here."""
    lines = default_linelist().lines
    species = lines["species"].str.split().str[0]
    wanted = {element} | ({"C2", "CH", "CN"} if element == "C" else {"CN"} if element == "N" else set())
    sel = species.isin(wanted) & (lines["depth"] >= min_depth)
    return np.sort(vacuum_to_air(lines.loc[sel, "wlcent"].to_numpy()))


def _local_maxima(values: np.ndarray, n: int, min_separation: int = 3) -> np.ndarray:
    order = np.argsort(values)[::-1]
    chosen: list[int] = []
    for i in order:
        if all(abs(i - j) >= min_separation for j in chosen):
            chosen.append(int(i))
            if len(chosen) == n:
                break
    return np.array(chosen)


def line_enrichment(wave: np.ndarray, saliency_map: np.ndarray, lines: np.ndarray, n_peaks: int = 50) -> dict:
    """Fraction of the top peaks within LINE_HALF_WIDTH of ``lines`` vs the chance fraction."""
    if lines.size == 0:
        nan = float("nan")
        return {"n_lines": 0, "peak_fraction": nan, "chance_fraction": nan, "enrichment": nan}
    idx = np.clip(np.searchsorted(lines, wave), 1, lines.size - 1)
    distance = np.minimum(np.abs(wave - lines[idx - 1]), np.abs(wave - lines[idx]))
    near = distance <= LINE_HALF_WIDTH
    peaks = _local_maxima(saliency_map, n_peaks)
    peak_fraction = float(near[peaks].mean())
    chance = float(near.mean())
    return {"n_lines": int(lines.size), "peak_fraction": peak_fraction, "chance_fraction": chance,
            "enrichment": peak_fraction / chance if chance > 0 else float("nan")}


def saliency(run: str | Path, grid: str | Path, out: str | Path, snr: float = 250.0, n_spectra: int = 64,
             samples: int = 64, seed: int = 0, n_peaks: int = 50, progress: bool = True,
             overwrite: bool = False) -> dict:
    """Compute the maps, write ``saliency.npz``, ``saliency.json``, ``saliency.md`` and PNGs into ``out`` (a new or
    empty folder, or with ``overwrite`` an earlier saliency report: ``spectra.common.outputs.claim_report_folder``)."""
    out = claim_report_folder(out, "saliency report", "saliency.json", overwrite)
    model, config, _, data = open_run_with_grid(run, grid)
    rows = data.split.test[:n_spectra]
    names = data.target_names
    rng = np.random.default_rng(seed)
    maps = []
    batch = 8
    for start in tqdm(range(0, rows.size, batch), desc="saliency", disable=not progress):
        chunk = rows[start:start + batch]
        flux, snr_in, _ = data.noisy_batch(chunk, rng, config.snr_mode, np.full(chunk.size, snr))
        f = torch.tensor(flux, requires_grad=True)
        c = model.features(f, torch.tensor(snr_in))
        z = torch.tensor(rng.standard_normal((chunk.size * samples, model.n_params)), dtype=torch.float32)
        x, _ = model.reverse(z, c.repeat_interleave(samples, dim=0))
        mean = x.reshape(chunk.size, samples, -1).mean(dim=1)  # (B, D): posterior mean, standardised
        grads = []
        for j in range(model.n_params):
            (g,) = torch.autograd.grad(mean[:, j].sum(), f, retain_graph=j < model.n_params - 1)
            grads.append(g.abs().numpy())
        g = np.stack(grads, axis=1)  # (B, D, P)
        maps.append(g / g.max(axis=2, keepdims=True))
    per_spectrum = np.concatenate(maps)
    median_map = np.median(per_spectrum, axis=0)  # (D, P)
    wave = data.wavelength
    enrichment = {p: {"element": ELEMENT_OF[p], **line_enrichment(wave, median_map[j], element_lines(ELEMENT_OF[p]),
                                                                  n_peaks)}
                  for j, p in enumerate(names) if p in ELEMENT_OF}
    np.savez_compressed(out / "saliency.npz", wavelength=wave, median=median_map.astype(np.float32),
                        names=np.array(names))
    result = {"run": str(Path(run).resolve()), "grid": str(Path(grid).resolve()), "snr": snr,
              "n_spectra": int(rows.size), "samples": samples, "n_peaks": n_peaks,
              "line_half_width": LINE_HALF_WIDTH, "enrichment": enrichment}
    (out / "saliency.json").write_text(json.dumps(result, indent=1))
    _plots(wave, median_map, names, out)
    (out / "saliency.md").write_text(_render(result, names))
    data.close()
    return result


def _plots(wave: np.ndarray, median_map: np.ndarray, names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectra.wavegrid import hr_grid

    grid = hr_grid()
    for j, p in enumerate(names):
        if p not in ELEMENT_OF:
            continue
        lines = element_lines(ELEMENT_OF[p])
        fig, axes = plt.subplots(2, 1, figsize=(12, 5.5))
        for ax, s, title in zip(axes, grid.segments, grid.window_names, strict=True):
            w, m = wave[s], median_map[j, s]
            ax.plot(w, m, "k-", lw=0.5)
            inside = lines[(lines >= w[0]) & (lines <= w[-1])]
            ax.vlines(inside, 0, 1, transform=ax.get_xaxis_transform(), colors="tab:red", lw=0.5, alpha=0.3)
            ax.plot(inside, np.full(inside.size, 0.97), "v", color="tab:red", ms=5,
                    transform=ax.get_xaxis_transform())
            ax.set_xlim(w[0], w[-1])
            ax.set_ylabel("median |∂X/∂f| (norm.)")
            ax.set_title(f"{p}: {title} window; red ▼: {ELEMENT_OF[p]} lines (solar depth ≥ 0.05)", fontsize=9)
        axes[-1].set_xlabel("air wavelength [Å]")
        fig.tight_layout()
        fig.savefig(out / f"saliency_{p}.png", dpi=110)
        plt.close(fig)


def _render(r: dict, names: list[str]) -> str:
    lines = ["# Saliency: median normalised |∂X/∂f_λ|", "",
             f"Run `{r['run']}`, grid `{r['grid']}`: {r['n_spectra']} test spectra at S/N {r['snr']:g}, posterior "
             f"mean over {r['samples']} draws. Peaks: the {r['n_peaks']} highest local maxima of each map; 'on a "
             f"line' = within ±{r['line_half_width']} Å of a line of the element.", "",
             "| parameter | element | lines | peaks on its lines | chance | enrichment | map |",
             "|---|---|---|---|---|---|---|"]
    for p, e in r["enrichment"].items():
        lines.append(f"| {p} | {e['element']} | {e['n_lines']} | {100 * e['peak_fraction']:.0f} % | "
                     f"{100 * e['chance_fraction']:.2f} % | {e['enrichment']:.1f} | ![{p}](saliency_{p}.png) |")
    return "\n".join(lines) + "\n"
