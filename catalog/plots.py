"""Figures astronomers read a catalogue by: per-star posterior corner plots, residuals against the truth per S/N.

matplotlib only (no ``corner`` package: one figure type does not justify a dependency). Each function returns the
figure, so the report, ``runtime corner`` and a notebook draw the same thing and tests can inspect the axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from spectra.contracts.quantiles import QUANTILES, index

__all__ = ["axis_text", "corner_figure", "residuals_figure", "snr_groups"]

#: at most this many S/N groups in residual plots; more distinct S/N values are binned logarithmically
MAX_SNR_GROUPS = 6


def axis_text(label: str, unit: str = "") -> str:
    """'T_eff [K]', '[Fe/H] [dex]': a label with its unit, the unit left out when there is none."""
    return f"{label} [{unit}]" if unit else label


def corner_figure(samples: np.ndarray, labels: Sequence[str], marks: dict[str, np.ndarray] | None = None,
                  title: str = "", bins: int = 40):
    """Corner plot of ``samples`` (S, K): 1-D histograms on the diagonal with the 16/50/84 % quantiles dashed,
    2-D histograms below it. ``labels``: axis texts with units (:func:`axis_text`); ``marks``: name -> (K,) values
    drawn as lines (e.g. {"MAP": map, "truth": truth}). Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.shape[1] != len(labels):
        raise ValueError(f"samples: shape {samples.shape}, expected (n_samples, {len(labels)}) for the labels")
    if samples.shape[0] < 2:
        raise ValueError(f"samples: {samples.shape[0]} sample(s), a corner plot needs at least 2")
    k = samples.shape[1]
    fig, axes = plt.subplots(k, k, figsize=(1.9 * k + 1, 1.9 * k + 1), squeeze=False)
    ranges = [_range(samples[:, j]) for j in range(k)]
    colours = dict(zip(marks or {}, ("tab:red", "tab:blue", "tab:green"), strict=False))
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                ax.hist(samples[:, j], bins=bins, range=ranges[j], color="0.4", histtype="step")
                for q in np.quantile(samples[:, j], [QUANTILES[index(name)] for name in ("p16", "p50", "p84")]):
                    ax.axvline(q, color="0.3", ls="--", lw=0.8)
                ax.set_yticks([])
            else:
                ax.hist2d(samples[:, j], samples[:, i], bins=bins, range=[ranges[j], ranges[i]], cmap="Greys")
            for name, values in (marks or {}).items():
                ax.axvline(values[j], color=colours[name], lw=1, label=name if i == j == 0 else None)
                if i != j:
                    ax.axhline(values[i], color=colours[name], lw=1)
            ax.tick_params(labelsize=7)
            if i == k - 1:
                ax.set_xlabel(labels[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i], fontsize=8)
            elif j > 0:
                ax.set_yticklabels([])
    if marks:
        fig.legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(hspace=0.05, wspace=0.05)
    return fig


def _range(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:  # one value: a window around it, or hist2d fails
        pad = max(abs(lo) * 1e-3, 1e-6)
        return lo - pad, hi + pad
    return lo, hi


def snr_groups(snr: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(group index per row, -1 for no S/N; a name per group): one group per distinct S/N when there are at most
    :data:`MAX_SNR_GROUPS` (a synthetic survey at S/N 20, 50, 250), else logarithmic bins."""
    snr = np.asarray(snr, dtype=float)
    ok = np.isfinite(snr) & (snr > 0)
    group = np.full(snr.size, -1)
    distinct = np.unique(np.round(snr[ok], 3))
    if distinct.size <= MAX_SNR_GROUPS:
        group[ok] = np.searchsorted(distinct, np.round(snr[ok], 3))
        return group, [f"S/N {v:g}" for v in distinct]
    edges = np.geomspace(snr[ok].min(), snr[ok].max() * (1 + 1e-9), MAX_SNR_GROUPS + 1)
    group[ok] = np.clip(np.searchsorted(edges, snr[ok], side="right") - 1, 0, MAX_SNR_GROUPS - 1)
    return group, [f"S/N {a:.0f}-{b:.0f}" for a, b in itertools.pairwise(edges)]


def residuals_figure(params: Sequence[str], truth: dict[str, np.ndarray], estimate: dict[str, np.ndarray],
                     low: dict[str, np.ndarray], high: dict[str, np.ndarray], labels: dict[str, str],
                     units: dict[str, str], snr: np.ndarray, flagged: np.ndarray, title: str = ""):
    """MAP - truth against the truth, one panel per parameter: a colour per S/N group (:func:`snr_groups`),
    error bars from the 16-84 % interval, rows with any flag ringed in red, the residual axis in the parameter's
    unit. Rows where ``estimate`` is NaN are left out. Returns the Figure."""
    import matplotlib.pyplot as plt

    group, names = snr_groups(snr)
    columns = min(5, max(1, len(params)))
    rows = -(-len(params) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(names), 1)))
    for ax, p in zip(axes.flat, params, strict=False):
        t, m = truth[p], estimate[p]
        ok = np.isfinite(m) & np.isfinite(t)
        for g, name in enumerate(names):
            rows_g = ok & (group == g)
            if not rows_g.any():
                continue
            below = np.clip(m[rows_g] - low[p][rows_g], 0, None)
            above = np.clip(high[p][rows_g] - m[rows_g], 0, None)
            ax.errorbar(t[rows_g], m[rows_g] - t[rows_g], yerr=np.nan_to_num([below, above]), fmt="o", ms=2.5,
                        lw=0.6, color=colours[g], label=name)
        marked = ok & flagged
        if marked.any():
            ax.scatter(t[marked], (m - t)[marked], s=40, facecolors="none", edgecolors="tab:red", lw=0.8,
                       label="flagged", zorder=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(f"true {axis_text(labels[p], units[p])}", fontsize=8)
        ax.set_ylabel(axis_text(f"MAP − truth ({labels[p]})", units[p]), fontsize=8)
        ax.tick_params(labelsize=7)
    for extra in list(axes.flat)[len(params):]:
        extra.axis("off")
    handles, texts = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, texts, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    return fig
