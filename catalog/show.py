"""``catalog show``: the first rows of a catalogue as a readable table (MAP, 68 % interval and its half-width
per parameter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectra.contracts.flags import decode

from .writers import CatalogueStore

__all__ = ["flag_names", "show_rows"]


def flag_names(value: int) -> str:
    """'HIGH_REJECTION|POOR_FIT' for a ``flags`` value, '-' for none."""
    return "|".join(decode(value, "flags")) or "-"


def _number(value: float, scale: float) -> str:
    if not np.isfinite(value):
        return "nan"
    digits = max(0, 2 - int(np.floor(np.log10(max(abs(scale), 1e-9)))))
    return f"{value:.{min(digits, 3)}f}"


def show_rows(catalog: str | Path, params: list[str], rows: int = 20) -> str:
    """Markdown table of the first ``rows`` rows: identifiers, S/N, ``param`` MAP [p16, p84] ±e (e: half the
    16-84 % width, the catalogue's ``e_<param>``), chi2_resim, flags."""
    store = CatalogueStore.open(catalog)
    unknown = [p for p in params if p not in store.columns]
    if unknown:
        raise ValueError(f"{catalog}: no column(s) {', '.join(unknown)}; parameters here: "
                         f"{', '.join(c for c in store.columns if c + '_p16' in store.columns)}")
    n = min(rows, store.n_rows)
    ident = [c for c in ("object", "file") if c in store.columns][:1]
    extra = [c for c in ("chi2_resim",) if c in store.columns]
    data = {c: store.column(c)[:n] for c in ["source_id", *ident, "snr", *extra, "flags"]}
    for p in params:
        for suffix in ("", "_p16", "_p84"):
            data[p + suffix] = store.column(p + suffix)[:n]
    header = ["source_id", *ident, "S/N", *(f"{p} [p16, p84] ±e" for p in params), *extra, "flags"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i in range(n):
        cells = [str(data["source_id"][i]), *(str(data[c][i]) for c in ident), f"{data['snr'][i]:.0f}"]
        for p in params:
            lo, hi, best = data[p + "_p16"][i], data[p + "_p84"][i], data[p][i]
            width = hi - lo if np.isfinite(hi - lo) else 1.0
            cells.append(f"{_number(best, width)} [{_number(lo, width)}, {_number(hi, width)}] "
                         f"±{_number(0.5 * (hi - lo), width)}")
        cells += [f"{data[c][i]:.2f}" for c in extra]
        cells.append(flag_names(data["flags"][i]))
        lines.append("| " + " | ".join(cells) + " |")
    if store.n_rows > n:
        lines.append(f"\n({n} of {store.n_rows} rows; --rows to see more)")
    return "\n".join(lines)
