"""``catalog report``: summary table and the plots survey astronomers look at first.

Writes ``report.md``, ``summary.json`` and PNGs: the Kiel diagram (T_eff vs log g coloured by
[Fe/H]), [Mg/Fe] vs [Fe/H], histograms of the 68 % posterior widths and of f_reject, and, when the
truth is known (a synthetic survey's ``truth`` array), MAP - truth residuals against the truth with
their bias and scatter per parameter and per S/N (a colour per S/N, 16-84 % error bars, flagged rows ringed,
residual axes in the parameter's unit; ``catalog.plots``).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .writers import CatalogueStore

__all__ = ["make_report"]


def _params(store: CatalogueStore) -> list[str]:
    return [c[: -len("_p50")] for c in store.columns if c.endswith("_p50")]


def axis_label(store: CatalogueStore, column: str, prefix: str = "") -> str:
    """"T_eff [K]", "[Fe/H] [dex]": the parameter's label (from the column description) and its unit."""
    info = store.column_info(column)
    description = str(info.get("description", column))
    label = description.split(":")[0] if ":" in description else column
    unit = str(info.get("unit", "") or "")
    return f"{prefix}{label}" + (f" [{unit}]" if unit else "")


def _short(store: CatalogueStore, column: str) -> str:
    """"T_eff", "[Fe/H]": the parameter's label from its column description (the unit goes on the axis apart)."""
    description = str(store.column_info(column).get("description", column))
    return description.split(":")[0] if ":" in description else column


#: the files ``make_report`` writes into its folder (an existing report.md needs ``overwrite``)
REPORT_FILES = ("report.md", "summary.json", "kiel.png", "mg_fe_vs_fe_h.png", "widths_and_rejection.png",
                "residuals.png")


