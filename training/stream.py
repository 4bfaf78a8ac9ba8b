"""Unlimited fresh training data: prior labels -> emulator -> rotation -> pseudo-continuum -> noise, per batch.

A fixed pool of stars (the earlier recipe: 10,000 emulated stars normalised once) lets a network learn the pool;
drawing new stars for every batch does not, and costs the emulator's forward pass, a rotation and a batched
continuum fit per star. Each batch is ``stars`` new stars from the grid prior (``spectra.prior.draw_labels`` with a
scramble seed of its own), each seen ``copies`` times at independent S/N and noise draws, so no (star, S/N, noise)
example repeats and no star outlives its batch.

Normalisation: every star gets one pseudo-continuum (``spectra.forward.continuum.BatchNormaliser``, the ingestion fit
to 5e-5), fitted on its rotated spectrum with S/N 1000 noise; each copy's noise of paper Eq. 1 is added to the
flux, which is then divided by that continuum. Observed spectra are normalised *after* their noise; the
difference is the continuum fit's own response to noise (its clipping bias is ~0.13 sigma of the 1 Å-smoothed
noise: 0.7 % at S/N 20, 0.05 % at S/N 250 per Å), small against the posterior widths at every S/N. Fitting each
noisy copy instead would cost a continuum fit per example, ~10x the rest of the pipeline on a CPU
(``benchmarks/results/estimator_study.md`` reports both rates).

Pixels: an emulator trained on grids with a wavelength margin outputs the margin (``training.emulator``); the
rotation runs on it and returns the HR pixels (``spectra.forward.rotation.hr_rotator``), so the continuum, the
noise and the network see the 25 200 HR pixels whatever the emulator's grid. Model-error residuals
(``training.emulator.validation_residuals``) are on the emulator's pixels and added before the rotation.

Compression: :func:`pca_basis` finds the principal components of noiseless normalised emulated spectra; the
workers project each noisy example on them (``n`` numbers instead of ~25,000 pixels), which the model's
``features_from_coefficients`` takes. The same projection is a buffer of the model, so the exported graph takes
pixels.

Input mask: with ``StreamSpec.input_mask`` (the config's, ``spectra.contracts.masks``) the workers set the masked
pixels of every normalised noisy example, and of the stars the principal components come from, to the fill before
projecting: the network's inputs never carry them, whether it takes pixels or coefficients.

Determinism: batch (epoch e, index b) depends on (seed, e, b) only (``SeedSequence([seed, e, b, STREAM_TAG])``);
worker processes compute batches in any order and the loop consumes them in order, so a resumed or re-run fit
sees exactly the same data.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectra import schema
from spectra.contracts.masks import fill_masked, input_mask

__all__ = ["EmulatedData", "StreamSpec", "pca_basis"]

CONTINUUM_SNR = 1000.0  # per Å, of the copy each star's pseudo-continuum is fitted on
STREAM_TAG = 0x5354524D  # "STRM": this module's streams never coincide with survey or posterior streams
REUSE_TAG = 0x52455553  # "REUS": the stars a group of batches shares (StreamSpec.reuse)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class StreamSpec:
    emulator: str  # emulator run folder (training emulator-fit --out)
    stars: int = 64  # new stars per batch
    copies: int = 8  # noisy copies per star (independent S/N and noise)
    snr_range: tuple[float, float] = (10.0, 1000.0)
    seed: int = 0
    model_error: str | None = None  # .npy of emulator residuals (unrotated): one, random, added to each star
    input_mask: str | None = None  # pixels set to the fill before projection (spectra.contracts.masks.INPUT_MASKS)
    # > 0: each star's residual comes from the k validation stars nearest in T_eff, log g, [Fe/H]
    # (``model_error_labels.npy`` beside ``model_error``); 0: from any of them
    model_error_neighbours: int = 0
    # each set of new stars serves this many consecutive batches, every one with its own S/N and noise draws: the
    # stars (emulator, rotation, continuum fit) are ~2/3 of a batch's cost and the optimiser's step ~1/10, so
    # reuse buys optimiser steps on 2 cores; 1: every batch has stars of its own (the earlier recipes)
    reuse: int = 1
    # > 0: each drawn residual is shrunk to the median rms of the k validation stars nearest to its star where that
    # is smaller (the pattern stays any star's; ``training.config.Config.model_error_amplitude_neighbours``)
    model_error_amplitude_neighbours: int = 0

    @property
    def batch_size(self) -> int:
        return self.stars * self.copies


class _Generator:
    """Per-process state: emulator (torch, one thread), rotator, batch normaliser, projection."""

    def __init__(self, spec: StreamSpec, projection: tuple[np.ndarray, np.ndarray] | None):
        import torch

        from spectra.forward.continuum import BatchNormaliser
        from spectra.wavegrid import HR_PIXEL

        from .emulator import EMULATOR_INPUTS, emulator_rotator, load_emulator

        torch.set_num_threads(1)
        self.spec = spec
        self.model, _, wave = load_emulator(spec.emulator)
        self.rotator = emulator_rotator(spec.emulator, wave)  # on the emulator's pixels -> the HR pixels
        self.wave, self.pixel = self.rotator.wave, HR_PIXEL
        self.normaliser = BatchNormaliser(self.wave)
        names = schema.label_names()
        self.emulator_columns = [names.index(n) for n in EMULATOR_INPUTS]
        self.vbroad_column = names.index("vbroad")
        self.target_columns = [names.index(n) for n in schema.target_names()]
        # float32: the examples are made in float32 (see ``batch``)
        self.projection = None if projection is None else tuple(np.asarray(a, dtype=np.float32) for a in projection)
        self.model_error = np.load(spec.model_error) if spec.model_error else None
        self.error_position = None
        neighbours = {"model_error_neighbours": spec.model_error_neighbours,
                      "model_error_amplitude_neighbours": spec.model_error_amplitude_neighbours}
        if self.model_error is not None and any(neighbours.values()):
            error_labels = np.load(Path(spec.model_error).with_name("model_error_labels.npy"))
            self.error_position = self._position(error_labels, list(EMULATOR_INPUTS))
            for name, k in neighbours.items():
                if not 0 <= k <= self.error_position.shape[0]:
                    raise ValueError(f"{name} = {k}; the emulator has {self.error_position.shape[0]} validation stars")
        self.error_rms = None if self.model_error is None else np.sqrt(np.mean(self.model_error**2, axis=1))
        # the mask on the generator's own pixels (the HR ones), from the one definition (spectra.contracts.masks)
        self.mask = input_mask(self.wave, spec.input_mask)[0] if spec.input_mask else None

    @staticmethod
    def _position(labels: np.ndarray, names: list[str]) -> np.ndarray:
        """T_eff, log g, [Fe/H] scaled by the prior's ranges: where a star sits for nearest-neighbour draws."""
        columns = []
        for name in ("teff", "logg", "fe_h"):
            p = schema.parameter(name)
            columns.append((labels[:, names.index(name)] - p.lower) / (p.upper - p.lower))
        return np.stack(columns, axis=1)

    def _nearest_errors(self, labels: np.ndarray, k: int) -> np.ndarray:
        """(n, k) indices of the validation stars nearest to each star in scaled T_eff, log g, [Fe/H]."""
        assert self.error_position is not None
        where = self._position(labels, schema.label_names())
        distance = ((where[:, None, :] - self.error_position[None, :, :]) ** 2).sum(axis=2)
        return np.argsort(distance, axis=1, kind="stable")[:, :k]

    def _model_errors(self, labels: np.ndarray, pick: np.random.Generator) -> np.ndarray:
        """(n, pixels) the emulator error realisation each star carries, random sign: the residual of any
        validation star, or of one of the k nearest to it; optionally shrunk to its neighbours' typical size."""
        assert self.model_error is not None and self.error_rms is not None
        n = labels.shape[0]
        k = self.spec.model_error_neighbours
        if k:
            index = self._nearest_errors(labels, k)[np.arange(n), pick.integers(k, size=n)]
        else:
            index = pick.integers(self.model_error.shape[0], size=n)
        scale = pick.choice([-1.0, 1.0], size=n)
        k = self.spec.model_error_amplitude_neighbours
        if k:
            # shrunk to the neighbours' size, never grown: a metal-poor star's few-line residual grown 50x to a cool
            # giant's size is no error an emulator makes (and such spikes made the first training diverge)
            typical = np.median(self.error_rms[self._nearest_errors(labels, k)], axis=1)
            scale = scale * np.minimum(1.0, typical / np.maximum(self.error_rms[index], 1e-12))
        return scale[:, None] * self.model_error[index]

    def stars(self, seed: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels (n, all labels), noiseless rotated pseudo-continuum-normalised flux (n, P), continuum (n, P))."""
        import torch

        from spectra.forward.degrade import add_noise
        from spectra.prior import draw_labels

        scramble = int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
        labels = draw_labels(n, scramble)
        with torch.no_grad():
            flux = self.model(torch.from_numpy(labels[:, self.emulator_columns].astype(np.float32))).numpy()
        flux = flux.astype(float)
        if self.model_error is not None:  # a real error realisation of the emulator (another star's), random sign
            flux += self._model_errors(labels, np.random.default_rng(np.random.SeedSequence([*seed, 3])))
        flux = self.rotator(flux, labels[:, self.vbroad_column])
        # the continuum is fitted with S/N 1000 noise: on a noiseless spectrum with many pure-continuum pixels
        # (hot stars) the clipping sigma is ~1e-16 and the fit chaotic, as no observed spectrum is
        rng = np.random.default_rng(np.random.SeedSequence([*seed, 2]))
        continuum = self.normaliser.continuum(add_noise(flux, CONTINUUM_SNR, self.pixel, rng))
        return labels, flux, continuum

    def batch(self, seed: list[int], stars: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input (B, n) coefficients or (B, P) flux, float32; S/N per Å (B, 1); physical targets (B, 13)).

        Examples are made a star at a time in float32 (a (copies, P) block stays in cache): noise of paper Eq. 1,
        f + |f| n / (S/N per pixel), divided by the star's continuum, projected. ``stars``: the output of
        :meth:`stars` to reuse (``StreamSpec.reuse``); by default the batch's own, from ``seed``."""
        spec = self.spec
        labels, flux, continuum = stars if stars is not None else self.stars([*seed, 0], spec.stars)
        rng = np.random.default_rng(np.random.SeedSequence([*seed, 1]))
        star = np.repeat(np.arange(spec.stars), spec.copies)
        lo, hi = np.log(spec.snr_range[0]), np.log(spec.snr_range[1])
        snr = np.exp(rng.uniform(lo, hi, star.size))
        snr_pixel = (snr * np.sqrt(self.pixel)).astype(np.float32)
        width = self.projection[1].shape[0] if self.projection is not None else flux.shape[1]
        inputs = np.empty((star.size, width), dtype=np.float32)
        for k in range(spec.stars):
            rows = slice(k * spec.copies, (k + 1) * spec.copies)
            f = flux[k].astype(np.float32)
            noise = rng.standard_normal((spec.copies, f.size), dtype=np.float32)
            noisy = (f + np.abs(f) * (noise / snr_pixel[rows, None])) / continuum[k].astype(np.float32)
            if self.mask is not None:
                fill_masked(noisy, self.mask, in_place=True)
            if self.projection is not None:
                mean, basis = self.projection
                inputs[rows] = (noisy - mean) @ basis.T
            else:
                inputs[rows] = noisy
        return inputs, snr.reshape(-1, 1).astype(np.float32), labels[star][:, self.target_columns]


