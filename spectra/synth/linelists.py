"""One merged line list for the 4MOST HR windows, in **vacuum** wavelengths (PySME's input convention).

Sources (``../shared/data/linelists``, see its README for licences):

* VALD3 "extract stellar" for the Sun (vacuum; full damping constants): the backbone.
* The lines that list lacks because they are too weak in the Sun, but that matter for our labels:
  Li I 6707 (Li/Fe), C2 and CN (C/Fe, N/Fe), MgH (Mg/Fe and log g in cool dwarfs) from the FASMA
  list (air; log gf astrophysically tuned), and Eu II 6437, 6645 from linemake (air).

Air wavelengths are converted with :func:`spectra.wavegrid.air_to_vacuum`. Lines without damping
constants get 0, which PySME reads as "use the classical/Unsöld approximation".

The merged list is built once (``spectra linelist build``) and shipped inside the package as a
gzipped CSV, so the installed product does not need the shared data folder; its SHA-256 (of the
canonical CSV text) goes into every grid's provenance.
"""

from __future__ import annotations

import hashlib
import io
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..wavegrid import HR_WINDOWS, WORKING_PAD, air_to_vacuum

__all__ = ["COLUMNS", "PACKAGED_LINELISTS", "LineListData", "build_merged_linelist", "default_linelist",
           "linelist_from_option", "packaged_linelist", "read_linelist"]

COLUMNS = ["species", "wlcent", "excit", "gflog", "gamrad", "gamqst", "gamvw", "lande", "depth", "reference"]
DEFAULT_LINELIST_FILE = "linelist_4most_hr_vac.csv.gz"

# MOOG species codes -> PySME species names for the lines we add.
_FASMA_SPECIES = {"3.0": "Li 1", "606.0": "C2 1", "607.0": "CN 1", "112.0": "MgH 1"}
_LINEMAKE_SPECIES = {"63.1": "Eu 2"}
_MARGIN = WORKING_PAD + 3.0  # Å beyond each HR window (working-grid pad + rotation + R80000 wings)


class LineListData:
    """A line list as a sorted DataFrame with the PySME columns, plus its hash."""

    def __init__(self, lines: pd.DataFrame, source: str):
        missing = [c for c in COLUMNS if c not in lines.columns]
        if missing:
            raise ValueError(f"{source}: line list lacks column(s) {', '.join(missing)}; expected {COLUMNS}")
        lines = lines[COLUMNS].copy()
        numeric = COLUMNS[1:-1]
        try:
            lines[numeric] = lines[numeric].astype(float)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: non-numeric value in a numeric line-list column ({exc})") from None
        bad = ~np.isfinite(lines[["wlcent", "excit", "gflog"]].to_numpy()).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{source}: line {row} has a non-finite wavelength, excitation or log gf")
        if (lines["wlcent"] <= 0).any():
            raise ValueError(f"{source}: non-positive wavelength in column 'wlcent'")
        self.lines = lines.sort_values("wlcent", kind="stable").reset_index(drop=True)
        self.source = source

    def __len__(self) -> int:
        return len(self.lines)

    def to_csv_text(self) -> str:
        return self.lines.to_csv(index=False, float_format="%.6g")

    def sha256(self) -> str:
        return hashlib.sha256(self.to_csv_text().encode()).hexdigest()

    def species_counts(self) -> dict[str, int]:
        return self.lines["species"].value_counts().to_dict()

    def to_pysme(self):
        """PySME ``LineList`` (vacuum); imported lazily since PySME is an optional extra."""
        from pysme.linelist.linelist import LineList

        return LineList(self.lines.copy(), lineformat="short", medium="vac")


def _in_windows(wave_vac: np.ndarray) -> np.ndarray:
    keep = np.zeros(wave_vac.shape, dtype=bool)
    for _, lo, hi in HR_WINDOWS:
        keep |= (wave_vac >= air_to_vacuum(lo - _MARGIN)) & (wave_vac <= air_to_vacuum(hi + _MARGIN))
    return keep


