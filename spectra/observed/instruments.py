"""Resolving power of an observed spectrum: from its header, else from a table of instruments and modes.

The network expects spectra at the training resolution, so ingestion must know each input's R to match it
(``spectra.observed.prepare.match_resolution``). Order of precedence (:func:`resolution_from_header`):

1. a header keyword that states it: ``SPEC_RES`` (ESO Phase 3), ``SPECRES`` (4MOST L1), ``RESOLUTION``,
   ``RESOLUT``, ``R``;
2. the instrument (``INSTRUME``) and its mode, slit or setting, from :data:`INSTRUMENTS` below;
3. nothing: the caller needs ``--resolution`` or a row in the ``--table`` CSV (``spectra ingest``).

Values are the instruments' documented nominal resolving powers (ESO, CFHT, TBL, Magellan user manuals).
Slit-limited spectrographs scale as R = R_ref x (slit_ref / slit); fibre-fed ones have one R per mode.

=================  ===========================================  =======================================
instrument         mode / setting (header keyword)              R
=================  ===========================================  =======================================
HARPS              HAM (default), EGGS (``ESO INS MODE``)       115 000; 80 000
HARPS-N            HAM                                          115 000
ESPRESSO           SINGLEHR, SINGLEUHR, MULTIMR (``ESO INS      140 000; 190 000; 70 000
                   MODE``)
FEROS              (one mode)                                   48 000
UVES               red arm slit width in arcsec (``ESO INS      41 400 x 1.0 / slit
                   SLIT3 WID``; blue arm ``SLIT2``)
GIRAFFE (FLAMES)   HR setting (``ESO INS EXP MODE``/``ESO INS   HR9B 25 900, HR10 19 800, HR11 24 200,
                   FILT NAME``)                                 HR12 18 700, HR13 22 500, HR14A 17 740,
                                                                HR14B 28 800, HR15 19 300, HR15N 17 000
NARVAL             polarimetric (default), star only            65 000; 75 000
ESPaDOnS           star+sky / polarimetric (default), star      68 000; 81 000
                   only (``INSTMODE``)
MIKE               red arm, slit ``SLITSIZE`` (e.g. 0.70x5.00)  22 000 x 0.7 / slit
4MOST              HR, LR                                       20 000; 6 500
=================  ===========================================  =======================================
"""

from __future__ import annotations

import re

__all__ = ["INSTRUMENTS", "Headers", "header_text", "resolution_from_header"]

#: instrument name (normalised: upper case, no blanks or dashes) -> short description for messages
INSTRUMENTS = {
    "HARPS": "HARPS: HAM 115 000, EGGS 80 000",
    "HARPSN": "HARPS-N: 115 000",
    "ESPRESSO": "ESPRESSO: SINGLEHR 140 000, SINGLEUHR 190 000, MULTIMR 70 000",
    "FEROS": "FEROS: 48 000",
    "UVES": "UVES: 41 400 x 1 arcsec / slit width",
    "GIRAFFE": "GIRAFFE: by HR setting",
    "FLAMES": "GIRAFFE: by HR setting",
    "NARVAL": "NARVAL: polarimetric 65 000, star only 75 000",
    "ESPADONS": "ESPaDOnS: star+sky 68 000, star only 81 000",
    "MIKE": "MIKE red arm: 22 000 x 0.7 arcsec / slit width",
    "4MOSTHR": "4MOST HR: 20 000",
    "4MOSTLR": "4MOST LR: 6 500",
    "4MOST": "4MOST: HR 20 000, LR 6 500",
}

_GIRAFFE = {"HR9B": 25_900.0, "HR10": 19_800.0, "HR11": 24_200.0, "HR12": 18_700.0, "HR13": 22_500.0,
            "HR14A": 17_740.0, "HR14B": 28_800.0, "HR15": 19_300.0, "HR15N": 17_000.0}
_RESOLUTION_KEYS = ("SPEC_RES", "SPECRES", "RESOLUTION", "RESOLUT", "R")


class Headers:
    """FITS headers looked up in order (e.g. a table's, then the primary's), keeping ESO ``HIERARCH`` keywords
    reachable with or without the prefix (merging headers into a dict loses the prefix)."""

    def __init__(self, *headers):
        self.headers = [h for h in headers if h is not None]

    def get(self, key: str, default=None):
        names = (key, f"HIERARCH {key}") if not key.startswith("HIERARCH ") else (key, key[len("HIERARCH "):])
        for header in self.headers:
            for name in names:
                try:
                    value = header.get(name)
                except (KeyError, ValueError):
                    value = None
                if value not in (None, ""):
                    return value
        return default

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None


