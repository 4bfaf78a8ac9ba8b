"""Build a grid of synthetic 4MOST HR spectra: prior draws -> synthesis (Dask) -> HDF5, resumable.

The driver draws all labels up front (deterministic in ``seed``), skips rows already marked done
in an existing file, and farms the rest out one spectrum per task to a Dask ``LocalCluster`` of
single-threaded worker processes (PySME is single-threaded). Only the driver writes the HDF5 file,
one row as each task finishes, so an interruption loses only the rows in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import __version__, schema
from ..prior import draw_labels, prior_name
from ..stores.gridstore import GridWriter
from ..wavegrid import HR_RESOLUTION, WORKING_PIXEL, WORKING_RESOLUTION, hr_grid
from .linelists import linelist_from_option
from .synthesis import SOLAR_MIXTURE, PySMEEngine, SpectrumMaker

__all__ = ["GridReport", "MakerSettings", "build_grid", "grid_attrs", "synthesize_row"]


@dataclass
class GridReport:
    path: Path
    n: int
    written: int
    skipped: int
    failed: dict[int, str]
    seconds: float
    workers: int

    @property
    def spectra_per_second_per_core(self) -> float:
        return self.written / self.seconds / self.workers if self.seconds > 0 else float("nan")


def grid_attrs(maker: SpectrumMaker, seed: int | None, prior: str, rotated: bool = True) -> dict[str, object]:
    """Provenance attributes of a grid made by ``maker``.

    ``rotated=False``: the stored flux has no rotational broadening (v_broad is applied later, on the
    fly, as augmentation); the ``vbroad`` label then is the prior's draw, not what the flux shows.
    """
    engine = maker.engine
    return {
        "seed": -1 if seed is None else seed,
        "prior": prior,
        "engine": engine.name,
        "engine_version": engine.version,
        "linelist_sha256": engine.linelist.sha256(),
        "linelist_source": engine.linelist.source,
        "atmosphere_source": engine.atmospheres.source,
        "solar_mixture": SOLAR_MIXTURE,
        "lte": True,
        "working_resolution": WORKING_RESOLUTION,
        "working_pixel_angstrom": WORKING_PIXEL,
        "hr_resolution": HR_RESOLUTION,
        "rotation_kernel": "Gray (2005) limb-darkened, epsilon = 0.6",
        "rotation": "applied" if rotated else "none",
        "hr_grid": maker.hr.name,
        "software": f"cinn4most {__version__}",
    }


@dataclass(frozen=True)
class MakerSettings:
    """What a worker needs to build the same :class:`SpectrumMaker` as the driver (picklable, hashable).

    ``linelist``: a packaged list's name or a CSV path (None: the default list); ``margin``: Å of spectrum kept
    beyond each HR window edge (``spectra.wavegrid.hr_grid``).
    """

    linelist: str | None = None
    margin: float = 0.0

    def maker(self) -> SpectrumMaker:
        return SpectrumMaker(PySMEEngine(linelist=linelist_from_option(self.linelist)), hr=hr_grid(self.margin))


_WORKER_MAKER: dict[MakerSettings, SpectrumMaker] = {}


def synthesize_row(index: int, labels: np.ndarray, rotated: bool = True, settings: MakerSettings = MakerSettings()
                   ) -> tuple[int, np.ndarray | None, str, float, str]:
    """One grid row (runs in a worker): (index, HR flux or None, atmosphere method, seconds, error)."""
    if settings not in _WORKER_MAKER:  # one engine per worker process and setting, created once
        _WORKER_MAKER[settings] = settings.maker()
    maker = _WORKER_MAKER[settings]
    named = dict(zip(schema.label_names(), map(float, labels), strict=True))
    if not rotated:
        named["vbroad"] = 0.0
    start = time.perf_counter()
    try:
        flux, synthesis = maker.hr_spectrum(named)
    except Exception as exc:  # one bad row must not end a grid run
        return index, None, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
    return index, flux, synthesis.atmosphere_method, synthesis.seconds, ""


def _run_serial(tasks: Iterable[tuple[int, np.ndarray]], rotated: bool, settings: MakerSettings):
    for index, labels in tasks:
        yield synthesize_row(index, labels, rotated, settings)


#: Dask settings of the synthesis cluster. ``worker-ttl``: by default the scheduler restarts a worker that has not
#: sent a heartbeat for 5 minutes; a worker inside one long PySME call (a cool star's molecular forest) on a busy
#: machine, at the lowest priority beside a training, misses its heartbeats for longer, so the spectrum it was
#: making was thrown away and retried, again and again (session 22: 2 cool dwarfs in 40 minutes, log "failed to
#: heartbeat for 441s; attempting restart"), until a task killed three times would end the run. Workers of this
#: private cluster are never removed for silence; a crashed worker process is still replaced by its nanny.
DASK_SETTINGS = {"distributed.scheduler.worker-ttl": None}


def _run_dask(tasks: list[tuple[int, np.ndarray]], workers: int, rotated: bool, settings: MakerSettings):
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    with dask.config.set(DASK_SETTINGS), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        futures = [client.submit(synthesize_row, i, lab, rotated, settings, pure=False) for i, lab in tasks]
        for future in as_completed(futures):
            yield future.result()
            future.release()


def build_grid(out: str | Path, n: int, seed: int, workers: int = 1, progress: bool = True,
               on_row: Callable[[int], None] | None = None, extend: str | Path | None = None,
               rotated: bool = True, settings: MakerSettings = MakerSettings(), focus: str | None = None) -> GridReport:
    """Make (or resume) an ``n``-row grid at ``out``; see the module docstring.

    ``workers`` > 1 uses a Dask ``LocalCluster``; 1 runs in this process (no cluster start-up).
    ``extend``: a smaller grid made with the same seed; its finished rows are copied, not recomputed
    (the Sobol prior is prefix-stable, so row i has the same labels in both).
    ``rotated=False`` stores spectra without rotational broadening (see :func:`grid_attrs`).
    ``settings``: the line list and the margin beyond each window (:class:`MakerSettings`).
    ``focus``: a region of the prior (``spectra.prior.FOCUS_REGIONS``) to draw the labels from instead of all of it.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    labels = draw_labels(n, seed, focus)
    maker = settings.maker()
    attrs = grid_attrs(maker, seed, prior_name(focus), rotated)
    start = time.perf_counter()
    failed: dict[int, str] = {}
    with GridWriter(out, n, maker.hr, attrs) as writer:
        if extend:
            _copy_rows(Path(extend), writer, labels, attrs)
        todo = [(i, labels[i]) for i in np.flatnonzero(~writer.done)]
        skipped = n - len(todo)
        rows = (_run_dask(todo, workers, rotated, settings) if workers > 1 and len(todo) > 1
                else _run_serial(todo, rotated, settings))
        bar = tqdm(total=n, initial=skipped, desc=f"grid {Path(out).name}", unit="spec", disable=not progress)
        written = 0
        for index, flux, method, seconds, error in rows:
            if flux is None:
                failed[index] = error
            else:
                writer.write_row(index, flux, labels[index], method, seconds)
                written += 1
            bar.update(1)
            if on_row:
                on_row(index)
        bar.close()
    return GridReport(Path(out), n, written, skipped, failed, time.perf_counter() - start, workers)


def _copy_rows(source: Path, writer: GridWriter, labels: np.ndarray, attrs: dict) -> None:
    from ..stores.gridstore import GridReader

    with GridReader(source) as old:
        for key in ("seed", "prior", "engine", "linelist_sha256", "rotation", "hr_grid"):
            if old.attrs.get(key) != attrs[key]:
                raise ValueError(f"--extend {source}: made with {key} = {old.attrs.get(key)!r}, this grid has "
                                 f"{attrs[key]!r}; only a grid of the same seed and setup can be extended")
        done = writer.done
        methods, seconds = old.atmosphere_method, old.synthesis_seconds
        for i in np.flatnonzero(old.done[: len(labels)]):
            if not done[i]:
                if not np.allclose(old.labels[i], labels[i]):
                    raise ValueError(f"--extend {source}: row {i} has other labels than this grid's prior draw")
                writer.write_row(int(i), old.flux[i], labels[i], str(methods[i]), float(seconds[i]))

