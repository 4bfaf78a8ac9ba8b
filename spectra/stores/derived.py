"""Grids made from grids: a pseudo-continuum normalised copy (``spectra normalise-grid``) and rotated copies of an
unrotated grid (``spectra rotate-grid``).

The forward model (``spectra.forward.continuum``, ``spectra.forward.rotation``) works on arrays of spectra; reading
and writing grid files is the stores' part, so these file-to-file steps live here and ``spectra.forward`` imports no
store (``tests/test_layering.py`` ranks ``forward`` below ``stores``).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..forward.continuum import ContinuumOptions, normalise
from ..forward.rotation import Rotator, draw_vbroad, hr_rotator
from ..wavegrid import hr_grid
from .gridstore import GridReader, GridWriter

__all__ = ["normalise_grid", "rotate_grid"]


def _normalise_rows(args) -> tuple[np.ndarray, np.ndarray]:
    """(rows, normalised flux) for one block of a grid file (a worker of :func:`normalise_grid`)."""
    source, rows, opt = args
    wave = hr_grid().wave
    with GridReader(source) as reader:
        flux = reader.flux[np.asarray(rows), :].astype(float)
    return rows, np.stack([normalise(wave, f, opt) for f in flux])


def normalise_grid(source, out, options: ContinuumOptions | None = None, progress: bool = True, workers: int = 1):
    """Copy a grid file with every finished row divided by its pseudo-continuum (noiseless spectra).

    The copy's attributes record the normalisation (``continuum``) and the source grid; training on it
    makes the network expect pseudo-continuum normalised input, as ``spectra ingest`` delivers. ``workers``
    processes fit blocks of 64 rows (~0.1 s per spectrum each); this process writes them.

    The scalar fit, not ``spectra.forward.continuum.BatchNormaliser``: on *noiseless* float16-packed PySME spectra
    the clipping iteration of the two can settle on different kept sets for a few rows in 64 (measured: 5 of 64, one
    by 150 %), though on the same spectra with S/N 100 or 1000 noise they agree to 4e-14. Grids are normalised once;
    training batches, which are noisy, use the batched fit.
    """
    opt = options or ContinuumOptions()
    out = Path(out)
    grid = hr_grid()
    with GridReader(source) as reader:
        if reader.wavelength.size != grid.size:
            raise ValueError(f"{source}: {reader.wavelength.size} pixels; normalise-grid works on the HR grid")
        attrs = {k: v for k, v in reader.attrs.items() if k not in ("format", "n", "wavelength_sha256", "created")}
        attrs.update(continuum=opt.describe(), normalised_from=str(Path(source).resolve()))
        done, labels = reader.done, reader.labels
        methods, seconds = reader.atmosphere_method, reader.synthesis_seconds
    with GridWriter(out, done.size, grid, attrs) as writer:  # an interrupted copy is resumed
        todo = np.flatnonzero(done & ~writer.done)
        blocks = [(str(source), todo[a:a + 64], opt) for a in range(0, todo.size, 64)]
        bar = tqdm(total=todo.size, desc=f"normalise {out.name}", disable=not progress)
        with ProcessPoolExecutor(max(1, workers)) as pool:
            for rows, flux in (pool.map(_normalise_rows, blocks) if workers > 1 else map(_normalise_rows, blocks)):
                for i, f in zip(rows, flux, strict=True):
                    writer.write_row(int(i), f, labels[i], methods[i], float(seconds[i]))
                bar.update(len(rows))
        bar.close()
    return out


def rotate_grid(source, out, copies: int = 1, seed: int = 0, batch: int = 64, progress: bool = True):
    """A rotated grid from an unrotated one (``spectra grid --unrotated``): ``copies`` rows per base spectrum, the
    first rotated by the row's own ``vbroad`` label, the others by fresh draws from the prior (v_broad as
    augmentation: one synthesis, many rotations). Labels carry the v_broad applied. Resumable like any grid.

    A source stored with a margin is rotated on it and cropped (``spectra.forward.rotation.hr_rotator``): the
    rotated grid is on the HR pixels, what training and surveys read."""
    if copies < 1:
        raise ValueError(f"--copies must be >= 1, got {copies}")
    out = Path(out)
    with GridReader(source) as reader:
        if reader.attrs.get("rotation") != "none":
            raise ValueError(f"{source}: rotation = {reader.attrs.get('rotation')!r}; rotate-grid needs an unrotated "
                             "grid (spectra grid --unrotated)")
        try:
            rotator = hr_rotator(reader.wavelength)
        except ValueError:
            raise ValueError(f"{source}: {reader.wavelength.size} pixels; rotate-grid works on the HR grid (with or "
                             "without a margin)") from None
        names = reader.label_names
        iv, ifeh = names.index("vbroad"), names.index("fe_h")
        base = np.flatnonzero(reader.done)
        labels, methods, seconds = reader.labels, reader.atmosphere_method, reader.synthesis_seconds
        attrs = _rotated_attrs(reader.attrs, rotator, Path(source), copies, seed, int(base.size))
        plan = []  # (out row, source row, v_broad)
        for c in range(copies):
            rng = np.random.default_rng([seed, c])
            v = labels[base, iv] if c == 0 else draw_vbroad(labels[base, ifeh], rng)
            plan += [(c * base.size + k, int(i), float(vk)) for k, (i, vk) in enumerate(zip(base, v, strict=True))]
        with GridWriter(out, len(plan), hr_grid(), attrs) as writer:
            todo = [p for p in plan if not writer.done[p[0]]]
            for a in tqdm(range(0, len(todo), batch), desc=f"rotate {out.name}", disable=not progress):
                part = todo[a:a + batch]
                unique, inverse = np.unique([p[1] for p in part], return_inverse=True)  # h5py: increasing, unique
                flux = reader.flux[unique, :][inverse].astype(float)
                rotated = rotator(flux, np.array([p[2] for p in part]))
                for (target, i, v), f in zip(part, rotated, strict=True):
                    row = labels[i].copy()
                    row[iv] = v
                    writer.write_row(target, f, row, methods[i], float(seconds[i]))
    return out


def _rotated_attrs(source_attrs: dict, rotator: Rotator, source, copies: int, seed: int, base_rows: int) -> dict:
    """The rotated grid's attributes: the source's, plus how it was rotated and from what; for a source with a
    margin also the pixels it was rotated on, and ``hr_grid`` set to the HR grid it is stored on now."""
    attrs = {k: v for k, v in source_attrs.items() if k not in ("format", "n", "wavelength_sha256", "created")}
    attrs.update(rotation=f"applied by spectra.forward.rotation.Rotator, {copies} v_broad per base spectrum "
                          f"(seed {seed})", rotated_from=str(source.resolve()), base_rows=base_rows)
    if rotator.keep is not None:
        attrs.update(rotated_on=f"{rotator.grid.name}, then cropped to the HR pixels", hr_grid=hr_grid().name)
    return attrs
