"""The per-shard task of ``runtime process`` (``runtime.pipeline`` is the driver): what runs on a worker.

:func:`process_chunk` computes catalogue shard k (:func:`compute_chunk`: the survey read ``READ_ROWS`` rows at a
time through ``spectra.stores.survey_reader``, the next block read ahead while this one is on the device, each block
through ``runtime.inference.catalogue_rows``, the one computation the Python API runs too) and writes it, whole,
then its done marker (:func:`write_chunk`). A task needs only its shard number and the :class:`RunContext` the
driver made; it returns small bookkeeping (:class:`ChunkResult`), never spectra.

Each process (the driver with ``--workers 1``, else each Dask worker) builds its ONNX Runtime sessions once, for the
bundle identity the driver checked (:func:`build_sessions`, run on every worker by the :class:`BundleSessions`
plugin before the catalogue exists), and opens each survey once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from distributed import WorkerPlugin

from catalog.writers import CatalogueStore
from spectra.stores.survey_reader import SurveyReader, open_survey

from .bundle import Bundle, BundleError, load_bundle
from .inference import InferenceSettings, catalogue_rows
from .resim import Resimulator
from .sampler import OnnxPosterior
from .sessions import ProviderError

__all__ = ["READ_ROWS", "STAGES", "BundleSessions", "ChunkResult", "ProcessOptions", "RunContext", "build_sessions",
           "compute_chunk", "process_chunk", "write_chunk"]

#: the stages a task's seconds are counted in (ChunkResult.timings, the catalogue's runs attribute)
STAGES = ("read", "network", "summary", "resim", "other", "write")
READ_ROWS = 256  # survey rows read at a time inside a task (memory ~ READ_ROWS x pixels x 4 bytes)


@dataclass(frozen=True)
class ProcessOptions:
    samples: int = 4096
    seed: int = 0
    batch: int = 0  # spectra per flow call (x samples = rows per call); 0: 16 on a CPU, 256 on a GPU
    device: str = "auto"
    threads: int = 0
    bias_correction: bool = False
    snr_cap: bool = False  # S/N above the trained range -> the trained maximum (flag SNR_CAPPED)
    precision: str = "auto"  # runtime.precision: auto | fp32 | int8 | fp16 | bf16 (the driver makes it concrete)
    engine: str = "auto"  # runtime.engines: auto | onnxruntime | openvino (the driver makes it concrete)
    force_precision: bool = False  # run a variant whose recorded error is above the tolerance
    summary: str = "auto"  # where rejection/MAP/quantiles run: auto (device graph on GPUs), device, host
    cuda_graph: bool = False  # CUDA provider: capture and replay CUDA graphs (calls padded to --batch spectra)


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


_SESSIONS: dict[tuple, OnnxPosterior] = {}


def _posterior(bundle_path: str, options: ProcessOptions, sha256: str | None = None) -> OnnxPosterior:
    """One set of ONNX Runtime sessions per process (i.e. per Dask worker), created on first use from a bundle
    whose identity must be ``sha256`` (the one the driver loaded and recorded in the catalogue)."""
    key = (bundle_path, options.device, options.engine, options.threads, options.precision, options.force_precision,
           options.summary, options.cuda_graph, options.batch, options.samples, sha256)
    if key not in _SESSIONS:
        bundle = load_bundle(bundle_path, check_graphs=False, expected_sha256=sha256)
        _SESSIONS[key] = OnnxPosterior(bundle, device=options.device, threads=options.threads,
                                       max_rows=options.batch * options.samples, precision=options.precision,
                                       force_precision=options.force_precision, summary=options.summary,
                                       cuda_graph=options.cuda_graph, n_samples=options.samples,
                                       engine=options.engine)
    return _SESSIONS[key]


_RESIMULATORS: dict[tuple, Resimulator] = {}


def _resimulator(bundle: Bundle, threads: int) -> Resimulator:
    """The bundle's emulator session (re-simulation check), once per process, for the bundle the posterior's
    sessions already loaded and checked (not loaded and hashed a second time)."""
    key = (str(bundle.path), bundle.sha256, threads)
    if key not in _RESIMULATORS:
        _RESIMULATORS[key] = Resimulator(bundle, threads=threads)
    return _RESIMULATORS[key]


def build_sessions(bundle_path: str, options: ProcessOptions, sha256: str) -> OnnxPosterior:
    """This process's ONNX Runtime sessions for the run (the chosen precision's graphs, the summary graph, the
    emulator), each run once on a made-up spectrum, so that a bundle whose graphs do not load or do not run (a
    corrupt int8 variant, an emulator graph or input list that does not fit) fails here with one line, before the
    catalogue exists, and not in the first task after it. Cached: the run's tasks reuse them."""
    try:
        posterior = _posterior(bundle_path, options, sha256)
        _try_posterior(posterior, options)
        if posterior.bundle.emulator:
            _try_emulator(_resimulator(posterior.bundle, options.threads), posterior)
    except Exception as exc:  # onnxruntime raises its own types (not ValueError); numpy a ValueError on bad shapes
        _SESSIONS.clear()
        _RESIMULATORS.clear()
        if isinstance(exc, BundleError | ProviderError):  # already one line naming the bundle or the device
            raise
        detail = " ".join(str(exc).split())[:400] or type(exc).__name__
        prefix = "" if detail.startswith(bundle_path) else f"{bundle_path}: the run's ONNX Runtime sessions fail: "
        raise BundleError(prefix + detail) from None
    return posterior