def header_text(header, *keys: str) -> str:
    """The first non-empty value among ``keys``, as stripped text ("" if none)."""
    for key in keys:
        value = header.get(key)
        if value not in (None, ""):
            return str(value).strip()
    return ""


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number > 0 else None  # NaN and sentinels out


def _slit(text: str) -> float | None:
    match = re.match(r"\s*([0-9]*\.?[0-9]+)", text or "")
    return _float(match.group(1)) if match else None


def resolution_from_header(header, instrument: str = "") -> tuple[float | None, str]:
    """(R, where it came from) for a FITS header; (None, reason) when unknown. ``header``: :class:`Headers` (or
    an astropy ``Header``, which is wrapped so that ESO keys resolve with or without ``HIERARCH``)."""
    if not isinstance(header, Headers):
        header = Headers(header)
    for key in _RESOLUTION_KEYS:
        r = _float(header.get(key))
        if r is not None and r > 100:
            return r, f"header {key}"
    name = (instrument or header_text(header, "INSTRUME")).upper().replace(" ", "").replace("-", "").replace("_", "")
    if not name:
        return None, "no resolution keyword and no INSTRUME in the header"
    mode = header_text(header, "ESO INS MODE", "INSTMODE", "OBSMODE").upper()
    if name.startswith("HARPSN") or name == "HARPN":
        return 115_000.0, "instrument table: HARPS-N"
    if name.startswith("HARPS"):
        return (80_000.0, "instrument table: HARPS EGGS") if "EGGS" in mode else (
            115_000.0, "instrument table: HARPS HAM")
    if name.startswith("ESPRESSO"):
        if "UHR" in mode:
            return 190_000.0, "instrument table: ESPRESSO UHR"
        if "MR" in mode:
            return 70_000.0, "instrument table: ESPRESSO MR"
        return 140_000.0, "instrument table: ESPRESSO HR"
    if name.startswith("FEROS"):
        return 48_000.0, "instrument table: FEROS"
    if name.startswith("UVES"):
        slit = _float(header.get("ESO INS SLIT3 WID")) or _float(header.get("ESO INS SLIT2 WID"))
        if slit is None:
            return None, "UVES without a slit width (ESO INS SLIT3 WID) or SPEC_RES"
        return 41_400.0 / slit, f"instrument table: UVES slit {slit:g} arcsec"
    if name.startswith(("GIRAFFE", "FLAMES")):
        text = " ".join(header_text(header, k) for k in ("ESO INS EXP MODE", "ESO INS FILT NAME", "SETUP", "SETTING"))
        setting = next((s for s in sorted(_GIRAFFE, key=len, reverse=True) if s in text.upper().replace(" ", "")),
                       None)
        if setting is None:
            return None, "GIRAFFE without a known HR setting in the header"
        return _GIRAFFE[setting], f"instrument table: GIRAFFE {setting}"
    if name.startswith("NARVAL"):
        star_only = "STAR" in mode and "SKY" not in mode and "POL" not in mode
        return (75_000.0, "instrument table: NARVAL star only") if star_only else (
            65_000.0, "instrument table: NARVAL polarimetric")
    if name.startswith("ESPADONS"):
        declared = re.search(r"R\s*=\s*([0-9]{4,6})", mode)
        if declared:
            return float(declared.group(1)), "header INSTMODE"
        star_only = "STAR ONLY" in mode or "STAR-ONLY" in mode
        return (81_000.0, "instrument table: ESPaDOnS star only") if star_only else (
            68_000.0, "instrument table: ESPaDOnS star+sky")
    if name.startswith("MIKE"):
        slit = _slit(header_text(header, "SLITSIZE", "SLIT"))
        if slit is None:
            return None, "MIKE without a slit size (SLITSIZE)"
        return 22_000.0 * 0.7 / slit, f"instrument table: MIKE red, slit {slit:g} arcsec"
    if name.startswith("4MOST"):
        return (6_500.0, "instrument table: 4MOST LR") if "LR" in name + mode else (
            20_000.0, "instrument table: 4MOST HR")
    return None, f"instrument {instrument or name!r} is not in the table (spectra.observed.instruments)"
