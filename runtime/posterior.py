"""Posterior summaries from samples (numpy only): rejection, MAP, quantiles (paper Sect. 3.5, 4.1).

Shared by ``training evaluate`` and ``runtime process`` so that the numbers a user gets from a deployed
bundle are computed exactly as in the evaluation that validated it. No torch here.

Given S samples per spectrum in physical units with their log densities:
* a sample is **valid** when every parameter is inside the training bounds (inclusive);
* ``f_reject`` = rejected / S;
* **MAP** = the valid sample of highest density (in the network's 13-D space);
* quantiles (2.5, 16, 50, 84, 97.5 %) per parameter over the valid samples.
Rows with no valid sample get NaN estimates and ``n_valid = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QUANTILES", "PosteriorSummary", "summarize"]

QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)


@dataclass
class PosteriorSummary:
    map: np.ndarray  # (N, D)
    quantiles: np.ndarray  # (N, len(QUANTILES), D)
    n_valid: np.ndarray  # (N,)
    f_reject: np.ndarray  # (N,)

    @property
    def median(self) -> np.ndarray:
        return self.quantiles[:, QUANTILES.index(0.5)]


def summarize(samples: np.ndarray, log_density: np.ndarray, lower: np.ndarray, upper: np.ndarray,
              quantiles: tuple[float, ...] = QUANTILES) -> PosteriorSummary:
    """Summaries of ``samples`` (N, S, D) with ``log_density`` (N, S) and bounds (D,) in the same units."""
    samples = np.asarray(samples)
    n, s, d = samples.shape
    valid = np.all((samples >= lower) & (samples <= upper), axis=2) & np.isfinite(log_density)
    n_valid = valid.sum(axis=1)
    masked_density = np.where(valid, log_density, -np.inf)
    best = np.argmax(masked_density, axis=1)
    map_estimate = samples[np.arange(n), best]
    map_estimate[n_valid == 0] = np.nan
    # quantiles over valid samples only: push invalid samples to NaN and use nanquantile
    masked = np.where(valid[..., None], samples, np.nan)
    q = np.full((n, len(quantiles), d), np.nan)
    has = n_valid > 0
    if has.any():
        q[has] = np.moveaxis(np.nanquantile(masked[has], quantiles, axis=1), 0, 1)
    return PosteriorSummary(map_estimate, q, n_valid, 1.0 - n_valid / s)