def _try_posterior(posterior: OnnxPosterior, options: ProcessOptions) -> None:
    """One flat spectrum through the features, flow and summary exactly as the tasks call them."""
    manifest = posterior.manifest
    flux = np.ones((1, manifest.n_pixels), dtype=np.float32)
    snr = np.full((1, 1), float(np.mean(manifest.snr_range)))
    summary = posterior.posterior(flux, snr, np.zeros(1, dtype=np.int64), options.seed, options.samples)
    if np.shape(summary.map) != (1, manifest.n_params):
        raise BundleError(f"{posterior.bundle.path}: the flow gives MAPs of shape {np.shape(summary.map)}, expected "
                          f"(1, {manifest.n_params})")


def _try_emulator(resim: Resimulator, posterior: OnnxPosterior) -> None:
    """The re-simulation check once, at the middle of the parameter bounds (emulator inputs, graph, rotation)."""
    manifest = posterior.manifest
    middle = ((np.asarray(manifest.lower, float) + np.asarray(manifest.upper, float)) / 2).reshape(1, -1)
    model = resim.session.run(None, {"labels": resim.labels(middle)})[0]
    if np.shape(model) != (1, resim.n_output):  # the bundle's pixels, or more with emulator.margin
        emulator = (posterior.bundle.emulator or {}).get("file")
        raise BundleError(f"{posterior.bundle.path}: the emulator ({emulator}) gives "
                          f"spectra of shape {np.shape(model)}, expected (1, {resim.n_output})")
    resim.check(np.ones((1, manifest.n_pixels)), np.ones(1), middle)


class BundleSessions(WorkerPlugin):
    """Dask ``WorkerPlugin``: build (and try) the sessions when the plugin is registered, on every worker,
    before the catalogue exists; the tasks then find them ready."""

    name = "cinn4most-bundle-sessions"

    def __init__(self, bundle_path: str, options: ProcessOptions, sha256: str):
        self.args = (bundle_path, options, sha256)

    def setup(self, worker) -> None:
        build_sessions(*self.args)


@dataclass
class ChunkResult:
    """What a task returns to the driver: small bookkeeping only."""

    k: int
    rows: int
    seconds: float
    device: str
    timings: dict[str, float]  # read, network, summary, other, write [s]
    failures: list[str]


_READERS: dict[str, SurveyReader] = {}


def _reader(path: str) -> SurveyReader:
    if path not in _READERS:  # once per process (a simulated survey loads its grid once)
        _READERS[path] = open_survey(path)
    return _READERS[path]


def compute_chunk(k: int, ctx: RunContext) -> tuple[dict[str, np.ndarray], ChunkResult]:
    """Catalogue shard k's column values (on a worker): the survey read ``READ_ROWS`` rows at a time (the next
    block read ahead while this one is on the device), each block through ``runtime.inference.catalogue_rows``,
    the one computation the Python API runs too; this function only reads, times and joins the blocks."""
    clock = time.perf_counter
    start_time = clock()
    timings = dict.fromkeys(STAGES, 0.0)
    options = ctx.options
    posterior = _posterior(ctx.bundle_path, options, ctx.bundle_sha256)
    store = CatalogueStore.open(ctx.output_path, mode="r")
    survey = _reader(ctx.input_path)
    start, stop = store.chunk_bounds(k)
    resim = _resimulator(posterior.bundle, options.threads) if posterior.bundle.emulator else None
    settings = InferenceSettings(seed=options.seed, samples=options.samples, batch=options.batch,
                                 snr_cap=options.snr_cap, bias_correction=options.bias_correction,
                                 continuum_mismatch=ctx.continuum_mismatch)
    parts: list[dict[str, np.ndarray]] = []
    failures: list[str] = []
    timings["other"] += clock() - start_time  # sessions, stores, reader
    for _, block, waited in _read_ahead(survey, start, stop):
        timings["read"] += waited
        failures += [message for _, _, message in block.failures]
        parts.append(catalogue_rows(posterior, block.flux, block.snr, block.source_id, settings, resim=resim,
                                    failed=block.failed, ingest_flags=block.extra.get("ingest_flags"),
                                    provenance={name: block.extra[name] for name in ctx.provenance},
                                    timings=timings))
    t = clock()
    values = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}
    timings["other"] += clock() - t
    return values, ChunkResult(k, stop - start, clock() - start_time, posterior.device, timings, failures)


def write_chunk(k: int, ctx: RunContext, values: dict[str, np.ndarray], result: ChunkResult) -> ChunkResult:
    """Write shard k's arrays, then its done marker (``CatalogueStore.write_chunk``); adds the write time."""
    t = time.perf_counter()
    CatalogueStore.open(ctx.output_path, mode="r+").write_chunk(k, values)
    seconds = time.perf_counter() - t
    result.timings["write"] += seconds
    result.seconds += seconds
    return result


def process_chunk(k: int, ctx: RunContext) -> ChunkResult:
    """Run catalogue shard k end to end (a Dask task): compute, then write its shard and done marker."""
    values, result = compute_chunk(k, ctx)
    return write_chunk(k, ctx, values, result)


def _read_ahead(survey: SurveyReader, start: int, stop: int):
    """(first row, block, seconds waited) for the survey rows [start, stop) in blocks of ``READ_ROWS``; the next
    block is read and decoded in a background thread while the caller works on this one."""
    from concurrent.futures import ThreadPoolExecutor

    def read(a: int):
        return survey.read_rows(a, min(a + READ_ROWS, stop))

    starts = list(range(start, stop, READ_ROWS))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(read, starts[0]) if starts else None
        for i, a in enumerate(starts):
            t = time.perf_counter()
            assert pending is not None  # submitted before the loop, and again for every next block
            block = pending.result()
            waited = time.perf_counter() - t
            if i + 1 < len(starts):
                pending = pool.submit(read, starts[i + 1])
            yield a, block, waited
