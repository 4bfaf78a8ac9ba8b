"""Posterior summaries from samples (numpy only): rejection, MAP, quantiles (paper Sect. 3.5, 4.1).

Shared by ``training evaluate`` and ``runtime process`` so that the numbers a user gets from a deployed
bundle are computed exactly as in the evaluation that validated it. No torch here.

Given S samples per spectrum in physical units with their log densities:
* a sample is **valid** when every parameter is inside the training bounds (inclusive);
* ``f_reject`` = rejected / S;
* **MAP** = the valid sample of highest density (in the network's 13-D space);
* quantiles (``spectra.contracts.quantiles``: 2.5, 16, 50, 84, 97.5 %) per parameter over the valid samples.
Rows with no valid sample get NaN estimates and ``n_valid = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectra.contracts.quantiles import QUANTILES, index

__all__ = ["PosteriorSummary", "summarize", "valid_quantiles"]


@dataclass
class PosteriorSummary:
    map: np.ndarray  # (N, D)
    quantiles: np.ndarray  # (N, len(QUANTILES), D)
    n_valid: np.ndarray  # (N,)
    f_reject: np.ndarray  # (N,)

    @property
    def median(self) -> np.ndarray:
        return self.quantiles[:, index("p50")]


def summarize(samples: np.ndarray, log_density: np.ndarray, lower: np.ndarray, upper: np.ndarray,
              quantiles: tuple[float, ...] = QUANTILES) -> PosteriorSummary:
    """Summaries of ``samples`` (N, S, D) with ``log_density`` (N, S) and bounds (D,) in the same units."""
    samples = np.asarray(samples)
    n, s, _ = samples.shape
    valid = np.all((samples >= lower) & (samples <= upper), axis=2) & np.isfinite(log_density)
    n_valid = valid.sum(axis=1)
    masked_density = np.where(valid, log_density, -np.inf)
    best = np.argmax(masked_density, axis=1)
    map_estimate = samples[np.arange(n), best]
    map_estimate[n_valid == 0] = np.nan
    q = valid_quantiles(samples, valid, n_valid, quantiles)
    return PosteriorSummary(map_estimate, q, n_valid, 1.0 - n_valid / s)


def valid_quantiles(samples: np.ndarray, valid: np.ndarray, n_valid: np.ndarray,
                    quantiles: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """Quantiles (N, Q, D) over each row's valid samples, equal to ``np.nanquantile`` with invalid samples set to
    NaN (numpy's default 'linear' rule: virtual index q (k - 1) between the sorted valid samples, its ``_lerp``),
    but vectorised: one sort with the invalid samples pushed to the end, then a gather at the quantile ranks.
    ``np.nanquantile`` loops over every (spectrum, parameter) pair in Python and cost 1.7 ms per spectrum."""
    ordered = np.sort(np.where(valid[..., None], samples, np.nan), axis=1)  # NaN (invalid) last
    k = n_valid.astype(np.float64)[:, None]  # (N, 1)
    qs = np.asarray(quantiles, dtype=np.float64)[None, :]  # (1, Q)
    virtual = (k - 1.0) * qs  # numpy's 'linear' method: (n - 1) * q
    below = np.floor(virtual)
    gamma = virtual - below
    last = np.maximum(n_valid[:, None] - 1, 0)
    lo = np.clip(below.astype(np.int64), 0, last)
    hi = np.clip(below.astype(np.int64) + 1, 0, last)
    a = np.take_along_axis(ordered, lo[:, :, None], axis=1)  # (N, Q, D)
    b = np.take_along_axis(ordered, hi[:, :, None], axis=1)
    g = gamma[:, :, None]
    diff = b - a
    out = np.where(g >= 0.5, b - diff * (1.0 - g), a + diff * g)  # numpy's _lerp
    out[n_valid == 0] = np.nan
    return out