def make_report(catalogue: str | Path, out: str | Path, truth: str | Path | None = None,
                overwrite: bool = False) -> dict:
    store = CatalogueStore.open(catalogue)
    out = Path(out)
    existing = [f for f in REPORT_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; add --overwrite to replace them, or "
                              "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    params = _params(store)
    label = {p: axis_label(store, p) for p in params}
    # one column in memory at a time; plots use a fixed random subsample of at most PLOT_ROWS rows
    good, flags, f_reject, maps, width_all = _report_columns(store, params)
    sub = _subsample(store.n_rows)
    summary: dict = {"catalogue": str(Path(catalogue).resolve()), "rows": store.n_rows,
                     "usable": int(good.sum()), "flag_warn": int(np.count_nonzero(flags)),
                     "flag_counts": {n: int(np.count_nonzero(flags & b)) for n, b in store.attrs["flag_bits"].items()},
                     "median_f_reject": float(np.nanmedian(f_reject)) if np.isfinite(f_reject).any() else None,
                     "plotted_rows": int(sub.size), "params": {}}
    flagged = flags != 0
    del flags
    widths = {}
    for p in params:
        width = width_all.pop(p)
        summary["params"][p] = {"median_map": _median(maps[p][good]), "median_width68": _median(width[good])}
        widths[p] = width[sub][good[sub]]
    plotted = {p: maps[p][sub] for p in ("teff", "logg", "fe_h", "mg_fe") if p in params}
    g = good[sub]

    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(plotted["teff"][g], plotted["logg"][g], c=plotted["fe_h"][g], s=4, cmap="viridis")
    fig.colorbar(sc, label=f"{label['fe_h']} (MAP)")
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel(f"{label['teff']} (MAP)")
    ax.set_ylabel(f"{label['logg']} (MAP)")
    ax.set_title("Kiel diagram" + _subsample_note(sub.size, store.n_rows))
    fig.tight_layout()
    fig.savefig(out / "kiel.png", dpi=110)
    plt.close(fig)

    if "mg_fe" in plotted:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(plotted["fe_h"][g], plotted["mg_fe"][g], s=4, c="k", alpha=0.5)
        ax.set_xlabel(f"{label['fe_h']} (MAP)")
        ax.set_ylabel(f"{label['mg_fe']} (MAP)")
        ax.set_title(_subsample_note(sub.size, store.n_rows).strip(" ()"), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "mg_fe_vs_fe_h.png", dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(3, 5, figsize=(17, 9))
    for ax, p in zip(axes.flat, params, strict=False):
        width = widths[p]
        ax.hist(width[np.isfinite(width)], bins=40, color="0.5")
        ax.set_xlabel(f"68 % interval width of {label[p]}", fontsize=8)
        ax.set_ylabel("spectra", fontsize=8)
    ax = axes.flat[len(params)] if len(params) < axes.size else None
    if ax is not None:
        ax.hist(f_reject[np.isfinite(f_reject)], bins=40, color="tab:red")
        ax.set_xlabel("f_reject: fraction of samples outside the training bounds", fontsize=8)
        ax.set_ylabel("spectra", fontsize=8)
    for extra in list(axes.flat)[len(params) + 1:]:
        extra.axis("off")
    fig.suptitle("68 % widths" + _subsample_note(sub.size, store.n_rows) + "; f_reject of all rows")
    fig.tight_layout()
    fig.savefig(out / "widths_and_rejection.png", dpi=100)
    plt.close(fig)

    if truth is not None:
        summary["residuals"] = _residuals(store, maps, params, good, sub, truth, out, {p: _short(store, p)
                                                                                      for p in params}, flagged)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(_render(summary, params))
    return summary


def _report_columns(store: CatalogueStore, params: list[str]):
    """One pass over the shards: good-row mask, flags, f_reject, and per parameter the MAP and the 68 % width
    (float32), never the quantile columns of the whole catalogue at once."""
    names = ["flag_bad", "flags", "f_reject", *params, *(p + q for p in params for q in ("_p16", "_p84"))]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("good", "flags", "f_reject", *params,
                                                         *(p + "_w" for p in params))}
    for a, b in store.row_blocks():
        block = store.read_rows(a, b, names)
        parts["good"].append(~block["flag_bad"])
        parts["flags"].append(block["flags"])
        parts["f_reject"].append(block["f_reject"])
        for p in params:
            parts[p].append(block[p])
            parts[p + "_w"].append(block[p + "_p84"] - block[p + "_p16"])
    joined = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
    return (joined["good"], joined["flags"], joined["f_reject"], {p: joined[p] for p in params},
            {p: joined[p + "_w"] for p in params})


#: scatter plots and histograms show at most this many rows (a fixed random subsample; the report says so)
PLOT_ROWS = 200_000


def _subsample(n: int) -> np.ndarray:
    if n <= PLOT_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, PLOT_ROWS, replace=False))


