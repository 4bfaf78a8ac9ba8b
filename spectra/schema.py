"""Parameter schema: the one source of truth for names, units, transforms and training bounds.

Every other module (grid synthesis, training, export, the model bundle's manifest) reads the
parameter list from here, so a change of bounds or order happens in exactly one place.

The 13 network targets follow Ksoll et al. (2026, Sect. 3.2). The paper varies 21 element
abundances in its grid; the 8 that are targets are listed in ``TARGETS`` and the other 13
(O, Na, Al, V, Cr, Co, Ni, Sr, Y, Zr, Ba, Ce, Eu) are *nuisance* labels: varied in the grid so
the network sees their lines, stored with every spectrum, but not predicted.

Bounds are the training bounds: a grid never holds a spectrum outside them, and the runtime
rejects posterior samples outside them. They were chosen to match the paper's stated ranges
(Sect. 2.1, Table A.2 NRMSE denominators) within what the public MARCS grid can support:

* T_eff 4000–7000 K: FGK; the MARCS metal-poor grid covers 3800–7500 K, the solar-metallicity
  grid only 5000–6500 K (outside it the atmosphere is an approximation, see ``atmospheres``).
* log g 1.0–5.0: spherical MARCS models start at 0.5 (1.0 at [M/H] = -5), plane-parallel ones
  stop at 5.0 for [M/H] >= 0.
* v_broad 1–100 km/s: the paper samples 0–100 km/s but predicts log10(v_broad), which needs a
  positive lower bound; below ~5 km/s the broadening is invisible at R = 20 000 anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contracts.parameters import check_transform, from_network, to_network

__all__ = [
    "ABUNDANCE_ELEMENTS",
    "ALL_LABELS",
    "NUISANCE",
    "TARGETS",
    "Parameter",
    "check_in_bounds",
    "label_names",
    "parameter",
    "target_names",
    "training_schema",
]


@dataclass(frozen=True)
class Parameter:
    """One stellar label.

    Arguments:
        name: machine name used in files and catalogues (``teff``, ``mg_fe``).
        label: human/LaTeX-free label (``T_eff``, ``[Mg/Fe]``).
        unit: physical unit as an astropy-parsable string ("" for dex ratios -> "dex").
        transform: ``"log10"`` if the network works on log10 of the value, else ``"identity"``
            (``spectra.contracts.parameters``).
        lower, upper: training bounds in physical units (inclusive).
        element: chemical symbol for abundance labels ``[X/Fe]``, else ``None``.
    """

    name: str
    label: str
    unit: str
    transform: str
    lower: float
    upper: float
    element: str | None = None

    def __post_init__(self) -> None:
        check_transform(self.transform)

    def to_network(self, value: np.ndarray | float) -> np.ndarray:
        """Physical value -> the value the network sees (before standardisation)."""
        return to_network(value, self.transform)

    def from_network(self, value: np.ndarray | float) -> np.ndarray:
        """Inverse of :meth:`to_network`."""
        return from_network(value, self.transform)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "unit": self.unit,
            "transform": self.transform,
            "lower": self.lower,
            "upper": self.upper,
            "element": self.element,
        }


def _xfe(element: str, lower: float, upper: float) -> Parameter:
    return Parameter(f"{element.lower()}_fe", f"[{element}/Fe]", "dex", "identity", lower, upper, element)


# The 13 network targets, in the paper's order.
TARGETS: tuple[Parameter, ...] = (
    Parameter("teff", "T_eff", "K", "log10", 4000.0, 7000.0),
    Parameter("logg", "log g", "dex", "identity", 1.0, 5.0),
    Parameter("fe_h", "[Fe/H]", "dex", "identity", -5.0, 0.5, "Fe"),
    Parameter("vmic", "v_mic", "km/s", "identity", 0.5, 2.0),
    Parameter("vbroad", "v_broad", "km/s", "log10", 1.0, 100.0),
    _xfe("Ca", -0.4, 0.9),
    _xfe("C", -1.0, 1.5),
    _xfe("Mg", -0.5, 1.0),
    _xfe("Mn", -1.0, 0.5),
    _xfe("N", -1.0, 1.5),
    _xfe("Si", -0.5, 1.0),
    _xfe("Ti", -0.5, 1.0),
    # A(Li) from -0.5 (depleted) to 3.3 (meteoritic) over [Fe/H] -5...+0.5 spans ~9 dex in [Li/Fe].
    _xfe("Li", -3.0, 6.0),
)

# Element abundances the paper varies that are not targets.
NUISANCE: tuple[Parameter, ...] = (
    _xfe("O", -0.5, 1.0),
    _xfe("Na", -0.6, 0.6),
    _xfe("Al", -0.6, 0.8),
    _xfe("V", -0.5, 0.5),
    _xfe("Cr", -0.5, 0.5),
    _xfe("Co", -0.5, 0.5),
    _xfe("Ni", -0.5, 0.5),
    _xfe("Sr", -1.0, 1.0),
    _xfe("Y", -1.0, 1.0),
    _xfe("Zr", -1.0, 1.0),
    _xfe("Ba", -1.5, 1.5),
    _xfe("Ce", -1.0, 1.0),
    _xfe("Eu", -0.5, 1.5),
)

#: Every label stored in a grid, targets first (so ``labels[:, :13]`` are the targets).
ALL_LABELS: tuple[Parameter, ...] = TARGETS + NUISANCE

#: The 21 elements whose abundance is varied (Li, C, N, O, Na, Mg, Al, Si, Ca, Ti, V, Cr, Mn,
#: Co, Ni, Sr, Y, Zr, Ba, Ce, Eu), as [X/Fe] labels.
ABUNDANCE_ELEMENTS: tuple[str, ...] = tuple(p.element for p in ALL_LABELS if p.name.endswith("_fe"))

_BY_NAME = {p.name: p for p in ALL_LABELS}


def parameter(name: str) -> Parameter:
    """Look up a label by machine name, with a helpful error."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown parameter {name!r}; known: {', '.join(_BY_NAME)}") from None


def target_names() -> list[str]:
    return [p.name for p in TARGETS]


def label_names() -> list[str]:
    return [p.name for p in ALL_LABELS]


def training_schema(continuum: str, snr_range: tuple[float, float], snr_values: str) -> dict:
    """What a model is trained for, recorded in its training run and copied by ``export`` into the bundle:
    the targets (names, labels, units, transforms, bounds), the S/N range and the continuum convention.

    Recording it with the run means that a later edit of this module cannot change the manifest of a model
    trained before the edit.
    """
    return {
        "parameters": [{k: p.as_dict()[k] for k in ("name", "label", "unit", "transform", "lower", "upper")}
                       for p in TARGETS],
        "snr_range": [float(snr_range[0]), float(snr_range[1])],
        "snr_values": snr_values,
        "continuum": continuum,
    }


def check_in_bounds(values: dict[str, float]) -> None:
    """Raise ``ValueError`` naming every value outside its training bounds."""
    problems = []
    for name, value in values.items():
        p = parameter(name)
        if not (p.lower <= value <= p.upper) or not np.isfinite(value):
            problems.append(f"{p.label} = {value:g} {p.unit} is outside the training bounds [{p.lower:g}, {p.upper:g}]")
    if problems:
        raise ValueError("; ".join(problems))
