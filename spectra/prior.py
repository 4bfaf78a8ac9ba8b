"""The grid prior: quasi-random labels that mimic the paper's Fig. 1 (FGK stars, metallicity toward solar).

Draws use a scrambled Sobol sequence (``scipy.stats.qmc``): its first n points are the same for any
larger n, so ``spectra grid --n 1000`` extends a 500-row grid made with the same seed row for row.
Each Sobol coordinate is mapped through an inverse CDF:

* **Evolutionary stage** (u0): 55 % dwarfs/subgiants, 45 % giants.
* **Dwarfs**: T_eff uniform in 4000-7000 K; log g between the main sequence
  ``4.6 - 0.35 (T_eff - 4000)/3000`` and 0.9 dex below it (subgiants), capped at 5.0.
* **Giants**: log g uniform in 1.0-3.4; T_eff along a red-giant branch
  ``4000 + 450 (log g - 1) - 250 max([Fe/H], -2.5)`` K (metal-poor giants are hotter) +/- 350 K.
* **[Fe/H]**: mixture of 60 % N(-0.15, 0.35) and 40 % uniform on [-5, +0.5] (truncated to the
  bounds): most stars near solar, every metallicity represented for training.
* **v_mic**: uniform 0.5-2 km/s (paper Sect. 2.1).
* **v_broad**: log-uniform 1-100 km/s for [Fe/H] > -2 and 1-30 km/s below ("old stars rotate
  slower": the break in the paper's Fig. 1).
* **[X/Fe]**: Galactic trends with scatter: alpha elements (O, Mg, Si, Ca, Ti) +0.4 for
  [Fe/H] <= -1 falling linearly to 0 at [Fe/H] = 0, sigma 0.2; Mn the mirror image (-0.4),
  sigma 0.2; Eu +0.4 trend, sigma 0.25; C 0 +/- 0.3, N +0.2 +/- 0.4; the others 0 with sigma a
  sixth of their range. Everything clipped to ``schema`` bounds.
* **Li**: A(Li) uniform in -0.5...3.3 (depleted to meteoritic), [Li/Fe] = A(Li) - 1.05 - [Fe/H]
  (Asplund et al. 2009 solar A(Li) = 1.05), clipped to the bounds.

**Focus regions** (``draw_labels(..., focus=...)``, ``spectra grid --focus``): the same prior restricted to a part
of the Kiel diagram where an emulator needs more training spectra than the prior's share gives it (its held-out
errors say where: the cool giants' TiO forest). Each is a separate Sobol sequence mapped through the same inverse
CDFs with one coordinate's range narrowed (and, for the giant or dwarf regions, every star on that branch),
recorded as ``prior = "kiel-fgk-v1+<focus>"`` in the grid; such grids feed an emulator (a map from labels to
spectra, indifferent to how the labels were drawn), never a posterior
network, whose prior they would not be.

* ``cool-giants``: every star a giant, log g uniform in 1.0-2.6 (the cool end of the branch: 3650-4950 K at
  solar [Fe/H]).
* ``metal-rich``: [Fe/H] uniform in 0.0-0.5, dwarfs and giants as in the prior.
* ``cool-dwarfs``: every star a dwarf of T_eff 4000-4800 K (log g and everything else as the prior's dwarfs). After
  the cool-giant grids, half of the held-out stars with the largest emulator error are such dwarfs (session 22:
  T_eff 4000-4600 K, log g 4.0-4.4, rms 0.8-1.4 %; ``benchmarks/results/emulator/recipe_study.md``), which the
  prior's dwarf branch (4000-7000 K) gives a quarter of its stars.
* ``metal-poor``: [Fe/H] uniform from the lower bound to -2.0, dwarfs and giants as in the prior. Their few weak
  lines hold little information, so an emulator error of 0.1 % there shifts a likelihood fit by 50-120 K: they
  carry a third of the emulator floor in T_eff and most of it in log g (``benchmarks/results/emulator/``).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import norm, qmc

from . import schema
from .contracts.conventions import vbroad_from_uniform

__all__ = ["COOL_DWARF_TEFF", "FOCUS_REGIONS", "PRIOR_VERSION", "draw_labels", "label_trends", "prior_name"]

PRIOR_VERSION = "kiel-fgk-v1"
FOCUS_REGIONS = ("cool-giants", "metal-rich", "metal-poor", "cool-dwarfs")
#: T_eff range [K] of the cool-dwarfs focus region
COOL_DWARF_TEFF = (4000.0, 4800.0)
#: [Fe/H] upper edge of the metal-poor focus region
METAL_POOR_EDGE = -2.0
A_LI_SUN = 1.05
_ALPHA = ("O", "Mg", "Si", "Ca", "Ti")


def _feh_ppf(u: np.ndarray) -> np.ndarray:
    p = schema.parameter("fe_h")
    x = np.linspace(p.lower, p.upper, 4001)
    pdf = 0.6 * norm.pdf(x, -0.15, 0.35) / (norm.cdf(p.upper, -0.15, 0.35) - norm.cdf(p.lower, -0.15, 0.35))
    pdf += 0.4 / (p.upper - p.lower)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    return np.interp(u, cdf / cdf[-1], x)


def _alpha_trend(feh: np.ndarray) -> np.ndarray:
    return np.clip(-0.4 * feh, 0.0, 0.4)


def label_trends() -> dict[str, list[float]]:
    """The prior's median of every [X/Fe] as a function of [Fe/H]: {name: [slope, offset, low, high]} meaning
    ``clip(slope [Fe/H] + offset, low, high)``. A model of spectra that needs abundances the cINN does not infer
    (the re-simulation at the MAP) fills them with these, recorded in the bundle so the runtime needs no prior."""
    trends = {}
    for element in schema.ABUNDANCE_ELEMENTS:
        p = schema.parameter(f"{element.lower()}_fe")
        if element in (*_ALPHA, "Eu"):
            rule = [-0.4, 0.0, 0.0, 0.4]  # _alpha_trend
        elif element == "Mn":
            rule = [0.4, 0.0, -0.4, 0.0]
        elif element == "N":
            rule = [0.0, 0.2, 0.2, 0.2]
        else:
            rule = [0.0, 0.0, 0.0, 0.0]
        rule[2], rule[3] = max(rule[2], p.lower), min(rule[3], p.upper)
        trends[p.name] = rule
    return trends


def prior_name(focus: str | None = None) -> str:
    """The ``prior`` a grid records: the prior's version, with its focus region if it has one."""
    return PRIOR_VERSION if focus is None else f"{PRIOR_VERSION}+{focus}"


