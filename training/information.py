"""How much a spectrum can tell: the Cramér–Rao bound and the shift a model error causes in a likelihood fit.

A posterior network is only as good as its distance from the best any unbiased estimator could do. With the
Gaussian pixel noise of the training spectra (paper Eq. 1, independent pixels of standard deviation σ_i) and a
model spectrum f(θ) whose Jacobian is J = ∂f/∂θ (P pixels x D labels), the Fisher information is
F = Jᵀ diag(σ⁻²) J and no unbiased estimator has a smaller standard deviation than √diag(F⁻¹) — every other
label marginalised, not held fixed, since a real fit does not know them either. That yardstick turns an
accuracy table into an efficiency (σ / bound), so one can tell "the network is poor" from "the data are poor".

A second number, the *floor*: if the model used for inference (an emulator) differs from the truth (PySME) by a
residual r, a linearised likelihood fit is pulled by δ = F⁻¹ Jᵀ diag(σ⁻²) r. Scaling σ by a constant changes
nothing, so δ does not depend on S/N: it is the error that remains at infinite S/N for anything trained on
emulated spectra and tested on PySME ones.

Only numpy here (no torch), so that benchmarks, tests and the runtime can use it. The linear algebra works on
the whitened Jacobian A = J / σ with unit-norm columns and a singular-value decomposition instead of forming and
inverting F: labels differ in scale by 10⁴ (kelvin vs dex), and F's condition number is the square of A's.
``benchmarks/information_limit.py`` applies this to the held-out PySME stars.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["central_jacobian", "covariance", "cramer_rao_bound", "fisher_information", "fit_shift", "nuisance_bound"]

# Singular values below this fraction of the largest are treated as exact zeros (directions with no information).
_RCOND = 1e-12


def central_jacobian(func: Callable[[np.ndarray], np.ndarray], theta: np.ndarray,
                     steps: np.ndarray | float) -> np.ndarray:
    """J (P, D) with J[:, k] = (f(θ + h_k e_k) − f(θ − h_k e_k)) / (2 h_k).

    ``func`` maps a batch of parameter vectors (M, D) to outputs (M, P); it is called once with all 2D shifted
    points, because a batched forward pass of an emulator (and a batched rotation) costs little more than one.
    Central differences: the error is O(h²), where one-sided differences would be O(h) at the same cost per label.
    """
    theta = np.asarray(theta, dtype=float)
    if theta.ndim != 1:
        raise ValueError(f"theta must be one parameter vector (D,), got shape {theta.shape}")
    d = theta.size
    h = np.broadcast_to(np.asarray(steps, dtype=float), (d,))
    if not np.all(np.isfinite(h) & (h > 0)):
        raise ValueError("finite-difference steps must be finite and > 0")
    points = np.repeat(theta[None], 2 * d, axis=0)
    k = np.arange(d)
    points[2 * k, k] += h
    points[2 * k + 1, k] -= h
    values = np.asarray(func(points), dtype=float)
    if values.ndim != 2 or values.shape[0] != 2 * d:
        raise ValueError(f"func must map ({2 * d}, {d}) points to ({2 * d}, P) outputs, got shape {values.shape}")
    return ((values[0::2] - values[1::2]) / (2.0 * h[:, None])).T


def _whitened(jacobian: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A = J / σ on the usable pixels, mask of those pixels): pixels with σ <= 0 or non-finite values carry no
    information (masked, or a zero-flux pixel whose Eq. 1 noise vanishes) and are left out."""
    j = np.asarray(jacobian, dtype=float)
    if j.ndim != 2:
        raise ValueError(f"jacobian must be (P, D), got shape {j.shape}")
    s = np.broadcast_to(np.asarray(sigma, dtype=float), (j.shape[0],))
    good = np.isfinite(s) & (s > 0) & np.all(np.isfinite(j), axis=1)
    return j[good] / s[good, None], good


