"""Radial velocity by cross-correlation against synthetic templates made with our own grid tools.

Templates (``spectra/data/rv_templates.npz``, built by ``spectra templates build``): a handful of
PySME spectra at R = 80 000 on the working grid (air, the HR windows padded by 5 Å), covering the
FGK prior: a solar dwarf, an F dwarf, a K giant, a cool dwarf and a metal-poor turn-off star.

:func:`measure_rv` resamples the observed spectrum and each template onto one uniform ln λ grid
(``STEP_KMS`` per pixel), cross-correlates their line depths (1 − f, mean-subtracted) over the
wavelengths both cover, keeps the template with the highest peak, and refines the peak with a
parabola through its top three points. The uncertainty is Zucker's (2003, MNRAS 342, 1291)
maximum-likelihood estimate from the CCF's curvature at its peak:
sigma_v^2 = -[N C''(v) / C(v) * C(v)^2 / (1 - C(v)^2)]^-1, with N the number of ln λ pixels
(each Doppler step counts as one independent pixel: an approximation that is close when the
observed pixel is at most about the step).

Sign convention: positive = receding (red-shifted); λ_rest = λ_obs / (1 + v/c), the first-order
Doppler factor (the relativistic correction is (v/c)^2/2 ~ 5e-7 at 300 km/s: < 0.003 Å here).

The Sun's own lines sit at about +0.3 km/s against laboratory wavelengths (gravitational redshift
+0.64 km/s less convective blueshift), so solar spectra "at rest" measure about +0.27 km/s here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.signal import correlate

from ..forward.degrade import C_KMS
from .prepare import contiguous

__all__ = ["RVResult", "RVTemplates", "build_templates", "default_templates", "doppler_to_rest", "measure_rv"]

TEMPLATE_FILE = "rv_templates.npz"
STEP_KMS = 0.5
#: (name, T_eff, log g, [Fe/H], v_mic) of the shipped templates
TEMPLATE_STARS: tuple[tuple[str, float, float, float, float], ...] = (
    ("sun", 5777.0, 4.44, 0.0, 1.0),
    ("f_dwarf", 6500.0, 4.2, 0.0, 1.5),
    ("k_giant", 4750.0, 2.5, 0.0, 1.5),
    ("k_dwarf", 4500.0, 4.5, 0.0, 0.8),
    ("metal_poor", 5800.0, 4.0, -1.5, 1.2),
)


@dataclass(frozen=True)
class RVTemplates:
    """Template spectra on one wavelength axis (air, Å): ``flux[k]`` is template ``names[k]``."""

    wave: np.ndarray
    flux: np.ndarray
    names: tuple[str, ...]
    params: np.ndarray  # (K, 4): teff, logg, fe_h, vmic

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, wave=self.wave, flux=self.flux.astype(np.float32), names=np.array(self.names),
                            params=self.params)

    @classmethod
    def load(cls, path) -> RVTemplates:
        with np.load(path) as data:
            return cls(data["wave"], data["flux"].astype(float), tuple(str(n) for n in data["names"]), data["params"])


def default_templates() -> RVTemplates:
    """The templates shipped in the package."""
    with resources.as_file(resources.files("spectra") / "data" / TEMPLATE_FILE) as path:
        if not path.exists():
            raise FileNotFoundError(f"{path}: RV templates missing; build them with `spectra templates build`")
        return RVTemplates.load(path)


def build_templates(progress: bool = True) -> RVTemplates:
    """Synthesise the template set with PySME (about 10 s per template)."""
    from tqdm.auto import tqdm

    from ..synth.synthesis import SpectrumMaker, labels_from_values

    maker = SpectrumMaker()
    fluxes = []
    for _, teff, logg, feh, vmic in tqdm(TEMPLATE_STARS, desc="RV templates", disable=not progress):
        flux, _ = maker.working_spectrum(labels_from_values(teff, logg, feh, vmic=vmic, vbroad=1.0))
        fluxes.append(flux)
    params = np.array([s[1:] for s in TEMPLATE_STARS], dtype=float)
    return RVTemplates(maker.working.wave.copy(), np.array(fluxes), tuple(s[0] for s in TEMPLATE_STARS), params)


@dataclass(frozen=True)
class RVResult:
    rv: float  # km/s, positive = receding
    error: float  # km/s
    template: str
    peak: float  # normalised CCF peak height (0..1)
    n_pixels: int


def doppler_to_rest(wave: np.ndarray, rv_kms: float) -> np.ndarray:
    """Observed wavelengths -> rest frame for a star receding at ``rv_kms``."""
    return np.asarray(wave, dtype=float) / (1.0 + rv_kms / C_KMS)


def _loglam_grid(lo: float, hi: float, step: float) -> np.ndarray:
    return np.arange(np.log(lo), np.log(hi), step / C_KMS)


def measure_rv(wave: np.ndarray, flux: np.ndarray, templates: RVTemplates | None = None,
               max_kms: float = 400.0, step: float = STEP_KMS) -> RVResult:
    """Radial velocity of a (roughly continuum-normalised) observed spectrum; air wavelengths in Å.

    Pixels with non-finite flux are ignored. Raises ``ValueError`` when the spectrum and the
    templates have less than 20 Å in common.
    """
    templates = templates or default_templates()
    wave, flux = np.asarray(wave, dtype=float), np.asarray(flux, dtype=float)
    good = np.isfinite(flux) & np.isfinite(wave)
    wave, flux = wave[good], flux[good]
    lag_max = int(np.ceil(max_kms / step))
    t_spans = [(templates.wave[s][0], templates.wave[s][-1]) for s in contiguous(templates.wave)]
    o_spans = [(wave[s][0], wave[s][-1]) for s in contiguous(wave)]
    obs_parts, tpl_parts = [], []
    margin = np.exp(lag_max * step / C_KMS)  # every lag must stay inside the template span
    for t_lo, t_hi in t_spans:
        for o_lo, o_hi in o_spans:
            lo, hi = max(t_lo * margin, o_lo), min(t_hi / margin, o_hi)
            if hi - lo < 5.0:
                continue
            lnl = _loglam_grid(lo, hi, step)
            obs_parts.append(1.0 - np.interp(lnl, np.log(wave), flux))
            # template on the same ln λ steps, extended by lag_max pixels on each side
            lnl_t = lnl[0] + np.arange(-lag_max, lnl.size + lag_max) * step / C_KMS
            tpl_parts.append(1.0 - np.array([np.interp(lnl_t, np.log(templates.wave), f) for f in templates.flux]))
    n_pix = sum(p.size for p in obs_parts)
    if n_pix * step / C_KMS * 5500.0 < 20.0:
        raise ValueError("the spectrum overlaps the RV templates (HR windows) by less than 20 A")
    lags = np.arange(-lag_max, lag_max + 1)
    best: tuple[str, np.ndarray] | None = None
    for k, name in enumerate(templates.names):
        num = np.zeros(lags.size)
        o2 = t2 = 0.0
        for obs, tpl in zip(obs_parts, tpl_parts, strict=True):
            o = obs - obs.mean()
            t = tpl[k] - tpl[k][lag_max:lag_max + o.size].mean()
            # correlate(t, o)[m] = sum_i t[i + m] o[i] (by FFT); template shifted by lag = lag_max - m
            num += correlate(t, o, mode="valid", method="fft")[::-1]
            o2 += float(o @ o)
            t2 += float(t[lag_max:lag_max + o.size] @ t[lag_max:lag_max + o.size])
        ccf = num / np.sqrt(o2 * t2)
        if best is None or ccf.max() > best[1].max():
            best = (name, ccf)
    name, ccf = best
    j = int(np.clip(np.argmax(ccf), 1, ccf.size - 2))
    y0, y1, y2 = ccf[j - 1], ccf[j], ccf[j + 1]
    denom = y0 - 2 * y1 + y2
    offset = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    rv = (lags[j] + offset) * step
    peak = float(y1 - 0.25 * (y0 - y2) * offset)
    curvature = denom / step**2  # C'' in 1/(km/s)^2
    if peak <= 0 or peak >= 1 or curvature >= 0:
        error = float("nan")
    else:
        error = float(np.sqrt(-1.0 / (n_pix * curvature / peak * peak**2 / (1 - peak**2))))
    return RVResult(rv=float(rv), error=error, template=name, peak=peak, n_pixels=int(n_pix))
