"""v_broad as augmentation: rotational broadening of whole batches of spectra already on their pixel grid.

Rotation is a convolution in velocity and commutes with the Gaussian line-spread functions, so grids can be
stored *without* rotation (``spectra grid --unrotated``) and v_broad drawn from the prior and applied on the fly
in training, like the noise: one synthesis serves every v_broad. :class:`Rotator` does it for a batch (B, P) at
once: per window, linear interpolation onto a uniform ln λ grid of ``dv`` km/s, an FFT convolution of every row
with its own Gray (2005) limb-darkened kernel (``spectra.forward.degrade``'s, averaged over each ``dv`` step so that
sub-pixel v_broad stays normalised), and interpolation back onto the pixels.

Accuracy against the full chain (R 80 000 → rotation → R 20 000 → rebin; ``tests/test_rotation.py``): rms
below 0.05 % at 1, 5, 30 and 100 km/s away from the window edges. Within v_broad/c x λ (≤ 2.3 Å at 100 km/s) of
a window's edge the full chain saw the 5 Å of spectrum beyond it, which an HR-grid spectrum no longer has: the
edge value is repeated instead, and the whole-spectrum rms at 100 km/s is 0.2 %. Unrotated grids are therefore
stored with a 2 Å margin per window edge (``spectra.wavegrid.GRID_MARGIN``): :func:`hr_rotator` rotates on the
whole stored grid, each window with its margin, and returns only the 4MOST HR pixels (``spectra.forward.margin``),
so the kernel sees real spectrum at the edges and everything downstream sees the 25 200 HR pixels as before
(2 Å is v_broad/c x λ of 100 km/s at 6000 Å; at the red end the outer 0.3 Å of such a kernel, its faint wing,
still meets the repeated edge value of the margin).
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from ..contracts.conventions import vbroad_from_uniform
from ..wavegrid import WavelengthGrid, hr_grid_of
from .degrade import C_KMS, LIMB_DARKENING, _rotation_kernel
from .margin import crop, hr_index

__all__ = ["Rotator", "draw_vbroad", "hr_rotator"]


class _Window:
    """Interpolation between one window's pixels and its uniform ln λ grid (precomputed once, as sparse matrices
    with two entries per row: a product with them is ~20x faster than numpy's gathers on these sizes).

    The ln λ grid passes through pixel ``first`` (the first one returned): pixels beyond it (a margin) extend the
    grid without shifting it, so the returned pixels away from the edges come out the same with or without a
    margin, and the margin changes only the edge values it is there for."""

    def __init__(self, wave: np.ndarray, dv: float, first: int = 0, dtype: type = np.float64):
        ln_pix, step = np.log(wave), dv / C_KMS
        start = ln_pix[first] - np.floor((ln_pix[first] - ln_pix[0]) / step) * step  # ln_pix[0] when first = 0
        self.ln = np.arange(start, ln_pix[-1], step)
        j = np.clip(np.searchsorted(ln_pix, self.ln, side="right") - 1, 0, wave.size - 2)
        self.fwd = _interpolation(j, (self.ln - ln_pix[j]) / (ln_pix[j + 1] - ln_pix[j]), wave.size, dtype)
        k = np.clip(np.searchsorted(self.ln, ln_pix, side="right") - 1, 0, self.ln.size - 2)
        u = np.clip((ln_pix - self.ln[k]) / (self.ln[k + 1] - self.ln[k]), 0.0, 1.0)
        self.back = _interpolation(k, u, self.ln.size, dtype)

    def to_ln(self, columns: np.ndarray, pad: int = 0) -> np.ndarray:
        """Spectra as columns (pixels, B) on the ln λ grid (ln points + 2 pad, B), with ``pad`` copies of the edge
        values on either side. Columns, because the sparse product writes them without a transpose."""
        if pad == 0:
            return self.fwd @ columns
        rows = np.arange(-pad, self.ln.size + pad).clip(0, self.ln.size - 1)
        return self.fwd[rows] @ columns

    def to_pixels(self, fine: np.ndarray) -> np.ndarray:
        """Columns (ln points, B) on the ln λ grid back on the pixels (pixels, B)."""
        return self.back @ fine


def _interpolation(left: np.ndarray, weight: np.ndarray, n_columns: int, dtype: type):
    """The sparse (rows, n_columns) matrix of linear interpolation: row i = (1 - w_i) x column l_i + w_i x
    column l_i + 1."""
    from scipy.sparse import csr_array

    rows = np.arange(left.size)
    return csr_array((np.concatenate([1.0 - weight, weight]).astype(dtype), (np.concatenate([rows, rows]),
                                                                np.concatenate([left, left + 1]))),
                     shape=(left.size, n_columns))


class Rotator:
    """Rotational broadening of batches of spectra on ``grid`` (see the module docstring).

    Arguments:
        grid: the pixel grid of the spectra (e.g. ``spectra.wavegrid.hr_grid()``).
        dv: velocity step of the internal ln λ grid [km/s]; 0.5 keeps 1 km/s kernels accurate.
        dtype: the arithmetic, float64 (default) or float32: half the time, relative error ~1e-6, enough for
            a model compared with a noisy spectrum (``runtime.resim``), not for making training spectra.
        epsilon: linear limb-darkening coefficient of the kernel.
        keep: indices of the pixels to return, e.g. ``spectra.wavegrid.hr_pixels(grid)`` for a grid with a margin:
            the convolution needs the margin, what comes after it only the HR pixels (:func:`hr_rotator`).
            None: every pixel of ``grid``.
    """

    def __init__(self, grid: WavelengthGrid, dv: float = 0.5, epsilon: float = LIMB_DARKENING,
                 keep: np.ndarray | None = None, dtype: type = np.float64):
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.grid, self.dv, self.epsilon, self.keep, self.dtype = grid, dv, epsilon, keep, np.dtype(dtype)
        self.windows = [(s, _Window(grid.wave[s], dv, self._first_kept(s), self.dtype)) for s in grid.segments]

    def _first_kept(self, segment: slice) -> int:
        """Index within ``segment`` of its first returned pixel (0 without ``keep``)."""
        if self.keep is None:
            return 0
        inside = self.keep[(self.keep >= segment.start) & (self.keep < segment.stop)]
        return int(inside.min()) - segment.start if inside.size else 0

    @property
    def wave(self) -> np.ndarray:
        """Wavelengths of the returned pixels."""
        return crop(self.grid.wave, self.keep)

    def kernels(self, vbroad: np.ndarray) -> np.ndarray:
        """(B, K) kernels, each normalised and centred, zero-padded to the widest of the batch."""
        parts = [_rotation_kernel(float(v), self.epsilon, self.dv) for v in vbroad]
        width = max(p.size for p in parts)
        out = np.zeros((len(parts), width))
        for i, p in enumerate(parts):
            start = (width - p.size) // 2
            out[i, start:start + p.size] = p / p.sum()
        return out

    def __call__(self, flux: np.ndarray, vbroad: np.ndarray | float) -> np.ndarray:
        """Spectra (B, P) or (P,) on ``grid`` broadened by ``vbroad`` km/s (one value, or one per spectrum), on the
        pixels ``keep`` (all of them by default)."""
        return crop(self._rotate(flux, vbroad), self.keep)

    def _rotate(self, flux: np.ndarray, vbroad: np.ndarray | float) -> np.ndarray:
        """The rotation on every pixel of ``grid``."""
        flux = np.asarray(flux, dtype=self.dtype)
        single = flux.ndim == 1
        batch = flux[None] if single else flux
        if batch.shape[1] != self.grid.size:
            raise ValueError(f"flux has {batch.shape[1]} pixels; the grid {self.grid.name} has {self.grid.size}")
        v = np.broadcast_to(np.asarray(vbroad, dtype=np.float64), (batch.shape[0],))
        if np.any(~np.isfinite(v)) or np.any(v < 0):
            raise ValueError("v_broad must be finite and >= 0 km/s")
        out = batch.copy()
        moving = np.flatnonzero(v > 0)  # v_broad = 0 rows stay exactly as they are
        if moving.size == 0:
            return out[0] if single else out
        kernels = self.kernels(v[moving]).astype(self.dtype).T  # (K, B): spectra are columns here
        half = kernels.shape[0] // 2
        # one FFT length for every window (they differ by a few %), so the kernels are transformed once
        n = fft.next_fast_len(max(w.ln.size for _, w in self.windows) + 2 * half, real=True)
        kernel_spectra = fft.rfft(kernels.T, n, axis=1) if half else None
        columns = batch[moving].T
        for segment, window in self.windows:
            fine = window.to_ln(columns[segment], half)  # edge values repeated: continuum-like edges
            if half:
                # the "valid" part of the linear convolution; a circular one of length >= the padded rows has it;
                # transformed as rows (contiguous: pocketfft is ~2x faster on them than on columns)
                rows = fft.irfft(fft.rfft(np.ascontiguousarray(fine.T), n, axis=1) * kernel_spectra, n, axis=1)
                fine = np.ascontiguousarray(rows[:, 2 * half:fine.shape[0]].T)
            out[moving, segment] = window.to_pixels(fine).T
        return out[0] if single else out


def hr_rotator(wave: np.ndarray, dv: float = 0.5, dtype: type = np.float64) -> Rotator:
    """A :class:`Rotator` for spectra stored on ``wave`` (the HR grid, with or without a margin) that returns the HR
    pixels: it convolves each window with its margin, then crops. ValueError if ``wave`` is no HR grid."""
    return Rotator(hr_grid_of(wave), dv, keep=hr_index(wave), dtype=dtype)


def draw_vbroad(feh: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fresh v_broad [km/s] from the grid prior (``spectra.contracts.conventions.vbroad_from_uniform``)."""
    return vbroad_from_uniform(rng.uniform(size=np.shape(feh)), feh)