def _subsample_note(shown: int, n: int) -> str:
    return "" if shown == n else f" (random {shown:,} of {n:,} rows)"


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _residuals(store: CatalogueStore, maps: dict[str, np.ndarray], params, good, sub, truth_path, out: Path,
               label: dict[str, str], flagged: np.ndarray) -> dict:
    """MAP - truth per parameter against a synthetic survey's ``truth`` (read a column at a time): bias and scatter
    overall and per S/N group, and ``residuals.png`` (:func:`catalog.plots.residuals_figure`: a colour per S/N,
    16-84 % error bars, flagged rows ringed, residual axes in the parameter's unit)."""
    import zarr

    from .plots import residuals_figure, snr_groups

    survey = zarr.open_group(str(truth_path), mode="r")
    if "truth" not in survey:
        raise ValueError(f"{truth_path}: no 'truth' array; residuals need a synthetic survey")
    names = list(survey["truth"].attrs["names"])
    ids = store.column("source_id")
    if survey["truth"].shape[0] != ids.size or not np.array_equal(survey["source_id"][:], ids):
        raise ValueError(f"{truth_path}: rows or source ids do not match the catalogue")
    snr = store.column("snr")
    group, group_names = snr_groups(snr)
    shown = [p for p in params if p in names]
    result: dict = {}
    plotted: dict[str, dict[str, np.ndarray]] = {"truth": {}, "map": {}, "p16": {}, "p84": {}}
    for p in shown:
        t = survey["truth"][:, names.index(p)]
        r = maps[p] - t
        ok = good & np.isfinite(r)
        result[p] = {"bias": float(np.mean(r[ok])), "sigma": float(np.std(r[ok])), "n": int(ok.sum()),
                     "unit": str(store.column_info(p).get("unit", "") or ""), "by_snr": {}}
        for g, name in enumerate(group_names):
            in_group = ok & (group == g)
            if in_group.any():
                result[p]["by_snr"][name] = {"bias": float(np.mean(r[in_group])),
                                             "sigma": float(np.std(r[in_group])), "n": int(in_group.sum())}
        bounds = store.read_columns([p + "_p16", p + "_p84"])
        estimate = np.where(good, maps[p], np.nan)
        for key, values in (("truth", t), ("map", estimate), ("p16", bounds[p + "_p16"]),
                            ("p84", bounds[p + "_p84"])):
            plotted[key][p] = values[sub]
    fig = residuals_figure(shown, plotted["truth"], plotted["map"], plotted["p16"], plotted["p84"], label,
                           {p: result[p]["unit"] for p in shown}, snr[sub], flagged[sub],
                           "MAP − truth per S/N (error bars: 16–84 %; red rings: flagged rows)"
                           + _subsample_note(int(np.size(sub)), ids.size))
    fig.savefig(out / "residuals.png", dpi=100)
    plt.close(fig)
    return result


def _render(s: dict, params: list[str]) -> str:
    lines = [f"# Catalogue report: `{s['catalogue']}`", "",
             f"{s['rows']} rows, {s['usable']} with a usable estimate, {s['flag_warn']} with any flag; "
             f"median f_reject {s['median_f_reject'] or float('nan'):.3f}."
             + (f" Plots show a random {s['plotted_rows']:,} of the {s['rows']:,} rows."
                if s["plotted_rows"] < s["rows"] else ""), "", "| flag | rows |", "|---|---|"]
    lines += [f"| {n} | {c} |" for n, c in s["flag_counts"].items()]
    lines += ["", "| parameter | median MAP | median 68 % width |" + (" bias | σ |" if "residuals" in s else ""),
              "|---|---|---|" + ("---|---|" if "residuals" in s else "")]
    for p in params:
        m, w = s["params"][p]["median_map"], s["params"][p]["median_width68"]
        row = f"| {p} | {m if m is None else format(m, '.4g')} | {w if w is None else format(w, '.3g')} |"
        if "residuals" in s and p in s["residuals"]:
            row += f" {s['residuals'][p]['bias']:+.3g} | {s['residuals'][p]['sigma']:.3g} |"
        lines.append(row)
    lines += ["", "![Kiel](kiel.png) ![Mg](mg_fe_vs_fe_h.png)", "", "![widths](widths_and_rejection.png)", ""]
    if "residuals" in s:
        lines += _render_by_snr(s["residuals"])
        lines += ["![residuals](residuals.png)", ""]
    return "\n".join(lines)


def _render_by_snr(residuals: dict) -> list[str]:
    """MAP - truth bias and scatter per S/N group, in each parameter's unit."""
    groups = list(dict.fromkeys(g for r in residuals.values() for g in r.get("by_snr", {})))
    if not groups:
        return []
    lines = ["MAP − truth per S/N (bias ± σ):", "", "| parameter | unit | " + " | ".join(groups) + " |",
             "|---|---|" + "---|" * len(groups)]
    for p, r in residuals.items():
        cells = [f"{r['by_snr'][g]['bias']:+.3g} ± {r['by_snr'][g]['sigma']:.3g}" if g in r["by_snr"] else ""
                 for g in groups]
        lines.append(f"| {p} | {r.get('unit', '')} | " + " | ".join(cells) + " |")
    return [*lines, ""]
