"""``catalog calibrate``: fit the T_eff-linear bias correction of the paper's Eq. B.1 from reference stars.

X̃ = X − (a · T_eff + b): for each parameter, the catalogue MAP minus the reference value is fitted as a
straight line in the catalogue's own MAP T_eff (as the correction is applied at runtime, where the
true T_eff is unknown). Weighted least squares with weights 1 / (σ_ref² + σ_cat²), σ_cat the half
width of the catalogue's 68 % interval; a and b come with their standard errors (from the weighted
normal equations, scaled by the reduced χ² when it exceeds 1) and the number of stars used.

Stars used: rows without flag_bad, with a finite reference value, and (as the paper did) with catalogue
[Fe/H] ≥ ``min_feh``. The output JSON is what ``export onnx --bias-correction FILE`` and
``export bias-correction`` store in a bundle's manifest; ``runtime process --bias-correction`` then
writes ``<p>_corr`` columns. Nothing is ever applied silently.

Reference table: CSV with a key column (``source_id`` or ``object``, matched to the catalogue, the
latter through the survey's ``object`` array) and one column per parameter (``teff``, ``logg``,
``fe_h``, ...) with optional uncertainties ``<p>_err``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .writers import CatalogueStore

__all__ = ["LineFit", "calibrate", "fit_line", "read_reference"]


@dataclass(frozen=True)
class LineFit:
    a: float
    b: float
    a_err: float
    b_err: float
    n: int
    rms_before: float
    rms_after: float

    def as_dict(self) -> dict:
        return {k: float(v) if k != "n" else int(v) for k, v in self.__dict__.items()}


def fit_line(teff: np.ndarray, residual: np.ndarray, sigma: np.ndarray | None = None) -> LineFit:
    """Weighted straight-line fit residual = a * teff + b (needs at least 3 points)."""
    teff, residual = np.asarray(teff, dtype=float), np.asarray(residual, dtype=float)
    sigma = np.ones_like(residual) if sigma is None else np.asarray(sigma, dtype=float)
    ok = np.isfinite(teff) & np.isfinite(residual) & np.isfinite(sigma) & (sigma > 0)
    n = int(ok.sum())
    if n < 3:
        raise ValueError(f"a bias-correction fit needs at least 3 stars, got {n}")
    t, r, w = teff[ok], residual[ok], 1.0 / sigma[ok] ** 2
    t0 = np.average(t, weights=w)  # centre T_eff for a well-conditioned fit, then shift back
    design = np.column_stack([t - t0, np.ones(n)])
    normal = design.T @ (design * w[:, None])
    cov = np.linalg.inv(normal)
    slope, offset = cov @ (design.T @ (w * r))
    chi2 = float(np.sum(w * (r - slope * (t - t0) - offset) ** 2)) / max(n - 2, 1)
    cov = cov * max(chi2, 1.0)
    a, b = slope, offset - slope * t0
    b_err = np.sqrt(cov[1, 1] + t0**2 * cov[0, 0] - 2 * t0 * cov[0, 1])
    after = r - (a * t + b)
    return LineFit(float(a), float(b), float(np.sqrt(cov[0, 0])), float(b_err), n,
                   float(np.sqrt(np.mean(r**2))), float(np.sqrt(np.mean(after**2))))


def read_reference(path: str | Path) -> dict[str, np.ndarray]:
    """CSV → {column: array}; strings for the key columns, floats for the rest."""
    import csv

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference table {path} not found")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.lstrip().startswith("#")))
    if not rows:
        raise ValueError(f"{path}: the reference table has no rows")
    table: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [row[key].strip() if row[key] is not None else "" for row in rows]
        if key in ("object", "name"):
            table[key] = np.array(values)
            continue
        try:
            table[key] = np.array([float(v) if v != "" else np.nan for v in values])
        except ValueError:
            raise ValueError(f"{path}: column {key!r} has non-numeric values") from None
    if "source_id" not in table and "object" not in table:
        raise ValueError(f"{path}: needs a 'source_id' or an 'object' column to match catalogue rows")
    return table


def calibrate(catalogue: str | Path, reference: str | Path, out: str | Path, survey: str | Path | None = None,
              parameters: list[str] | None = None, min_feh: float = -2.5) -> dict:
    """Fit a, b per parameter and write the coefficients JSON; returns it."""
    store = CatalogueStore.open(catalogue)
    ref = read_reference(reference)
    ids = store.column("source_id")
    if "source_id" in ref:
        key_cat, key_ref = ids, ref["source_id"].astype(np.int64)
    else:
        if survey is None:
            raise ValueError(f"{reference}: matching by 'object' needs --survey (the catalogue has no object names)")
        import zarr

        root = zarr.open_group(str(survey), mode="r")
        if "object" not in root:
            raise ValueError(f"{survey}: no 'object' array (only `spectra ingest` surveys have one)")
        if not np.array_equal(root["source_id"][:], ids):
            raise ValueError(f"{survey}: its source_id do not match the catalogue's rows")
        key_cat, key_ref = np.array([str(o).strip() for o in root["object"][:]]), ref["object"]
    position = {k: i for i, k in enumerate(key_ref.tolist())}
    rows = np.array([i for i, k in enumerate(key_cat.tolist()) if k in position], dtype=int)
    matched = np.array([position[k] for k in key_cat[rows].tolist()], dtype=int)
    if rows.size == 0:
        raise ValueError(f"no catalogue row matches the reference table {reference}")
    teff = store.column("teff")[rows].astype(float)
    keep = ~store.column("flag_bad")[rows]
    if "fe_h" in store.columns:
        keep &= store.column("fe_h")[rows] >= min_feh
    names = parameters or [c for c in ref if c + "_p84" in store.columns]
    if not names:
        raise ValueError(f"{reference}: no column names a catalogue parameter ({', '.join(store.columns[:8])}...)")
    coefficients = {}
    for p in names:
        if p not in store.columns or p not in ref:
            raise ValueError(f"parameter {p!r} must be both a catalogue column and a reference column")
        cat = store.column(p)[rows].astype(float)
        half68 = 0.5 * (store.column(p + "_p84")[rows] - store.column(p + "_p16")[rows]).astype(float)
        ref_err = ref.get(p + "_err", np.zeros(len(key_ref)))[matched]
        sigma = np.sqrt(np.nan_to_num(ref_err) ** 2 + half68**2)
        fit = fit_line(np.where(keep, teff, np.nan), cat - ref[p][matched], sigma)
        coefficients[p] = fit.as_dict()
    result = {
        "source": f"catalog calibrate: {Path(catalogue).name} vs {Path(reference).name}, "
                  f"{dt.datetime.now(dt.UTC).date().isoformat()}",
        "teff_parameter": "teff",
        "equation": "X_corrected = X - (a * teff + b), teff = the catalogue's MAP T_eff",
        "selection": f"not flag_bad, finite reference, catalogue fe_h >= {min_feh}",
        "coefficients": coefficients,
    }
    Path(out).write_text(json.dumps(result, indent=2))
    return result