def _read_moog(path: Path, species_map: dict[str, str], reference: str) -> pd.DataFrame:
    """Read the chosen species from a MOOG-style list (air): wave, code, E_low, log gf[, vdW[, D0]]."""
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) < 4 or line.lstrip().startswith("#"):
                continue
            code = f"{float(parts[1]):.1f}" if _is_number(parts[1]) else parts[1]
            if code not in species_map:
                continue
            try:
                wave, excit, gflog = float(parts[0]), float(parts[2]), float(parts[3])
                vdw = float(parts[4]) if len(parts) > 4 and _is_number(parts[4]) else 0.0
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected 'wavelength code E_low log_gf [vdW]', "
                                 f"found {line.strip()!r}") from None
            rows.append((species_map[code], wave, excit, gflog, vdw))
    if not rows:
        raise ValueError(f"{path}: no lines of species {sorted(species_map)} found (is it a MOOG list?)")
    df = pd.DataFrame(rows, columns=["species", "wave_air", "excit", "gflog", "gamvw"])
    return pd.DataFrame({
        "species": df["species"],
        "wlcent": air_to_vacuum(df["wave_air"].to_numpy()),
        "excit": df["excit"],
        "gflog": df["gflog"],
        "gamrad": 0.0,
        "gamqst": 0.0,
        "gamvw": df["gamvw"],
        "lande": 0.0,
        "depth": 1.0,
        "reference": reference,
    })


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_merged_linelist(vald: Path, fasma: Path, linemake: list[Path]) -> LineListData:
    """Merge VALD (vacuum) with FASMA Li/C2/CN/MgH and linemake Eu II (air -> vacuum)."""
    from pysme.linelist.vald import ValdFile

    for p in [vald, fasma, *linemake]:
        if not Path(p).is_file():
            raise FileNotFoundError(f"line list {p} not found")
    try:
        vald_df = ValdFile(str(vald))._lines
    except Exception as exc:  # PySME raises assorted errors on malformed VALD files
        raise ValueError(f"{vald}: cannot be read as a VALD 'extract stellar' list ({exc})") from None
    vald_df = vald_df.assign(reference="VALD3: " + vald_df["reference"].astype(str).str.strip())
    pieces = [vald_df[COLUMNS], _read_moog(Path(fasma), _FASMA_SPECIES, "FASMA (Tsantaki+2018)")]
    for p in linemake:
        try:
            pieces.append(_read_moog(Path(p), _LINEMAKE_SPECIES, "linemake (Placco+2021)"))
        except ValueError:  # this linemake file holds no Eu II lines
            continue
    merged = pd.concat(pieces, ignore_index=True)
    merged = merged[_in_windows(merged["wlcent"].to_numpy())]
    return LineListData(merged, source=f"merged: {Path(vald).name} + {Path(fasma).name} + "
                                       + " + ".join(Path(p).name for p in linemake))



def read_linelist(path: str | Path) -> LineListData:
    """Read a merged line list (CSV or CSV.gz with :data:`COLUMNS`, vacuum wavelengths)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"line list {path} not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable CSV line list ({exc})") from None
    return LineListData(df, source=str(path))


#: line lists shipped in the package: name -> (file, what it is)
PACKAGED_LINELISTS = {
    "merged": (DEFAULT_LINELIST_FILE, "VALD solar extract + FASMA Li/C2/CN/MgH + linemake Eu II (the grids of "
                                      "sessions 1-6)"),
    "survey-sun": ("linelist_survey_sun_vac.csv.gz", "every line deeper than 0.5 % somewhere in the prior "
                                                     "(`spectra linelist survey`), log gf and vdW calibrated on the "
                                                     "UVES Sun (`spectra linelist calibrate`; issue 20)"),
}
_PACKAGED: dict[str, LineListData] = {}


def packaged_linelist(name: str = "merged") -> LineListData:
    """A line list shipped in the package (:data:`PACKAGED_LINELISTS`), read once per process."""
    if name not in PACKAGED_LINELISTS:
        raise ValueError(f"no packaged line list {name!r}; choose from {', '.join(PACKAGED_LINELISTS)}")
    if name not in _PACKAGED:
        ref = resources.files("spectra") / "data" / PACKAGED_LINELISTS[name][0]
        with resources.as_file(ref) as p:
            if not Path(p).exists():
                raise FileNotFoundError(f"packaged line list {p} is missing; rebuild with `spectra linelist build`")
            data = LineListData(pd.read_csv(io.BytesIO(Path(p).read_bytes()), compression="gzip"), source=str(p))
        _PACKAGED[name] = data
    return _PACKAGED[name]


def default_linelist() -> LineListData:
    """The merged list shipped in the package (what the kept grids and the shipped model were made with)."""
    return packaged_linelist("merged")


def linelist_from_option(value: str | None) -> LineListData:
    """``--linelist``: the name of a packaged list, a CSV file, or None for the default."""
    if value is None:
        return default_linelist()
    if value in PACKAGED_LINELISTS:
        return packaged_linelist(value)
    return read_linelist(value)
