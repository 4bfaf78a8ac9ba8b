"""The physical transform of a parameter: what the network sees of a physical value, and back.

A parameter's ``transform`` (recorded in ``spectra.schema``, in a training run's schema and in every bundle
manifest) is one of :data:`TRANSFORMS`. ``log10`` parameters (T_eff, v_broad) are learned as log10 of the value,
so their posterior is positive and its relative width is what the network models; ``identity`` ones as they are.
The network's standardised output ``x`` becomes a physical value as ``from_network(x * x_std + x_mean)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TRANSFORMS", "check_transform", "from_network", "log10_mask", "to_network", "to_physical"]

#: the transform names a parameter may have (the bundle reader refuses any other)
TRANSFORMS: tuple[str, ...] = ("identity", "log10")


def check_transform(name: object) -> str:
    """``name`` if it is one of :data:`TRANSFORMS`, else ``ValueError`` listing the known ones."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
    return str(name)


def to_network(value: np.ndarray | float, transform: str) -> np.ndarray:
    """Physical value -> the value the network sees (before standardisation)."""
    value = np.asarray(value, dtype=float)
    return np.log10(value) if check_transform(transform) == "log10" else value


def from_network(value: np.ndarray | float, transform: str) -> np.ndarray:
    """Inverse of :func:`to_network`."""
    value = np.asarray(value, dtype=float)
    return 10.0**value if check_transform(transform) == "log10" else value


def log10_mask(transforms: Sequence[str]) -> np.ndarray:
    """Boolean (D,): which parameters are log10-transformed (for vectorised and graph forms of the transform)."""
    return np.array([check_transform(t) == "log10" for t in transforms], dtype=bool)


def to_physical(x: np.ndarray, x_mean: np.ndarray, x_std: np.ndarray, transforms: Sequence[str]) -> np.ndarray:
    """Standardised network outputs (..., D) -> physical units (float64), parameter j with ``transforms[j]``."""
    net = np.asarray(x, dtype=float) * np.asarray(x_std, dtype=float) + np.asarray(x_mean, dtype=float)
    out = np.empty_like(net)
    for j, transform in enumerate(transforms):  # per column: no 10** of an identity column (no overflow warnings)
        out[..., j] = from_network(net[..., j], transform)
    return out
