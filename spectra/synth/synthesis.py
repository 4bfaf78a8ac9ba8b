"""Spectrum synthesis: PySME behind one small interface, plus the whole label -> 4MOST HR chain.

``SynthesisEngine.synthesize(labels)`` returns the continuum-normalised spectrum of each HR
window (air wavelengths, PySME's own adaptive sampling, no broadening but v_mic). Another engine
(e.g. Turbospectrum) can stand behind the same call. ``SpectrumMaker`` chains synthesis with the
post-processing of ``degrade`` and is what the grid builder calls once per row.

PySME settings: LTE, the embedded atmosphere from ``atmospheres``, the merged vacuum line list
from ``linelists``, abundances from the Asplund et al. (2009) solar mixture scaled by [Fe/H],
with [X/Fe] applied to each varied element. v_mac = v sin i = 0 in PySME: broadening is done
afterwards, as in the paper.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .. import schema
from ..forward.degrade import fourmostify, to_working_grid
from ..wavegrid import WavelengthGrid, air_to_vacuum, hr_grid, vacuum_to_air, working_grid
from .atmospheres import AtmosphereGrid, default_grid
from .linelists import LineListData, default_linelist

__all__ = ["SOLAR_MIXTURE", "PySMEEngine", "SpectrumMaker", "Synthesis", "labels_from_values"]

SOLAR_MIXTURE = "asplund2009"
SYNTHESIS_PAD = 1.0  # Å beyond the working grid, so the R 80 000 kernel has data at the edges


@dataclass
class Synthesis:
    """Raw synthesis result: per window (air wavelength, normalised flux), and bookkeeping."""

    segments: list[tuple[np.ndarray, np.ndarray]]
    atmosphere_method: str
    seconds: float
    meta: dict = field(default_factory=dict)


def labels_from_values(teff: float, logg: float, fe_h: float, vmic: float = 1.0, vbroad: float = 3.5,
                       xfe: dict[str, float] | None = None) -> dict[str, float]:
    """Full label dictionary (all ``schema.ALL_LABELS``), unspecified [X/Fe] = 0, bounds checked."""
    labels = {p.name: 0.0 for p in schema.ALL_LABELS}
    labels.update(teff=teff, logg=logg, fe_h=fe_h, vmic=vmic, vbroad=vbroad)
    for element, value in (xfe or {}).items():
        name = f"{element.lower()}_fe"
        if name not in labels or name == "fe_fe":
            known = ", ".join(schema.ABUNDANCE_ELEMENTS)
            raise ValueError(f"[{element}/Fe] is not a varied abundance; choose from {known}")
        labels[name] = float(value)
    schema.check_in_bounds(labels)
    return labels


class PySMEEngine:
    """PySME LTE synthesis from our atmospheres and line list.

    Arguments:
        atmospheres: grid to interpolate atmospheres from (default: the packaged MARCS grid).
        linelist: merged line list (default: the packaged one).
        windows_air: list of (start, end) air wavelengths to synthesise (default: working grid).
        accrt: PySME's radiative-transfer accuracy (None = PySME default). 1e-3 saves ~15 % for a
            0.14 % change after R 20 000 smoothing (shared data README).
    """

    name = "pysme"

    def __init__(self, atmospheres: AtmosphereGrid | None = None, linelist: LineListData | None = None,
                 windows_air: list[tuple[float, float]] | None = None, accrt: float | None = None):
        self.atmospheres = atmospheres or default_grid()
        self.linelist = linelist or default_linelist()
        if windows_air is None:
            wg = working_grid()
            windows_air = [(wg.wave[s][0], wg.wave[s][-1]) for s in wg.segments]
        self.windows_air = [(float(lo), float(hi)) for lo, hi in windows_air]
        self.accrt = accrt
        self._sme_linelist = None

    @property
    def version(self) -> str:
        from importlib.metadata import version

        return f"pysme-astro {version('pysme-astro')}"

    def synthesize(self, labels: dict[str, float]) -> Synthesis:
        from pysme.abund import Abund
        from pysme.sme import SME_Structure
        from pysme.synthesize import synthesize_spectrum

        logging.getLogger("pysme").setLevel(logging.ERROR)  # EOS-vs-model Pe notes flood the bar
        if self._sme_linelist is None:
            self._sme_linelist = self.linelist.to_pysme()
        atmo = self.atmospheres.atmosphere(labels["teff"], labels["logg"], labels["fe_h"])
        abund = Abund(monh=labels["fe_h"], pattern=SOLAR_MIXTURE)
        for element in schema.ABUNDANCE_ELEMENTS:
            abund.xm[element] = labels.get(f"{element.lower()}_fe", 0.0)
        sme = SME_Structure()
        sme.teff, sme.logg, sme.monh = labels["teff"], labels["logg"], labels["fe_h"]
        sme.vmic, sme.vmac, sme.vsini = labels["vmic"], 0.0, 0.0
        sme.abund = abund
        sme.atmo = atmo.to_pysme()
        sme.linelist = self._sme_linelist
        sme.wran = [[float(air_to_vacuum(lo - SYNTHESIS_PAD)), float(air_to_vacuum(hi + SYNTHESIS_PAD))]
                    for lo, hi in self.windows_air]
        sme.normalize_by_continuum = True
        sme.vrad_flag, sme.cscale_flag = "none", "none"
        if self.accrt is not None:
            sme.accrt = self.accrt
        start = time.perf_counter()
        sme = synthesize_spectrum(sme)
        seconds = time.perf_counter() - start
        segments = []
        for wave, flux in zip(sme.wave, sme.synth, strict=True):
            wave, flux = np.asarray(wave, dtype=float), np.asarray(flux, dtype=float)
            if not np.all(np.isfinite(flux)):
                raise RuntimeError(f"PySME returned non-finite flux for {labels}")
            segments.append((vacuum_to_air(wave), flux))
        return Synthesis(segments, atmo.method, seconds, {"atmosphere_sources": atmo.sources})


class SpectrumMaker:
    """labels -> noiseless 4MOST HR spectrum (and the R 80 000 working-grid spectrum)."""

    def __init__(self, engine: PySMEEngine | None = None, working: WavelengthGrid | None = None,
                 hr: WavelengthGrid | None = None):
        self.engine = engine or PySMEEngine()
        self.working = working or working_grid()
        self.hr = hr or hr_grid()

    def working_spectrum(self, labels: dict[str, float]) -> tuple[np.ndarray, Synthesis]:
        synthesis = self.engine.synthesize(labels)
        return to_working_grid(synthesis.segments, self.working), synthesis

    def hr_spectrum(self, labels: dict[str, float]) -> tuple[np.ndarray, Synthesis]:
        working_flux, synthesis = self.working_spectrum(labels)
        return fourmostify(working_flux, labels["vbroad"], self.working, self.hr), synthesis