def draw_labels(n: int, seed: int, focus: str | None = None) -> np.ndarray:
    """(n, K) labels in ``schema.ALL_LABELS`` order, deterministic in (n-prefix, seed, focus)."""
    if n < 1:
        raise ValueError(f"--n must be a positive number of spectra, got {n}")
    if focus is not None and focus not in FOCUS_REGIONS:
        raise ValueError(f"focus {focus!r} is not a region of the prior; choose one of {', '.join(FOCUS_REGIONS)}")
    names = schema.label_names()
    dims = 7 + len(schema.ABUNDANCE_ELEMENTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "balance properties" for n not a power of 2
        u = qmc.Sobol(d=dims, scramble=True, seed=seed).random(n)
    u = np.clip(u, 1e-9, 1 - 1e-9)
    out = np.zeros((n, len(names)))
    col = {name: i for i, name in enumerate(names)}

    if focus == "metal-rich":
        feh = 0.5 * u[:, 3]
    elif focus == "metal-poor":
        lower = schema.parameter("fe_h").lower
        feh = lower + (METAL_POOR_EDGE - lower) * u[:, 3]
    else:
        feh = _feh_ppf(u[:, 3])
    dwarf = np.zeros(n, dtype=bool) if focus == "cool-giants" else u[:, 0] < 0.55
    if focus == "cool-dwarfs":
        dwarf[:] = True
    teff_lo, teff_hi = COOL_DWARF_TEFF if focus == "cool-dwarfs" else (4000.0, 7000.0)
    teff_d = teff_lo + (teff_hi - teff_lo) * u[:, 1]
    logg_d = np.minimum(4.6 - 0.35 * (teff_d - 4000.0) / 3000.0 - 0.9 * u[:, 2], 5.0)
    logg_g = 1.0 + (1.6 if focus == "cool-giants" else 2.4) * u[:, 1]
    teff_g = 4000.0 + 450.0 * (logg_g - 1.0) - 250.0 * np.maximum(feh, -2.5) + 700.0 * (u[:, 2] - 0.5)
    out[:, col["teff"]] = np.where(dwarf, teff_d, teff_g)
    out[:, col["logg"]] = np.where(dwarf, logg_d, logg_g)
    out[:, col["fe_h"]] = feh
    out[:, col["vmic"]] = 0.5 + 1.5 * u[:, 4]
    out[:, col["vbroad"]] = vbroad_from_uniform(u[:, 5], feh)
    a_li = -0.5 + 3.8 * u[:, 6]
    out[:, col["li_fe"]] = a_li - A_LI_SUN - feh

    alpha = _alpha_trend(feh)
    for k, element in enumerate(e for e in schema.ABUNDANCE_ELEMENTS if e != "Li"):
        p = schema.parameter(f"{element.lower()}_fe")
        z = norm.ppf(u[:, 7 + k])
        if element in _ALPHA:
            value = alpha + 0.2 * z
        elif element == "Mn":
            value = -alpha + 0.2 * z
        elif element == "Eu":
            value = alpha + 0.25 * z
        elif element == "C":
            value = 0.3 * z
        elif element == "N":
            value = 0.2 + 0.4 * z
        else:
            value = (p.upper - p.lower) / 6.0 * z
        out[:, col[p.name]] = value

    for p in schema.ALL_LABELS:
        out[:, col[p.name]] = np.clip(out[:, col[p.name]], p.lower, p.upper)
    return out