def fisher_information(jacobian: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """F = Jᵀ diag(σ⁻²) J (D, D) for independent Gaussian pixel noise of standard deviation ``sigma`` (P,)."""
    a, _ = _whitened(jacobian, sigma)
    return a.T @ a


class _Solver:
    """SVD of the column-normalised whitened Jacobian, shared by the covariance and the fit shift.

    Labels whose column is zero (the spectrum does not depend on them) or that have a component along an exact
    null direction (two labels with indistinguishable effects) are *undetermined*: infinite variance, NaN shift.
    A zero column decouples exactly, so the other labels' bounds are unaffected by it.
    """

    def __init__(self, a: np.ndarray):
        d = a.shape[1]
        norms = np.linalg.norm(a, axis=0)
        used = norms > 0
        self.d, self.used, self.norms = d, used, norms
        u, s, vt = np.linalg.svd(a[:, used] / norms[used], full_matrices=False)
        keep = s > _RCOND * (s[0] if s.size else 0.0)
        self.u, self.s, self.vt = u[:, keep], s[keep], vt[keep]
        # A label is determined iff its unit vector lies in the row space of A (no component along a null
        # direction); this also covers fewer pixels than labels, where the SVD does not list the null space.
        loose = np.zeros(d, dtype=bool)
        loose[used] = 1.0 - np.sum(self.vt**2, axis=0) > 1e-8
        self.undetermined = ~used | loose

    def covariance(self) -> np.ndarray:
        cov = np.zeros((self.d, self.d))
        scaled = (self.vt.T / self.s**2) @ self.vt
        idx = np.flatnonzero(self.used)
        cov[np.ix_(idx, idx)] = scaled / np.outer(self.norms[idx], self.norms[idx])
        bad = self.undetermined
        cov[bad, :] = np.nan
        cov[:, bad] = np.nan
        cov[bad, bad] = np.inf
        return cov

    def solve(self, b: np.ndarray) -> np.ndarray:
        """Least-squares solution of A x = b (the weighted fit's δ for whitened residual b)."""
        x = np.zeros(self.d)
        x[self.used] = (self.vt.T @ ((self.u.T @ b) / self.s)) / self.norms[self.used]
        x[self.undetermined] = np.nan
        return x


def covariance(jacobian: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """F⁻¹ (D, D): the Cramér–Rao covariance; undetermined labels get ∞ variance and NaN covariances."""
    a, _ = _whitened(jacobian, sigma)
    return _Solver(a).covariance()


def cramer_rao_bound(jacobian: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bound (D,), fisher (D, D)): bound = √diag(F⁻¹), the smallest standard deviation of any unbiased estimator
    of each label with all the others unknown too; ∞ for a label the spectrum does not constrain.

    ``jacobian``: ∂flux/∂label (P, D); ``sigma``: per-pixel noise standard deviation (P,) or a scalar. The bound
    scales with σ, so for Eq. 1 noise (σ ∝ 1/(S/N)) one call at S/N 1 serves every S/N: bound(S/N) = bound(1)/(S/N).
    """
    a, _ = _whitened(jacobian, sigma)
    cov = _Solver(a).covariance()
    return np.sqrt(np.diag(cov)), a.T @ a


def fit_shift(jacobian: np.ndarray, sigma: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """δ = F⁻¹ Jᵀ diag(σ⁻²) r (D,): how far a linearised weighted least-squares fit moves the labels when the data
    exceed the model by ``residual`` r (P,) — e.g. PySME − emulator. Unchanged if σ is scaled by a constant, so it
    is independent of S/N; NaN for labels the spectrum does not constrain."""
    a, good = _whitened(jacobian, sigma)
    r = np.asarray(residual, dtype=float)
    s = np.broadcast_to(np.asarray(sigma, dtype=float), good.shape)
    if r.shape != good.shape:
        raise ValueError(f"residual has shape {r.shape}, the jacobian {good.size} pixels")
    good_r = np.isfinite(r[good])
    if not good_r.all():  # a pixel with an unknown residual takes no part in the fit
        return fit_shift(np.asarray(jacobian, dtype=float)[good][good_r], s[good][good_r], r[good][good_r])
    return _Solver(a).solve(r[good] / s[good])


def _decorrelation(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, λ) with W Wᵀ = Q diag(λ) Qᵀ, Q (P, K') orthonormal, from the small K x K eigenproblem of WᵀW: extra
    Gaussian noise of covariance W Wᵀ (W already divided by σ) is whitened by (I + W Wᵀ)^(-1/2) =
    I − Q diag(1 − (1 + λ)^(-1/2)) Qᵀ, and no P x P matrix is ever formed."""
    lam, v = np.linalg.eigh(w.T @ w)
    keep = lam > _RCOND * max(float(lam.max(initial=0.0)), 1e-300)
    return (w @ v[:, keep]) / np.sqrt(lam[keep]), lam[keep]


def nuisance_bound(jacobian: np.ndarray, sigma: np.ndarray, free: np.ndarray | None = None,
                   correlated: np.ndarray | None = None, snr: float | list[float] = 1.0) -> np.ndarray:
    """The Cramér–Rao bound (D,) of the labels when the data also carry what the estimator cannot know.

    ``free`` (P, M): the columns ∂flux/∂a of M extra parameters that are fitted and marginalised too (e.g. the
    B-spline coefficients of a pseudo-continuum: a normalised spectrum keeps no information on scales longer than
    its knot spacing). ``correlated`` (P, K): a factor U of extra Gaussian noise with covariance U Uᵀ on top of the
    independent pixel noise (e.g. the emulator's residuals on its validation stars, each scaled by 1/√K: the
    covariance of "one of them, with a random sign"). Without either, :func:`cramer_rao_bound`'s bound.

    ``sigma`` is the pixel noise at S/N 1 and ``snr`` one S/N or a list of them (then the result is (S, D)): the
    pixel noise scales as 1/(S/N), the extra noise does not, so unlike the plain bound this one does not scale as
    1/(S/N); the eigenproblem of U is solved once for all of them.
    """
    j = np.asarray(jacobian, dtype=float)
    d = j.shape[1]
    columns = j if free is None else np.concatenate([j, np.asarray(free, dtype=float)], axis=1)
    a, good = _whitened(columns, sigma)
    values = np.atleast_1d(np.asarray(snr, dtype=float))
    q = lam = qa = None
    if correlated is not None:
        s = np.broadcast_to(np.asarray(sigma, dtype=float), good.shape)
        u = np.asarray(correlated, dtype=float)
        if u.ndim != 2 or u.shape[0] != good.size:
            raise ValueError(f"correlated must be (P, K) with P = {good.size}, got shape {u.shape}")
        q, lam = _decorrelation(np.nan_to_num(u[good]) / s[good, None])
        qa = q.T @ a
    out = np.empty((values.size, d))
    for k, value in enumerate(values):
        # whitened at this S/N: pixel noise σ/snr, extra noise unchanged, so W scales by snr (λ by snr²)
        scaled = a if q is None else a - q @ ((1.0 - 1.0 / np.sqrt(1.0 + value**2 * lam))[:, None] * qa)
        out[k] = np.sqrt(np.diag(_Solver(value * scaled).covariance())[:d])
    return out if np.ndim(snr) else out[0]
