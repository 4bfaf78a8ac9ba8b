"""The posterior log-density of a sample, one formula for every place that ranks samples (the MAP).

The flow maps a latent ``z ~ N(0, I)`` to a standardised parameter vector ``x``; with
``log_jac_det = log|det dx/dz|`` the density of ``x`` given the spectrum is

    log p(x | spectrum) = log N(z; 0, I) - log_jac_det
                        = -0.5 |z|^2 - 0.5 D log(2 pi) - log_jac_det,

in the standardised x space (the same for every sample of a spectrum up to the constant Jacobian of the
standardisation, so the MAP does not depend on it). Torch code that needs the same number inside a graph keeps a
torch expression of it (``training.model.torch_log_density``), tested equal to :func:`log_density`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LOG_DENSITY", "log_density", "log_normal_constant"]

#: the formula as recorded in a bundle's manifest (``log_density``)
LOG_DENSITY = "log p(x | spectrum) = log N(z; 0, I) - log_jac_det, in the standardised x space"


def log_normal_constant(d: int) -> float:
    """``0.5 d log(2 pi)``: the normalisation of a D-dimensional standard normal."""
    return 0.5 * d * math.log(2 * math.pi)


def log_density(z: np.ndarray, log_jac_det: np.ndarray) -> np.ndarray:
    """log p(x | spectrum) (...,) in float64 for latents ``z`` (..., D) and ``log_jac_det`` = log|det dx/dz| (...,)."""
    z = np.asarray(z, dtype=np.float64)
    # the constant and the Jacobian are added first, then subtracted: the order of the runtime's float64 sums
    return -0.5 * np.sum(z**2, axis=-1) - (log_normal_constant(z.shape[-1]) + np.asarray(log_jac_det, np.float64))