_STATE: _Generator | None = None


def _init(spec: StreamSpec, projection) -> None:
    global _STATE
    _STATE = _Generator(spec, projection)


def _batch(seed: list[int], state: _Generator | None = None):
    return (state or _STATE).batch(seed)


def _batch_group(job: tuple[list[int], list[list[int]]], state: _Generator | None = None):
    """Consecutive batches that share one set of stars (``StreamSpec.reuse``): the stars come from the group's own
    seed (with a tag no single batch's seed has), each batch's S/N and noise from its own seed."""
    group, seeds = job
    state = state or _STATE
    stars = state.stars([*group, REUSE_TAG, state.spec.reuse], state.spec.stars)
    return [state.batch(seed, stars) for seed in seeds]


def _stars(args, state: _Generator | None = None):
    seed, n = args
    state = state or _STATE
    _, flux, continuum = state.stars(seed, n)
    normalised = (flux / continuum).astype(np.float32)
    return normalised if state.mask is None else fill_masked(normalised, state.mask, in_place=True)


def pca_basis(spec: StreamSpec, n_stars: int, n_components: int, workers: int = 1,
              progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean spectrum (P,), basis (n_components, P) orthonormal rows, singular values) of ``n_stars`` noiseless
    normalised emulated spectra (their own prior stream, never a training batch).

    The basis values are rounded to the nearest float16 (returned as float64): the exported feature graph then stores
    the basis, nearly all of its size, in half the bytes without changing a bit (``export.weights.half_weights``;
    256 x 25 200 values: 26 -> 13 MB of the repository's budget per shipped model). The rounding (relative <= 2^-11)
    moves a coefficient by ~3e-5 for a spectrum deviating from the mean by 0.1 per pixel, against the pixel noise's
    0.018 per coefficient at S/N 250 per Å; the rows stay orthonormal to ~1e-5."""
    from tqdm.auto import tqdm

    chunks = [([spec.seed, STREAM_TAG, 99, k], min(64, n_stars - k * 64)) for k in range(-(-n_stars // 64))]
    parts = []
    with _Pool(spec, None, workers) as pool:
        for part in tqdm(pool.imap(_stars, chunks), total=len(chunks), desc="PCA stars", disable=not progress):
            parts.append(part)
    flux = np.concatenate(parts).astype(float)
    mean = flux.mean(axis=0)
    _, singular, vt = np.linalg.svd(flux - mean, full_matrices=False)
    return mean, vt[:n_components].astype(np.float16).astype(np.float64), singular


class _Pool:
    """A process pool of generators (or this process alone for workers <= 1)."""

    def __init__(self, spec: StreamSpec, projection, workers: int):
        self.spec, self.projection, self.workers = spec, projection, workers
        self.pool = None
        self.state: _Generator | None = None

    def __enter__(self):
        if self.workers > 1:
            # one thread per worker: the workers are the parallelism (BLAS threads would fight them)
            saved = {k: os.environ.get(k) for k in _THREAD_VARIABLES}
            os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
            try:
                self.pool = mp.get_context("spawn").Pool(self.workers, initializer=_init,
                                                         initargs=(self.spec, self.projection))
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        else:  # this process: a generator of its own (two streams in one process must not share one)
            self.state = _Generator(self.spec, self.projection)
        return self

    def imap(self, func, items):
        if self.pool is None:
            return (func(item, self.state) for item in items)
        return self.pool.imap(func, items)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class EmulatedData:
    """The training-data interface of ``training.fit`` backed by the fresh stream (see the module docstring).

    ``projection``: (mean, basis) applied in the workers; batches then carry coefficients, not pixels.
    """

    def __init__(self, spec: StreamSpec, projection: tuple[np.ndarray, np.ndarray] | None = None, workers: int = 1):
        from spectra.forward.continuum import ContinuumOptions
        from spectra.prior import PRIOR_VERSION
        from spectra.wavegrid import hr_grid

        self.spec, self.projection, self.workers = spec, projection, workers
        self.target_names = schema.target_names()
        self.wavelength = hr_grid().wave
        sample = schema_targets(40_000, spec.seed)
        transformed = self.transform(sample)
        self.x_mean, self.x_std = transformed.mean(axis=0), transformed.std(axis=0) + 1e-8
        self.grid_attrs = {"engine": "emulator", "engine_version": str(Path(spec.emulator).resolve()),
                           "prior": PRIOR_VERSION, "continuum": ContinuumOptions().describe(),
                           "stream": f"fresh: {spec.stars} stars x {spec.copies} copies per batch"
                           + (f", each set of stars in {spec.reuse} consecutive batches" if spec.reuse > 1 else "")}
        self._pool = _Pool(spec, projection, workers).__enter__()

    n_params = property(lambda self: len(self.target_names))
    n_pixels = property(lambda self: self.wavelength.size)

    @staticmethod
    def transform(labels: np.ndarray) -> np.ndarray:
        return np.column_stack([p.to_network(labels[:, j]) for j, p in enumerate(schema.TARGETS)])

    def standardise(self, labels: np.ndarray) -> np.ndarray:
        return (self.transform(labels) - self.x_mean) / self.x_std

    def batches(self, seeds: list[list[int]]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(inputs, S/N, standardised targets) float32 for each seed, in order, computed ahead by the workers.

        With ``spec.reuse`` = r > 1, seeds [e, b] with the same b // r share their stars (a group is one worker's
        job), so a batch depends on (seed, e, b, r) alone, whatever the workers and the order they finish in."""
        full = [[self.spec.seed, STREAM_TAG, *s] for s in seeds]
        if self.spec.reuse <= 1:
            made = self._pool.imap(_batch, full)
        else:
            # runs of consecutive seeds of one group (never merged across others: the batches stay in order)
            def group_of(pair):
                return (self.spec.seed, STREAM_TAG, *pair[0][:-1], pair[0][-1] // self.spec.reuse)

            jobs = [(list(key), [f for _, f in run])
                    for key, run in itertools.groupby(zip(seeds, full, strict=True), key=group_of)]
            made = (b for group in self._pool.imap(_batch_group, jobs) for b in group)
        for inputs, snr, labels in made:
            yield inputs, snr, self.standardise(labels).astype(np.float32)

    def close(self) -> None:
        self._pool.__exit__(None, None, None)


def schema_targets(n: int, seed: int) -> np.ndarray:
    """Physical targets (n, 13) drawn from the grid prior (for the target standardisation)."""
    from spectra.prior import draw_labels

    names = schema.label_names()
    return draw_labels(n, seed + 12345)[:, [names.index(t) for t in schema.target_names()]]
