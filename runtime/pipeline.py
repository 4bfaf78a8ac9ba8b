"""``runtime process``: stream a Zarr survey through a model bundle into a catalogue, with Dask.

Work is split into chunks of catalogue rows (by default the survey's own chunking along N). One task
per chunk reads its rows of ``flux``, ``snr`` and ``source_id`` from the survey, samples the posterior
of each valid spectrum (``runtime.sampler``), summarises it and writes the chunk's catalogue rows and
then its done marker (``catalog.writers``). Only small bookkeeping travels through the scheduler;
spectra never do, and no process ever holds the whole survey.

Execution: one worker in this process (``--workers 1``, no cluster), a ``dask.distributed``
``LocalCluster`` of single-threaded worker processes (``--workers N``), or an existing cluster
(``--scheduler tcp://HOST:8786``; workers started with ``dask worker tcp://HOST:8786 --nthreads 1``, or
by dask-jobqueue on SLURM/PBS; input and output must be on a filesystem all workers see). Each worker
builds its ONNX Runtime sessions once (a ``WorkerPlugin``), not per task.

Determinism: a spectrum's latent draws come from (seed, source_id) only, so the catalogue is the
same whatever the chunk size or worker count. Resume: ``--resume`` reopens a catalogue made with the
same bundle, seed, samples and input, and runs only the chunks not marked done.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import zarr
from distributed import WorkerPlugin
from tqdm.auto import tqdm

from catalog.outputs import claim_output
from catalog.schema import (
    BAD,
    HIGH_REJECTION_FRACTION,
    METAL_POOR_FEH,
    PROVENANCE_COLUMNS,
    QUANTILE_SUFFIXES,
    Flag,
    catalogue_columns,
)
from catalog.writers import CATALOG_FORMAT, CatalogueStore

from .bundle import Bundle, BundleError, continuum_kind, load_bundle
from .posterior import QUANTILES
from .sampler import OnnxPosterior
from .sessions import resolve_providers

__all__ = ["ProcessOptions", "ProcessReport", "check_arguments", "process_chunk", "process_survey", "validate_flux"]

_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")


@dataclass(frozen=True)
class ProcessOptions:
    samples: int = 4096
    seed: int = 0
    batch: int = 16  # spectra per ONNX flow call group (x samples = rows per call)
    device: str = "auto"
    threads: int = 0
    bias_correction: bool = False
    snr_cap: bool = False  # S/N above the trained range -> the trained maximum (flag SNR_CAPPED)


@dataclass(frozen=True)
class RunContext:
    """What every chunk task needs besides its number: where things are, and what the driver checked."""

    input_path: str
    output_path: str
    bundle_path: str
    bundle_sha256: str  # workers refuse a bundle that changed since the driver loaded it
    options: ProcessOptions
    continuum_mismatch: bool = False
    provenance: tuple[str, ...] = ()


@dataclass
class ProcessReport:
    output: Path
    n_rows: int
    chunks_run: int
    chunks_skipped: int
    seconds: float
    device: str
    workers: str
    warnings: list[str] = field(default_factory=list)

    @property
    def spectra_per_second(self) -> float:
        rows = self.n_rows * self.chunks_run / max(self.chunks_run + self.chunks_skipped, 1)
        return rows / self.seconds if self.seconds > 0 else float("nan")


def validate_flux(flux: np.ndarray) -> np.ndarray:
    """True for rows usable as input. Individual negative pixels are legitimate noise at low S/N;
    a row is invalid if any pixel is NaN/inf (also: a short row padded with NaN), its median is <= 0
    (negative or zero spectra), or it is constant."""
    finite = np.isfinite(flux).all(axis=1)
    safe = np.where(np.isfinite(flux), flux, 0.0)
    return finite & (np.median(safe, axis=1) > 0) & (np.ptp(safe, axis=1) > 0)


_SESSIONS: dict[tuple, OnnxPosterior] = {}


def _posterior(bundle_path: str, device: str, threads: int, sha256: str | None = None) -> OnnxPosterior:
    """One set of ONNX Runtime sessions per process (i.e. per Dask worker), created on first use from a bundle
    whose identity must be ``sha256`` (the one the driver loaded and recorded in the catalogue)."""
    key = (bundle_path, device, threads, sha256)
    if key not in _SESSIONS:
        bundle = load_bundle(bundle_path, check_graphs=False, expected_sha256=sha256)
        _SESSIONS[key] = OnnxPosterior(bundle, device=device, threads=threads)
    return _SESSIONS[key]


class BundleSessions(WorkerPlugin):
    """Dask ``WorkerPlugin``: build the sessions when a worker starts, so the first task does not pay."""

    name = "cinn4most-bundle-sessions"

    def __init__(self, bundle_path: str, device: str, threads: int, sha256: str):
        self.args = (bundle_path, device, threads, sha256)

    def setup(self, worker) -> None:
        _posterior(*self.args)


def process_chunk(k: int, ctx: RunContext) -> tuple:
    """Run catalogue chunk k end to end (on a worker); returns (k, rows, seconds, device)."""
    start_time = time.perf_counter()
    options = ctx.options
    posterior = _posterior(ctx.bundle_path, options.device, options.threads, ctx.bundle_sha256)
    manifest = posterior.manifest
    store = CatalogueStore.open(ctx.output_path, mode="r+")
    start, stop = store.chunk_bounds(k)
    survey = zarr.open_group(ctx.input_path, mode="r")
    flux = survey["flux"][start:stop].astype(np.float32)
    snr = survey["snr"][start:stop].astype(np.float64)
    ids = survey["source_id"][start:stop].astype(np.int64)
    n, d = stop - start, manifest.n_params

    flags = np.zeros(n, dtype=np.int32)
    ok_flux = validate_flux(flux)
    ok_snr = np.isfinite(snr) & (snr > 0)
    flags[~ok_flux] |= Flag.INVALID_FLUX
    flags[~ok_snr] |= Flag.INVALID_SNR
    lo_snr, hi_snr = manifest.snr_range
    snr_used = snr.copy()
    if options.snr_cap:
        capped = ok_snr & (snr > hi_snr)
        snr_used[capped] = hi_snr
        flags[capped] |= Flag.SNR_CAPPED
    flags[ok_snr & ((snr_used < lo_snr) | (snr_used > hi_snr))] |= Flag.SNR_OUT_OF_RANGE
    if ctx.continuum_mismatch:
        flags |= Flag.CONTINUUM_MISMATCH
    ingest_flags = (survey["ingest_flags"][start:stop].astype(np.int32) if "ingest_flags" in survey
                    else np.zeros(n, dtype=np.int32))
    flags[ingest_flags != 0] |= Flag.INGEST_FLAGGED
    usable = np.flatnonzero(ok_flux & ok_snr)

    maps = np.full((n, d), np.nan)
    quants = np.full((n, len(QUANTILES), d), np.nan)
    n_valid = np.zeros(n, dtype=np.int32)
    f_reject = np.full(n, np.nan)
    for b in range(0, usable.size, options.batch):
        rows = usable[b:b + options.batch]
        summary = posterior.posterior(flux[rows], snr_used[rows].reshape(-1, 1), ids[rows], options.seed,
                                      options.samples)
        maps[rows], quants[rows] = summary.map, summary.quantiles
        n_valid[rows], f_reject[rows] = summary.n_valid, summary.f_reject

    processed = np.zeros(n, dtype=bool)
    processed[usable] = True
    flags[processed & (f_reject > HIGH_REJECTION_FRACTION)] |= Flag.HIGH_REJECTION
    flags[processed & (n_valid == 0)] |= Flag.ALL_REJECTED
    if "fe_h" in manifest.names:
        feh = maps[:, manifest.names.index("fe_h")]
        flags[np.isfinite(feh) & (feh <= METAL_POOR_FEH)] |= Flag.METAL_POOR

    values: dict[str, np.ndarray] = {"source_id": ids, "snr": snr.astype(np.float32)}
    for name in ctx.provenance:
        column = survey[name][start:stop]
        values[name] = column if column.dtype.kind in "OTU" else column.astype(np.float32)
    for j, name in enumerate(manifest.names):
        values[name] = maps[:, j].astype(np.float32)
        for (suffix, _), qi in zip(QUANTILE_SUFFIXES, range(len(QUANTILES)), strict=True):
            values[name + suffix] = quants[:, qi, j].astype(np.float32)
    for name, corrected in _bias_corrected(maps, manifest, options).items():
        values[name + "_corr"] = corrected.astype(np.float32)
    values.update(f_reject=f_reject.astype(np.float32), n_valid=n_valid, ingest_flags=ingest_flags, flags=flags,
                  flag_warn=flags != 0, flag_bad=(flags & int(BAD)) != 0)
    store.write_chunk(k, values)
    return k, n, time.perf_counter() - start_time, posterior.device


def _bias_corrected(maps: np.ndarray, manifest, options: ProcessOptions) -> dict[str, np.ndarray]:
    """Paper Eq. B.1, X - (a * T_eff + b) with the MAP T_eff, for the parameters the manifest has coefficients for."""
    correction = manifest.bias_correction
    if not options.bias_correction:
        return {}
    if not correction:
        raise BundleError(f"{manifest.raw.get('provenance', {}).get('training_run', 'bundle')}: --bias-correction "
                          "requested but the manifest holds no coefficients")
    teff = maps[:, manifest.names.index(correction.get("teff_parameter", "teff"))]
    return {name: maps[:, manifest.names.index(name)] - (c["a"] * teff + c["b"])
            for name, c in correction["coefficients"].items() if name in manifest.names}


def _open_survey(path: Path, bundle: Bundle) -> tuple[zarr.Group, int, int]:
    if not path.exists():
        raise FileNotFoundError(f"survey {path} not found")
    try:
        survey = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Zarr survey ({exc})") from None
    missing = [k for k in ("flux", "snr", "source_id", "wavelength") if k not in survey]
    if missing:
        raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; expected the `spectra survey` layout")
    n = survey["flux"].shape[0]
    for key in ("snr", "source_id"):
        if survey[key].shape != (n,):
            raise ValueError(f"{path}/{key}: shape {survey[key].shape}, expected ({n},) to match flux")
    bundle.check_wavelength(survey["wavelength"][:], f"{path}/wavelength")
    ids = survey["source_id"][:]
    if np.unique(ids).size != ids.size:
        raise ValueError(f"{path}/source_id: identifiers are not unique; results are keyed by (seed, source_id)")
    return survey, n, int(survey["flux"].chunks[0])


def check_arguments(options: ProcessOptions, workers: int = 1, scheduler: str | None = None,
                    chunk: int | None = None) -> None:
    """Refuse impossible settings before anything is created (one clear error each)."""
    if not isinstance(options.samples, int) or options.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {options.samples}")
    if options.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {options.batch}")
    if options.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {options.threads}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    if scheduler is not None and (not scheduler.startswith(_SCHEMES) or ":" not in scheduler.split("://", 1)[1]):
        raise ValueError(f"--scheduler {scheduler!r}: expected an address like tcp://HOST:8786")


def survey_continuum(survey: zarr.Group) -> str:
    """``true`` or ``pseudo``: how the survey's spectra are normalised (recorded at ``spectra survey/ingest``)."""
    return continuum_kind(dict(survey.attrs))


