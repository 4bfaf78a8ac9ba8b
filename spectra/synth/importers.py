"""Bring your own grid: import a TSFitPy / Turbospectrum grid into the HDF5 grid store.

TSFitPy's ``generate_synthetic_spectra.py`` writes one text spectrum per row (``0.spec``,
``1.spec``, ...: '#' header lines, then wavelength [Å], normalised flux [, unnormalised flux]) and a
``spectra_parameters.csv`` table (``specname, rv, teff, logg, feh, vmic, C_Fe, Ca_Fe, ..., A_Li``).
Each spectrum goes through the same post-processing as our own syntheses (R = 80 000 on the
0.025 Å working grid, rotational broadening, 4MOST-ification), so an imported NLTE grid and a
PySME grid are interchangeable downstream.

Label mapping: ``feh`` -> ``fe_h``; ``X_Fe`` -> ``x_fe``; ``A_Li`` -> ``li_fe`` = A(Li) - 1.05 -
[Fe/H]; elements not in the table are solar-scaled ([X/Fe] = 0, TSFitPy's convention);
v_broad from a ``vbroad``/``rotation`` column, else the ``vbroad`` argument (a number, or
``"prior"``: seeded draws from the grid prior, ``spectra.contracts.conventions.vbroad_from_uniform``, with
its cap for metal-poor rows). Rows whose spectrum is missing, non-finite
or non-positive (TSFitPy notes NLTE convergence failures produce those) are skipped and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import schema
from ..contracts.conventions import software_version, vbroad_from_uniform
from ..forward.degrade import fourmostify, to_working_grid
from ..prior import A_LI_SUN
from ..stores.gridstore import GridWriter
from ..wavegrid import WORKING_RESOLUTION, hr_grid, vacuum_to_air, working_grid

__all__ = ["ImportReport", "import_tsfitpy", "read_text_spectrum"]


@dataclass
class ImportReport:
    n: int
    written: int
    skipped: dict[str, str] = field(default_factory=dict)
    outside_bounds: int = 0


def read_text_spectrum(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Wavelength and normalised flux (first two numeric columns) of a TSFitPy/Turbospectrum text spectrum."""
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a text spectrum with numeric columns ({exc})") from None
    if data.shape[1] < 2 or data.shape[0] < 10:
        raise ValueError(f"{path}: expected >= 2 columns (wavelength, normalised flux), got shape {data.shape}")
    wave, flux = data[:, 0], data[:, 1]
    if not np.all(np.diff(wave) > 0):
        raise ValueError(f"{path}: wavelengths are not strictly increasing")
    return wave, flux


def _labels_from_row(row: pd.Series, vbroad: Callable[[float], float]) -> np.ndarray:
    """All labels of one table row; ``vbroad([Fe/H])`` gives v_broad when the table has no column for it."""
    cols = {c.lower(): c for c in row.index}
    labels = {p.name: 0.0 for p in schema.ALL_LABELS}
    for key, name in (("teff", "teff"), ("logg", "logg"), ("feh", "fe_h"), ("fe_h", "fe_h"), ("vmic", "vmic")):
        if key in cols:
            labels[name] = float(row[cols[key]])
    for key in ("teff", "logg", "vmic"):
        if key not in cols:
            raise ValueError(f"parameter table lacks column {key!r}")
    if "feh" not in cols and "fe_h" not in cols:
        raise ValueError("parameter table lacks column 'feh'")
    for element in schema.ABUNDANCE_ELEMENTS:
        key = f"{element.lower()}_fe"
        if key in cols:
            labels[key] = float(row[cols[key]])
    if "a_li" in cols:
        labels["li_fe"] = float(row[cols["a_li"]]) - A_LI_SUN - labels["fe_h"]
    given = [float(row[cols[key]]) for key in ("vbroad", "rotation", "vsini") if key in cols]
    given = [v for v in given if v > 0]
    labels["vbroad"] = given[0] if given else vbroad(labels["fe_h"])
    return np.array([labels[n] for n in schema.label_names()])


def import_tsfitpy(folder: str | Path, out: str | Path, params_file: str = "spectra_parameters.csv",
                   medium: str = "air", vbroad: str | float = "prior", seed: int = 0,
                   input_resolution: float | None = None, progress: bool = True) -> ImportReport:
    """Import a TSFitPy grid folder into a grid file (see the module docstring)."""
    folder = Path(folder)
    table_path = folder / params_file
    if not table_path.is_file():
        raise FileNotFoundError(f"{table_path} not found: expected TSFitPy's parameter table in {folder}")
    if medium not in ("air", "vacuum"):
        raise ValueError(f"--medium must be 'air' or 'vacuum', got {medium!r}")
    table = pd.read_csv(table_path, sep=None, engine="python")
    table.columns = [c.strip() for c in table.columns]
    if "specname" not in table.columns:
        raise ValueError(f"{table_path}: lacks the 'specname' column")
    n = len(table)
    rng = np.random.default_rng(seed)
    # the grid prior draws one uniform deviate per row, in row order; its metal-poor cap needs the row's [Fe/H]
    deviates = rng.uniform(0, 1, n) if vbroad == "prior" else None
    fixed = None if deviates is not None else float(vbroad)

    def vbroad_of_row(i: int) -> Callable[[float], float]:
        if deviates is None:
            return lambda feh: float(fixed)
        return lambda feh: float(vbroad_from_uniform(deviates[i], feh))
    working, hr = working_grid(), hr_grid()
    # Input at finite resolution: broaden by the quadrature difference to reach R = 80 000.
    r_work = WORKING_RESOLUTION
    if input_resolution:
        if input_resolution <= WORKING_RESOLUTION:
            raise ValueError(f"--input-resolution {input_resolution:g} must exceed {WORKING_RESOLUTION}")
        r_work = 1.0 / np.sqrt(1.0 / WORKING_RESOLUTION**2 - 1.0 / input_resolution**2)
    attrs = {
        "seed": seed,
        "prior": f"imported:{folder.resolve()}",
        "engine": "turbospectrum (imported via TSFitPy)",
        "engine_version": "unknown",
        "linelist_sha256": "unknown (imported grid)",
        "atmosphere_source": "unknown (imported grid)",
        "input_medium": medium,
        "working_resolution": WORKING_RESOLUTION,
        "software": f"cinn4most {software_version()}",
    }
    report = ImportReport(n=n, written=0)
    with GridWriter(out, n, hr, attrs) as writer:
        done = writer.done
        for i, row in tqdm(list(table.iterrows()), desc="import", unit="spec", disable=not progress):
            if done[i]:
                continue
            name = str(row["specname"]).strip()
            try:
                labels = _labels_from_row(row, vbroad_of_row(i))
                wave, flux = read_text_spectrum(folder / name)
                if not np.all(np.isfinite(flux)) or np.any(flux <= 0):
                    raise ValueError("non-finite or non-positive flux (NLTE convergence failure?)")
                wave_air = wave if medium == "air" else vacuum_to_air(wave)
                segments = [(wave_air, flux) for _ in working.segments]
                work = to_working_grid(segments, working, r_work)
                hr_flux = fourmostify(work, labels[schema.label_names().index("vbroad")], working, hr)
            except (ValueError, FileNotFoundError) as exc:
                report.skipped[name] = str(exc)
                continue
            inside = all(p.lower <= v <= p.upper for p, v in zip(schema.ALL_LABELS, labels, strict=True))
            report.outside_bounds += not inside
            writer.write_row(i, hr_flux, labels, "imported", float("nan"))
            report.written += 1
    return report
