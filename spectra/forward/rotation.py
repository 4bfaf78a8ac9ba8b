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

:class:`PixelRotator` is the same rotation without the ln λ grid, for grids uniform in λ (the HR grid), where a
model is compared with a noisy spectrum (``runtime.resim``): convolution directly on the pixels with the kernel
integrated against the linear interpolation between them (:func:`gray_pixel_kernels`: the ``dv`` → 0 limit of
:class:`Rotator`), in blocks of 500-1000 pixels that each take the kernel's width in pixels at their central
wavelength. Against :class:`Rotator` in float64 at 0.1 km/s (``tests/test_rotation.py``): rms ≤ 1.1e-5 below 5 km/s,
≤ 1.2e-4 at 15-100 km/s (the width of a block's kernel is right to ±0.4 % across it), 1.1e-3 at most; on emulated
spectra (0.25 km/s) up to 2.8e-4 rms at 20-50 km/s; :class:`Rotator` at 1 km/s is 4e-4 rms off at small v_broad.
Kernels at most ``DIRECT_HALF`` pixels either side (v_broad ≲ 4 km/s) are applied as shifted sums, wider ones by
FFT on blocks of ``FFT_LENGTH``: in float32, 0.19-0.25 ms per spectrum of 25 200 pixels against 0.83-0.95 ms for
:class:`Rotator` at 1 km/s (one core, batches of 16). Training spectra keep :class:`Rotator` in float64.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from ..contracts.conventions import vbroad_from_uniform
from ..wavegrid import WavelengthGrid, hr_grid_of
from .degrade import C_KMS, LIMB_DARKENING, _rotation_kernel
from .margin import crop, hr_index

__all__ = ["PixelRotator", "Rotator", "draw_vbroad", "gray_pixel_kernels", "hr_pixel_rotator", "hr_rotator"]


class _Window:
    """Interpolation between one window's pixels and its uniform ln λ grid (precomputed once, as sparse matrices
    with two entries per row: a product with them is ~20x faster than numpy's gathers on these sizes).

    The ln λ grid passes through pixel ``first`` (the first one returned): pixels beyond it (a margin) extend the
    grid without shifting it, so the returned pixels away from the edges come out the same with or without a
    margin, and the margin changes only the edge values it is there for."""

    def __init__(self, wave: np.ndarray, dv: float, first: int = 0, dtype: type | np.dtype = np.float64):
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


def _interpolation(left: np.ndarray, weight: np.ndarray, n_columns: int, dtype: type | np.dtype):
    """The sparse (rows, n_columns) matrix of linear interpolation: row i = (1 - w_i) x column l_i + w_i x
    column l_i + 1."""
    from scipy.sparse import csr_array

    rows = np.arange(left.size)
    return csr_array((np.concatenate([1.0 - weight, weight]).astype(dtype), (np.concatenate([rows, rows]),
                                                                np.concatenate([left, left + 1]))),
                     shape=(left.size, n_columns))


def _arithmetic(dtype: type | np.dtype) -> np.dtype:
    """The rotators' arithmetic: float32 or float64, anything else a ValueError."""
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return np.dtype(dtype)


def _checked_batch(flux: np.ndarray, vbroad: np.ndarray | float, grid: WavelengthGrid,
                   dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, bool]:
    """(spectra (B, P) in ``dtype``, one v_broad per spectrum (B,), whether a single spectrum (P,) was given), with
    the pixel count and the speeds checked: what both rotators take."""
    flux = np.asarray(flux, dtype=dtype)
    single = flux.ndim == 1
    batch = flux[None] if single else flux
    if batch.shape[1] != grid.size:
        raise ValueError(f"flux has {batch.shape[1]} pixels; the grid {grid.name} has {grid.size}")
    v = np.broadcast_to(np.asarray(vbroad, dtype=np.float64), (batch.shape[0],))
    if np.any(~np.isfinite(v)) or np.any(v < 0):
        raise ValueError("v_broad must be finite and >= 0 km/s")
    return batch, v, single


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
        self.grid, self.dv, self.epsilon, self.keep, self.dtype = grid, dv, epsilon, keep, _arithmetic(dtype)
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
        batch, v, single = _checked_batch(flux, vbroad, self.grid, self.dtype)
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


#: PixelRotator: kernels at most this many pixels either side of the centre are applied as shifted sums (cheaper
#: than an FFT up to 5 taps), wider ones by FFT
DIRECT_HALF = 2
#: PixelRotator: the FFT length of the blocks of wide kernels (blocks of FFT_LENGTH - 2 x half-width pixels)
FFT_LENGTH = 1024
#: PixelRotator: pixels per block for the shifted sums (the kernel's width is taken at each block's centre)
DIRECT_BLOCK = 512
#: PixelRotator: FFT half-widths are rounded up to a multiple of this, so that a few FFT calls serve a batch
HALF_QUANTUM = 16


def _gray_primitives(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(int_-1^x g(t) dt, int_-1^x t g(t) dt) of Gray's profile g = 2 (1 - e) sqrt(1 - t^2) + pi/2 e (1 - t^2) at
    x >= 0 (beyond 1: the whole profile)."""
    x = np.minimum(x, 1.0)
    c1, c2 = 2.0 * (1.0 - epsilon), 0.5 * np.pi * epsilon
    x2 = x * x
    root = np.sqrt(1.0 - x2)
    zeroth = 0.5 * c1 * (x * root + np.arcsin(x) + 0.5 * np.pi) + c2 * (x * (1.0 - x2 / 3.0) + 2.0 / 3.0)
    first = (-c1 / 3.0) * root * (1.0 - x2) + c2 * (x2 * (0.5 - 0.25 * x2) - 0.25)
    return zeroth, first


def gray_pixel_kernels(half_width: np.ndarray, half: int, epsilon: float = LIMB_DARKENING) -> np.ndarray:
    """Weights (..., half + 1) at pixel offsets 0..half of Gray's rotation kernel of ``half_width`` (...) pixels
    integrated against the linear interpolation between pixels: w_k = int K(s) max(0, 1 - |k - s|) ds, normalised
    (w_0 + 2 sum w_k = 1; the kernel is symmetric). This is exactly the convolution of the piecewise-linear spectrum
    through the pixels, sampled at the pixels: what :class:`Rotator` tends to as its ``dv`` goes to 0. Closed form
    (the profile's moments over each pixel interval), so sub-pixel kernels are as exact as wide ones; offsets beyond
    ``half`` are dropped (``half`` >= half_width makes them zero)."""
    a = np.maximum(np.asarray(half_width, dtype=float), 1e-12)[..., None]
    g0, g1 = _gray_primitives(np.arange(half + 2, dtype=float) / a, epsilon)
    whole = 2.0 * (1.0 - epsilon) * 0.5 * np.pi + 0.5 * np.pi * epsilon * 4.0 / 3.0  # g0 at 1
    # moments at -1, 0, 1, ..., half + 1 (the profile is even: g0(-x) = whole - g0(x), g1(-x) = g1(x))
    zeroth = np.concatenate([whole - g0[..., 1:2], g0], axis=-1) * a
    first = np.concatenate([g1[..., 1:2], g1], axis=-1) * (a * a)
    d0, d1 = np.diff(zeroth, axis=-1), np.diff(first, axis=-1)  # over [j - 1, j], j = 0..half + 1
    k = np.arange(half + 1, dtype=float)
    # int_{k-1}^{k} K(s) (s - k + 1) ds + int_{k}^{k+1} K(s) (k + 1 - s) ds
    w = d1[..., :-1] - (k - 1.0) * d0[..., :-1] + (k + 1.0) * d0[..., 1:] - d1[..., 1:]
    return w / (2.0 * w.sum(axis=-1, keepdims=True) - w[..., :1])


class _Blocks:
    """How one window's returned pixels are cut into blocks of ``length`` pixels for one kernel half-width: the
    last block is padded past the window (its extra outputs are dropped), and each block takes the kernel's width
    at the centre of the pixels it returns (``scale``: pixels per km/s there)."""

    def __init__(self, wave0: float, step: float, first: int, n_out: int, length: int, fft_length: int):
        self.length, self.fft_length = length, fft_length
        self.n_blocks = -(-n_out // length)
        lo = np.arange(self.n_blocks) * length
        centre = wave0 + step * (first + 0.5 * (lo + np.minimum(lo + length, n_out) - 1))
        self.scale = centre / (C_KMS * step)


class _PixelWindow:
    """One window of a :class:`PixelRotator`: its slice of the grid, the run of pixels it returns (from ``first``,
    ``n_out`` of them, at ``start`` in the output) and its blocks per kernel half-width (made on first use)."""

    def __init__(self, segment: slice, wave: np.ndarray, keep: np.ndarray | None, start: int):
        step = np.diff(wave)
        if wave.size < 2 or np.ptp(step) > 1e-6 * abs(float(step.mean())):
            raise ValueError("PixelRotator needs windows uniform in wavelength")
        self.segment, self.start = segment, start
        self.wave0, self.step = float(wave[0]), float(step.mean())
        if keep is None:
            self.first, self.n_out = 0, wave.size
        else:
            inside = keep[(keep >= segment.start) & (keep < segment.stop)] - segment.start
            if inside.size == 0 or not np.array_equal(inside, np.arange(inside[0], inside[0] + inside.size)):
                raise ValueError("PixelRotator returns a contiguous run of pixels per window")
            self.first, self.n_out = int(inside[0]), int(inside.size)
        self._blocks: dict[int, _Blocks] = {}

    @property
    def max_scale(self) -> float:
        """Pixels per km/s at the last returned pixel (the widest kernel of the window)."""
        return (self.wave0 + self.step * (self.first + self.n_out - 1)) / (C_KMS * self.step)

    def blocks(self, half: int) -> _Blocks:
        """The blocks for kernels of ``half`` pixels either side: about ``DIRECT_BLOCK`` pixels for shifted sums, at
        most an FFT length of ``FFT_LENGTH`` (more for kernels over a quarter of it) less the kernel's overlap
        otherwise; as many as that takes, of equal length, so that they overrun the returned pixels by less than one
        pixel per block (within a grid's margin, which then needs no padding)."""
        if half not in self._blocks:
            if half <= DIRECT_HALF:
                n_blocks, n = max(1, round(self.n_out / DIRECT_BLOCK)), 0
            else:
                n = FFT_LENGTH if 4 * half <= FFT_LENGTH else 2 * fft.next_fast_len(2 * half)  # even: DCT-I below
                n_blocks = -(-self.n_out // (n - 2 * half))
            length = -(-self.n_out // n_blocks)
            self._blocks[half] = _Blocks(self.wave0, self.step, self.first, self.n_out, length, n)
        return self._blocks[half]

    def padded(self, batch: np.ndarray, rows: np.ndarray, half: int, blocks: _Blocks) -> np.ndarray:
        """The ``rows`` of ``batch`` (rows, grid pixels) in this window from ``half`` before its first returned pixel
        to ``half`` after the end of its last block (one copy), edge values repeated where the window ends (as
        :class:`Rotator`)."""
        size = self.segment.stop - self.segment.start
        left = self.first - half
        right = self.first + blocks.n_blocks * blocks.length + half
        lo, hi = max(0, left), min(size, right)
        start = self.segment.start
        if lo == left and hi == right:
            return batch[rows, start + left:start + right]
        out = np.empty((rows.size, right - left), dtype=batch.dtype)
        out[:, lo - left:hi - left] = batch[rows, start + lo:start + hi]
        out[:, :lo - left] = batch[rows, start:start + 1]
        out[:, hi - left:] = batch[rows, start + size - 1:start + size]
        return out


class PixelRotator:
    """Rotational broadening of batches of spectra on a grid uniform in λ within each window, without the ln λ grid
    of :class:`Rotator` (see the module docstring): for a model compared with a noisy spectrum (``runtime.resim``),
    not for training spectra.

    Every spectrum is computed from its own v_broad alone: its kernel half-width in pixels picks the method and
    the block layout, so a spectrum gives the same bits alone as in any batch (``tests/test_rotation.py``).

    Arguments:
        grid: the pixel grid of the spectra; ValueError unless each window is uniform in λ.
        epsilon: linear limb-darkening coefficient of the kernel.
        keep: indices of the pixels to return, a contiguous run per window (``hr_pixel_rotator``); None: every
            pixel of ``grid``.
        dtype: the arithmetic, float32 or float64 (default).
    """

    def __init__(self, grid: WavelengthGrid, epsilon: float = LIMB_DARKENING, keep: np.ndarray | None = None,
                 dtype: type = np.float64):
        self.grid, self.epsilon, self.keep, self.dtype = grid, epsilon, keep, _arithmetic(dtype)
        self.windows: list[_PixelWindow] = []
        start = 0
        for segment in grid.segments:
            self.windows.append(_PixelWindow(segment, grid.wave[segment], keep, start))
            start += self.windows[-1].n_out
        self.size = start
        if keep is not None and start != keep.size:
            raise ValueError("PixelRotator: keep must lie within the grid's windows")
        self.max_scale = max(w.max_scale for w in self.windows)

    @property
    def wave(self) -> np.ndarray:
        """Wavelengths of the returned pixels."""
        return crop(self.grid.wave, self.keep)

    def half_widths(self, vbroad: np.ndarray) -> np.ndarray:
        """Pixels either side of the centre that a kernel of ``vbroad`` km/s reaches in the reddest block of any
        window (0: no rotation)."""
        return np.where(vbroad > 0, np.floor(vbroad * self.max_scale).astype(int) + 1, 0)

    def __call__(self, flux: np.ndarray, vbroad: np.ndarray | float) -> np.ndarray:
        """Spectra (B, P) or (P,) on ``grid`` broadened by ``vbroad`` km/s (one value, or one per spectrum), on the
        pixels ``keep`` (all of them by default); v_broad = 0 returns the spectrum's pixels as they are."""
        batch, v, single = _checked_batch(flux, vbroad, self.grid, self.dtype)
        half = self.half_widths(v)
        # one group per half-width (FFT ones rounded up to HALF_QUANTUM): a function of each row's own v_broad
        group = np.where(half > DIRECT_HALF, -(-half // HALF_QUANTUM) * HALF_QUANTUM, half)
        out = np.empty((batch.shape[0], self.size), dtype=self.dtype)
        for g in np.unique(group).tolist():
            rows = np.flatnonzero(group == g)
            if g == 0:
                for w in self.windows:
                    out[rows, w.start:w.start + w.n_out] = batch[rows, w.segment][:, w.first:w.first + w.n_out]
                continue
            layouts = [w.blocks(g) for w in self.windows]
            # all windows' kernels in one call: (rows, blocks of every window, g + 1)
            kernels = gray_pixel_kernels(v[rows, None] * np.concatenate([b.scale for b in layouts]), g, self.epsilon)
            first_block = 0
            for w, blocks in zip(self.windows, layouts, strict=True):
                part = kernels[:, first_block:first_block + blocks.n_blocks]
                first_block += blocks.n_blocks
                x = w.padded(batch, rows, g, blocks)
                rotate = _shifted_sums if g <= DIRECT_HALF else _fft_blocks
                out[rows, w.start:w.start + w.n_out] = rotate(x, part, g, blocks)[:, :w.n_out]
        return out[0] if single else out


def _shifted_sums(x: np.ndarray, kernels: np.ndarray, half: int, blocks: _Blocks) -> np.ndarray:
    """Narrow kernels as 2 half + 1 shifted, weighted sums: ``x`` (R, padded columns), ``kernels`` (R, blocks,
    half + 1) -> (R, blocks x length). Zero weights add exact zeros, so the sum is a function of the row alone."""
    r, n_blocks, length = x.shape[0], blocks.n_blocks, blocks.length
    weights = kernels.astype(x.dtype)
    total = np.zeros((r, n_blocks, length), dtype=x.dtype)
    term = np.empty_like(total)
    for t in range(2 * half + 1):
        shifted = x[:, t:t + n_blocks * length].reshape(r, n_blocks, length)
        np.multiply(weights[:, :, abs(t - half), None], shifted, out=term)
        total += term
    return total.reshape(r, -1)


def _fft_blocks(x: np.ndarray, kernels: np.ndarray, half: int, blocks: _Blocks) -> np.ndarray:
    """Wide kernels by FFT on overlapping blocks (overlap-save): block k reads ``length`` + 2 half columns from
    column k x length of ``x``; the kernel, symmetric and centred on 0 of the circular buffer, has a real spectrum,
    the DCT-I of its halves (half the cost of an FFT of the kernel)."""
    r, n_blocks, length, n = x.shape[0], blocks.n_blocks, blocks.length, blocks.fft_length
    halves = np.zeros((*kernels.shape[:2], n // 2 + 1), dtype=x.dtype)
    halves[..., :half + 1] = kernels
    spectra = fft.dct(halves, type=1, axis=-1)  # w_0 + 2 sum_k w_k cos(2 pi m k / n), m = 0..n/2
    reads = np.lib.stride_tricks.as_strided(x, (r, n_blocks, length + 2 * half),
                                            (x.strides[0], length * x.strides[1], x.strides[1]), writeable=False)
    convolved = fft.irfft(fft.rfft(reads, n, axis=-1) * spectra, n, axis=-1)
    return convolved[:, :, half:half + length].reshape(r, -1)


def hr_pixel_rotator(wave: np.ndarray, dtype: type = np.float64) -> PixelRotator:
    """A :class:`PixelRotator` for spectra stored on ``wave`` (the HR grid, with or without a margin) that returns
    the HR pixels, as :func:`hr_rotator`. ValueError if ``wave`` is no HR grid."""
    index = hr_index(wave)
    return PixelRotator(hr_grid_of(wave), keep=index, dtype=dtype)


def draw_vbroad(feh: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fresh v_broad [km/s] from the grid prior (``spectra.contracts.conventions.vbroad_from_uniform``)."""
    return vbroad_from_uniform(rng.uniform(size=np.shape(feh)), feh)
