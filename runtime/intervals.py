"""Interval calibration: credible intervals that hold as many true values as they claim, at every S/N.

A flow trained for a CPU budget is not exactly calibrated, and how far it is off depends on the S/N: over eight
noise draws of the held-out set the session-18 default model's 68 % intervals held 59-63 % of the true T_eff,
log g, [Fe/H] and v_mic at S/N 20 and 73-74 % of T_eff, v_broad and [Mg/Fe] at S/N 250
(``benchmarks/results/coverage.md``). A bundle may therefore carry, in its manifest's ``interval_calibration``,
a factor s_p(S/N) per parameter by which every reported quantile's distance from the posterior median is
multiplied::

    q  ->  p50 + s_p(S/N) * (q - p50)        for q in p2.5, p16, p84, p97.5

The MAP, the median, the rejected fraction and the samples themselves are untouched: the factor describes how far
the flow's spread is from the spread of its errors, not a better posterior. s is interpolated linearly in
log S/N between the S/N values it was fitted at (``snr``) and held constant beyond them.

Fitting (``python -m export calibrate-intervals``): on catalogues of spectra with known labels at each of those
S/N values, s is the 68.27th percentile over the rows of u = |truth - p50| / (p84 - p50 or p50 - p16, the half on
the truth's side), so that 68.27 % of those rows have their truth inside the rescaled 68 % interval; these
per-S/N values are then smoothed by a quadratic in log S/N (:func:`smooth_in_log_snr`). The
spectra must not be the held-out set the model is judged on: the default model's are the 1025 PySME *training*
stars drawn from the grid prior. Caveat: 90 % of them were fitted by the emulator, so they sit closer to it than a
new star does (the cINN was trained with the residuals of the emulator's *validation* stars), and the factors at
high S/N, where that mismatch matters, may come out a little small. A catalogue made with an already calibrated
bundle refits on top of it (the factors multiply), so fitting twice converges instead of compounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spectra.contracts.quantiles import index

__all__ = ["COVERAGE", "IntervalCalibration", "fit_scales", "rescale_about", "side_ratio", "smooth_in_log_snr"]

COVERAGE = 0.6827  # the probability of a 1-sigma Gaussian interval, the level p16-p84 stands for
SCALE_LIMITS = (0.2, 5.0)  # a factor outside these is a broken fit or a broken model, not a calibration
MIN_ROWS = 50  # rows per S/N value below which a percentile-68 estimate is too noisy to ship
SMOOTH_DEGREE = 2  # of the polynomial in log S/N through the per-S/N factors (with at least SMOOTH_DEGREE + 2 of them)


@dataclass(frozen=True)
class IntervalCalibration:
    """Per-parameter interval factors ``scale`` (K, D) at the increasing S/N values ``snr`` (K,)."""

    snr: np.ndarray
    scale: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_manifest(cls, entry: dict | None, names: Sequence[str]) -> IntervalCalibration | None:
        """The manifest's ``interval_calibration`` (already validated by ``runtime.bundle``), or None."""
        if not entry:
            return None
        snr = np.asarray(entry["snr"], dtype=float)
        scale = np.stack([np.asarray(entry["scale"][name], dtype=float) for name in names], axis=1)
        return cls(snr, scale, tuple(names))

    def factors(self, snr: np.ndarray) -> np.ndarray:
        """(N, D) factors at the S/N values (N,): linear in log S/N, constant beyond the fitted range."""
        log_snr = np.log(np.clip(np.asarray(snr, dtype=float), 1e-6, None))
        nodes = np.log(self.snr)
        return np.stack([np.interp(log_snr, nodes, self.scale[:, j]) for j in range(self.scale.shape[1])], axis=1)

    def apply(self, quantiles: np.ndarray, snr: np.ndarray, lower: np.ndarray | None = None,
              upper: np.ndarray | None = None) -> np.ndarray:
        """Quantiles (N, Q, D) in the order of ``spectra.contracts.quantiles.QUANTILES`` rescaled about their median
        (module docstring), then kept within the training bounds ``lower``/``upper`` (D,) if given (a widened
        interval of a posterior leaning on a bound would reach past it, where no sample can be); a new array, NaN
        rows stay NaN."""
        median = quantiles[:, index("p50")][:, None, :]
        return rescale_about(quantiles, median, self.factors(snr)[:, None, :], lower, upper)


    def undo(self, quantiles: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """The flow's own quantiles back from calibrated ones (exact wherever no bound clipped them): for refitting
        and for reporting the flow's coverage beside the calibrated one."""
        median = quantiles[:, index("p50")][:, None, :]
        return rescale_about(quantiles, median, 1.0 / self.factors(snr)[:, None, :])


def rescale_about(values: np.ndarray, median: np.ndarray, scale: np.ndarray, lower: np.ndarray | None = None,
                  upper: np.ndarray | None = None) -> np.ndarray:
    """median + scale * (values - median), within ``lower``/``upper`` where given (all broadcast over the last axis,
    the parameters): the one formula the catalogue's quantiles and ``runtime.api.Posterior`` use."""
    rescaled = median + scale * (values - median)
    if lower is not None or upper is not None:
        with np.errstate(invalid="ignore"):
            rescaled = np.clip(rescaled, lower, upper)
    return rescaled


def side_ratio(truth: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """u (N, D): |truth - p50| over the 68 % half-width on the truth's side; u <= 1 means inside p16-p84. A zero
    half-width gives inf unless the truth is exactly the median (0)."""
    median, low, high = (quantiles[:, index(q)] for q in ("p50", "p16", "p84"))
    half = np.where(truth >= median, high - median, median - low)
    distance = np.abs(truth - median)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(distance == 0, 0.0, distance / half)


def fit_scales(truth: np.ndarray, quantiles: np.ndarray, snr: np.ndarray, nodes: Sequence[float],
               current: IntervalCalibration | None = None) -> np.ndarray:
    """Factors (K, D) at the S/N ``nodes`` from rows with known ``truth`` (N, D), their reported ``quantiles``
    (N, Q, D) and S/N (N,), every row at one of the nodes (to 0.1 %). ``current``: the calibration those
    quantiles already carry (the new factors include it). Rows with a NaN estimate are left out."""
    node_snr = np.asarray(nodes, dtype=float)
    snr = np.asarray(snr, dtype=float)
    scales = np.empty((node_snr.size, truth.shape[1]))
    at_node = np.abs(snr[:, None] / node_snr[None, :] - 1) < 1e-3
    if not at_node.any(axis=1).all():
        raise ValueError(f"S/N values {sorted(set(np.round(snr[~at_node.any(axis=1)], 3)))} are not among the "
                         f"fitting nodes {node_snr.tolist()}")
    u = side_ratio(truth, quantiles)
    for k, node in enumerate(node_snr):
        rows = at_node[:, k] & np.isfinite(quantiles).all(axis=(1, 2))
        if rows.sum() < MIN_ROWS:
            raise ValueError(f"S/N {node:g}: {int(rows.sum())} usable rows, at least {MIN_ROWS} are needed")
        scales[k] = np.quantile(u[rows], COVERAGE, axis=0)
    if current is not None:
        scales *= current.factors(node_snr)
    low, high = SCALE_LIMITS
    bad = ~np.isfinite(scales) | (scales < low) | (scales > high)
    if bad.any():
        k, j = np.argwhere(bad)[0]
        raise ValueError(f"interval factor {scales[k, j]:.3g} for parameter {j} at S/N {node_snr[k]:g} is outside "
                         f"{low}-{high}: the catalogue's intervals or truths are not what they should be")
    return scales


def smooth_in_log_snr(nodes: Sequence[float], scales: np.ndarray, degree: int = SMOOTH_DEGREE) -> np.ndarray:
    """The factors (K, D) replaced by a least-squares polynomial of ``degree`` in log S/N per parameter, evaluated at
    the same ``nodes``: each per-S/N percentile carries a sampling error of a few per cent (~1000 stars), while the
    miscalibration itself changes smoothly with S/N. Fewer than ``degree + 2`` nodes are returned as they are."""
    x = np.log(np.asarray(nodes, dtype=float))
    if x.size < degree + 2:
        return scales
    return np.stack([np.polyval(np.polyfit(x, scales[:, j], degree), x) for j in range(scales.shape[1])], axis=1)
