"""A line list for the whole prior: every line that is at least 0.5 % deep somewhere in it (issue 20).

Why a new list: the packaged merged list (``spectra.synth.linelists``) is a solar extract (VALD lines deeper than 0.1
in the Sun) plus a few additions, so it misses what matters in cool giants and metal-rich stars: weak atomic
lines that grow there, the TiO, CN, C2, MgH and ZrO bands. This module builds the list from every source in
``../shared/data/linelists`` and keeps a line when PySME's own central depth (the line alone, at disk centre,
infinite resolution: an upper bound on what it does at R 20 000) reaches :data:`DEPTH_THRESHOLD` in at least one
atmosphere of :data:`PRIOR_CORNERS`, the extremes of the training prior where lines are strongest.

Sources, in order of preference for a transition more than one of them lists (same species within
:data:`MATCH_TOLERANCE`):

1. GALAH DR3 (Buder et al. 2021; the Gaia-ESO list, with hyperfine components, isotopes, molecules and damping);
   every molecule it has comes from it alone (the other lists' versions of a band are dropped whole);
2. VALD3 "extract stellar" for the Sun (H I, and solar lines GALAH lacks);
3. FASMA (log gf tuned to the Sun; Tsantaki et al. 2018), atoms and molecules GALAH and VALD lack;
4. linemake (Placco et al. 2021), Li I and Eu II components.

Air wavelengths are converted to vacuum (PySME's convention). The list is a pure function of its inputs and the
corners: :func:`build_survey_linelist` returns it with a record (counts per source and species, the corners, the
threshold, the inputs' sha256) that ``spectra linelist build --survey`` writes beside it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .linelists import COLUMNS, LineListData, _in_windows, _read_moog

__all__ = ["DEPTH_THRESHOLD", "MATCH_TOLERANCE", "PRIOR_CORNERS", "SurveyLineList", "build_survey_linelist",
           "central_depths", "read_galah"]

#: a line is kept when its central depth reaches this in at least one corner atmosphere
DEPTH_THRESHOLD = 0.005
#: two lines of one species closer than this [Å] are the same transition (the preferred source's is kept)
MATCH_TOLERANCE = 0.03
#: (T_eff, log g, [M/H], v_mic): the prior's extremes for line strength: cool metal-rich giants and dwarfs (molecules,
#: weak neutral lines), the Sun, a hot metal-rich dwarf (ionised lines), a metal-poor giant (strong lines only)
PRIOR_CORNERS = (
    (4000.0, 1.0, 0.5, 1.8),
    (4000.0, 4.6, 0.5, 0.8),
    (4600.0, 2.5, 0.0, 1.4),
    (5772.0, 4.44, 0.0, 1.0),
    (7000.0, 4.0, 0.5, 2.0),
    (4800.0, 1.5, -2.5, 1.8),
)
#: molecules of the GALAH list: (Z1, Z2) -> PySME species name (without the ionisation stage)
_MOLECULES = {(22, 8): "TiO", (6, 7): "CN", (40, 8): "ZrO", (6, 6): "C2", (12, 1): "MgH", (14, 1): "SiH",
              (6, 1): "CH", (20, 1): "CaH", (8, 1): "OH", (26, 1): "FeH", (7, 1): "NH", (23, 8): "VO"}
#: MOOG molecule codes of the FASMA list -> PySME names
_MOOG_MOLECULES = {"606.0": "C2 1", "607.0": "CN 1", "112.0": "MgH 1", "822.0": "TiO 1", "106.0": "CH 1",
                   "108.0": "OH 1", "114.0": "SiH 1", "101.0": "H2 1", "107.0": "NH 1", "608.0": "CO 1"}


@dataclass
class SurveyLineList:
    """The list and how it was made (``record``: JSON-ready)."""

    lines: LineListData
    record: dict


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_galah(path: str | Path) -> pd.DataFrame:
    """The GALAH DR3 list (Korg's HDF5: vacuum λ, E_lo, log gf, γ_rad, γ_Stark, vdW, formula, ionisation) in the
    windows, with PySME species names; molecules this EOS does not know are dropped."""
    import h5py
    from pysme.abund import elements

    with h5py.File(path, "r") as f:
        wave = f["wl"][:].astype(float)
        keep = _in_windows(wave)
        form, stage = f["formula"][:][keep], f["ionization"][:][keep]
        table = {key: f[key][:][keep].astype(float) for key in ("E_lo", "log_gf", "gamma_rad", "gamma_stark", "vdW")}
    wave = wave[keep]
    names = [f"{elements[a - 1]} {s}" if b == 0 else (f"{_MOLECULES[(a, b)]} {s}" if (a, b) in _MOLECULES else "")
             for (a, b, _), s in zip(form.tolist(), stage.tolist(), strict=True)]
    df = pd.DataFrame({"species": names, "wlcent": wave, "excit": table["E_lo"], "gflog": table["log_gf"],
                       "gamrad": table["gamma_rad"], "gamqst": table["gamma_stark"], "gamvw": table["vdW"],
                       "lande": 0.0, "depth": 1.0, "reference": "GALAH DR3 (Buder+2021)"})
    return df[df["species"] != ""].reset_index(drop=True)


def _moog_species(path: Path) -> dict[str, str]:
    """Every species code of a MOOG list -> PySME name (atoms ``Z.s`` -> "El s+1"; known molecules)."""
    from pysme.abund import elements

    codes: set[str] = set()
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 4 and not line.lstrip().startswith("#"):
                try:
                    codes.add(f"{float(parts[1]):.1f}")
                except ValueError:
                    continue
    mapping = {}
    for code in codes:
        if code in _MOOG_MOLECULES:
            mapping[code] = _MOOG_MOLECULES[code]
        elif float(code) < 100:
            z, stage = int(float(code)), round(10 * (float(code) % 1))
            if 1 <= z <= len(elements):
                mapping[code] = f"{elements[z - 1]} {stage + 1}"
    return mapping


def _read_vald(path: Path) -> pd.DataFrame:
    from pysme.linelist.vald import ValdFile

    try:
        df = ValdFile(str(path))._lines
    except Exception as exc:  # PySME raises assorted errors on malformed VALD files
        raise ValueError(f"{path}: cannot be read as a VALD 'extract stellar' list ({exc})") from None
    df = df.assign(reference="VALD3: " + df["reference"].astype(str).str.strip())
    return df[COLUMNS][_in_windows(df["wlcent"].to_numpy())].reset_index(drop=True)


def _not_in(candidates: pd.DataFrame, present: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``candidates`` with no line of the same species within :data:`MATCH_TOLERANCE` in ``present``."""
    keep = np.ones(len(candidates), dtype=bool)
    for species, rows in candidates.groupby("species").indices.items():
        there = np.sort(present.loc[present["species"] == species, "wlcent"].to_numpy())
        if there.size == 0:
            continue
        wave = candidates["wlcent"].to_numpy()[rows]
        i = np.clip(np.searchsorted(there, wave), 1, there.size - 1) if there.size > 1 else np.zeros(wave.size, int)
        nearest = np.minimum(np.abs(there[i] - wave), np.abs(there[np.maximum(i - 1, 0)] - wave))
        keep[rows] = nearest > MATCH_TOLERANCE
    return candidates[keep]


def _is_molecule(species: str) -> bool:
    """"TiO 1", "C2 1": a name with more than one capital letter or a digit before the stage is a molecule."""
    name = species.split(" ")[0]
    return sum(c.isupper() for c in name) > 1 or any(c.isdigit() for c in name)


def _without(lines: pd.DataFrame, species: set[str]) -> pd.DataFrame:
    """``lines`` minus every line of ``species``: a molecule is taken whole from one list (GALAH's, from the
    molecular line lists of Plez, Masseron, Brooke...), never merged line by line with another list's version of the
    same band, whose wavelengths differ by more than any matching tolerance and would double its opacity."""
    return lines[~lines["species"].isin(species)]


def union_of_sources(shared: str | Path) -> tuple[pd.DataFrame, dict]:
    """Every line of the shared lists in the windows, one entry per transition (see the module docstring)."""
    folder = Path(shared) / "linelists"
    files = {"galah": folder / "korg_galah_dr3_linelist.h5",
             "vald": folder / "korg_vald3_sun_threshold01_5100-6860A_vac.vald",
             "fasma": folder / "fasma_elements_4500-6844.lst",
             "linemake": [folder / "linemake_moogatom05000", folder / "linemake_moogatom06000"]}
    for value in files.values():
        for p in value if isinstance(value, list) else [value]:
            if not p.is_file():
                raise FileNotFoundError(f"line list {p} not found (give --shared, the shared data folder)")
    merged = read_galah(files["galah"])
    counts = {"galah": len(merged)}
    molecules = set(merged.loc[merged["species"].map(_is_molecule), "species"])
    vald = _not_in(_without(_read_vald(files["vald"]), molecules), merged)
    merged = pd.concat([merged, vald], ignore_index=True)
    counts["vald_added"] = len(vald)
    fasma = _read_moog(files["fasma"], _moog_species(files["fasma"]), "FASMA (Tsantaki+2018)")
    fasma = _not_in(_without(fasma[_in_windows(fasma["wlcent"].to_numpy())], molecules), merged)
    merged = pd.concat([merged, fasma], ignore_index=True)
    counts["fasma_added"] = len(fasma)
    added = 0
    for p in files["linemake"]:
        extra = _read_moog(p, {"3.0": "Li 1", "63.1": "Eu 2"}, "linemake (Placco+2021)")
        extra = _not_in(extra[_in_windows(extra["wlcent"].to_numpy())], merged)
        merged, added = pd.concat([merged, extra], ignore_index=True), added + len(extra)
    counts["linemake_added"] = added
    inputs = {p.name: _sha256(p) for v in files.values() for p in (v if isinstance(v, list) else [v])}
    return merged.sort_values("wlcent", kind="stable").reset_index(drop=True), {"counts": counts, "inputs": inputs}


def central_depths(lines: pd.DataFrame, corner: tuple[float, float, float, float], atmospheres=None) -> np.ndarray:
    """PySME's central depth of every line (alone, disk centre) in the atmosphere of ``corner``."""
    from pysme.abund import Abund
    from pysme.linelist.linelist import LineList
    from pysme.sme import SME_Structure
    from pysme.synthesize import Synthesizer

    from .atmospheres import default_grid
    from .synthesis import SOLAR_MIXTURE

    logging.getLogger("pysme").setLevel(logging.ERROR)
    teff, logg, monh, vmic = corner
    atmo = (atmospheres or default_grid()).atmosphere(teff, logg, monh)
    sme = SME_Structure()
    sme.teff, sme.logg, sme.monh, sme.vmic = teff, logg, monh, vmic
    sme.abund = Abund(monh=monh, pattern=SOLAR_MIXTURE)
    sme.atmo = atmo.to_pysme()
    sme.linelist = LineList(lines[COLUMNS].reset_index(drop=True), lineformat="short", medium="vac")
    wave = lines["wlcent"].to_numpy()
    sme.wran = [[float(wave.min()) - 1.0, float(wave.max()) + 1.0]]
    sme = Synthesizer().update_cdr(sme)
    return np.asarray(sme.linelist["central_depth"], dtype=float)


def build_survey_linelist(shared: str | Path, corners=PRIOR_CORNERS, threshold: float = DEPTH_THRESHOLD,
                          wave_range: tuple[float, float] | None = None, log=print) -> SurveyLineList:
    """The union of the sources (:func:`union_of_sources`), cut to lines reaching ``threshold`` in a corner
    (``wave_range``: vacuum Å, only lines there; for tests and quick looks)."""
    merged, record = union_of_sources(shared)
    if wave_range is not None:
        merged = merged[merged["wlcent"].between(*wave_range)].reset_index(drop=True)
        record["wave_range"] = list(wave_range)
    log(f"union of the sources: {len(merged)} lines {record['counts']}")
    deepest = np.zeros(len(merged))
    for corner in corners:
        depth = central_depths(merged, corner)
        deepest = np.maximum(deepest, depth)
        log(f"corner {corner}: {int((depth >= threshold).sum())} lines at >= {threshold:g}")
    keep = (deepest >= threshold) | (merged["species"] == "H 1").to_numpy()
    kept = merged[keep].assign(depth=np.round(deepest[keep], 4))
    record.update(threshold=threshold, corners=[list(c) for c in corners], n_union=len(merged), n_kept=int(keep.sum()),
                  species=kept["species"].value_counts().to_dict(),
                  sources={k.split(" ")[0]: int(v) for k, v in kept["reference"].str.split(":").str[0].str.split(
                      " ").str[0].value_counts().items()})
    return SurveyLineList(LineListData(kept, source="survey line list (spectra.synth.linelist_survey)"), record)