def process_survey(input_path: str | Path, bundle_path: str | Path, output_path: str | Path,
                   options: ProcessOptions = ProcessOptions(), workers: int = 1, scheduler: str | None = None,
                   chunk: int | None = None, resume: bool = False, progress: bool = True,
                   overwrite: bool = False) -> ProcessReport:
    """Process a survey into a catalogue (see the module docstring).

    Everything that can be checked is checked before the catalogue is created (arguments, bundle files and
    manifest, survey layout, the scheduler connection); a start that fails after creating it removes it again.
    """
    check_arguments(options, workers, scheduler, chunk)
    input_path, output_path = Path(input_path).resolve(), Path(output_path).resolve()
    bundle = load_bundle(bundle_path)
    survey, n, input_chunk = _open_survey(input_path, bundle)
    chunk = chunk or input_chunk
    device, _ = resolve_providers(options.device)
    corrected = list(bundle.manifest.bias_correction["coefficients"]) if (
        options.bias_correction and bundle.manifest.bias_correction) else []
    if options.bias_correction and not corrected:
        raise BundleError(f"{bundle_path}: --bias-correction requested but the manifest holds no coefficients")
    claim_output(output_path, "catalogue", (CATALOG_FORMAT,), overwrite=overwrite, resume=resume)
    warnings = []
    kind = survey_continuum(survey)
    if kind != bundle.manifest.continuum:
        warnings.append(f"{input_path} is {kind}-continuum normalised but the model was trained on "
                        f"{bundle.manifest.continuum}-continuum spectra: every row is flagged CONTINUUM_MISMATCH "
                        "(expect biases of ~-70 K in T_eff and -0.15 dex in [Fe/H]; README, Observed spectra)")
    provenance = tuple(c.name for c in PROVENANCE_COLUMNS if c.name in survey)
    identity = {"input": str(input_path), "bundle_sha256": bundle.sha256, "seed": options.seed,
                "samples": options.samples, "n_rows": n, "chunk": chunk, "bias_correction": bool(corrected),
                "snr_cap": options.snr_cap}
    ctx = RunContext(str(input_path), str(output_path), str(Path(bundle_path).resolve()), bundle.sha256,
                     options, bool(warnings), provenance)
    distributed = scheduler is not None or workers > 1
    if distributed:  # single-threaded workers: one ONNX Runtime thread each unless told otherwise
        ctx = replace(ctx, options=replace(options, threads=options.threads or 1))
    runner = _DistributedRunner(workers, scheduler, ctx) if distributed else None  # connects before any output
    created = False
    try:
        if output_path.exists():
            store = CatalogueStore.open(output_path, mode="r+")
            for key, value in identity.items():
                if store.attrs.get(key, False if key == "snr_cap" else None) != value:
                    raise ValueError(f"{output_path} was made with {key} = {store.attrs.get(key)!r}, this run has "
                                     f"{value!r}; resume needs the same settings")
        else:
            columns = catalogue_columns(bundle.manifest.raw["parameters"], corrected, list(provenance))
            created = True
            store = CatalogueStore.create(output_path, n, chunk, columns, {
                **identity, "bundle": str(Path(bundle_path).resolve()),
                "software": f"cinn4most {_software_version()}", "device": device,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "bias_correction_source": bundle.manifest.bias_correction.get("source") if corrected else "",
                "map_definition": "highest-density posterior sample inside the training bounds",
                "model_continuum": bundle.manifest.continuum, "survey_continuum": kind,
                "warnings": warnings,
            })
    except BaseException:
        if runner is not None:
            runner.close()
        if created and output_path.exists():  # ours, and unusable: a failed start leaves nothing behind
            import shutil

            shutil.rmtree(output_path)
        raise
    todo = [int(k) for k in np.flatnonzero(~store.done())]
    skipped = store.n_chunks - len(todo)
    start = time.perf_counter()
    bar = tqdm(total=n, initial=n - sum(_rows(store, k) for k in todo), desc=f"process on {device}", unit="spec",
               unit_scale=True, smoothing=0.1, disable=not progress)
    if runner is None:
        where = "in-process"
        for k in todo:
            _, rows, _, _ = process_chunk(k, ctx)
            bar.update(rows)
    else:
        try:
            where = runner.run(todo, bar)
        finally:
            runner.close()
    bar.close()
    return ProcessReport(output_path, n, len(todo), skipped, time.perf_counter() - start, device, where, warnings)


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cinn4most")
    except PackageNotFoundError:
        return "0.0.0+src"


def _rows(store: CatalogueStore, k: int) -> int:
    a, b = store.chunk_bounds(int(k))
    return b - a



class _DistributedRunner:
    """A Dask client (own LocalCluster, or an existing scheduler), connected when made: a wrong address fails
    here, before the catalogue exists."""

    def __init__(self, workers: int, scheduler: str | None, ctx: RunContext):
        from dask.distributed import Client, LocalCluster

        self.cluster = None
        self.ctx = ctx
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
            self.where = f"scheduler {scheduler}"
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0")
            self.client = Client(self.cluster)
            self.where = f"LocalCluster of {workers} worker processes"

    def run(self, todo: list[int], bar) -> str:
        from dask.distributed import as_completed

        options = self.ctx.options
        self.client.register_plugin(BundleSessions(self.ctx.bundle_path, options.device, options.threads,
                                                   self.ctx.bundle_sha256))
        futures = [self.client.submit(process_chunk, k, self.ctx, pure=False) for k in todo]
        for future in as_completed(futures):
            _, rows, _, _ = future.result()
            bar.update(rows)
            future.release()
        return self.where

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
