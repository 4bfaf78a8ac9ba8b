"""``runtime process``: stream a survey through a model bundle into a catalogue, with Dask.

Work is split into tasks of catalogue rows, one task per catalogue shard (``--chunk`` rows; by default about
four tasks per worker, at most 16 384 rows). A task reads its survey rows 256 at a time through
``runtime.survey`` (a Zarr survey or a simulated one), samples the posterior of each valid spectrum
(``runtime.sampler``), summarises it, and writes its shard of each catalogue array once, whole, then its done
marker (``catalog.writers``). Only small bookkeeping travels through the scheduler; spectra never do, and no
process ever holds more than a shard's summaries and 256 spectra.

A survey chunk that cannot be read or decoded never stops the run: its rows are flagged READ_FAILED, the
catalogue's ``read_failures`` attribute names the chunk, and the other rows are exactly what a clean run gives.

Execution: one worker in this process (``--workers 1``, no cluster), a private local ``dask.distributed``
cluster of single-threaded worker processes (``--workers N``), or an existing cluster (``--scheduler
tcp://HOST:8786`` or ``tls://`` with ``--tls-ca-file``, ``--tls-cert``, ``--tls-key``; input and output must be on
a filesystem all workers see). Each worker builds its ONNX Runtime sessions once (a ``WorkerPlugin``), not per
task, and before the catalogue exists. The local cluster is private to the run: it listens on 127.0.0.1 only, over
TLS with a throw-away certificate made for the run (in memory; ``require_encryption``), so no other process,
even of the same user, can connect to it or submit work; and it serves no HTTP at all (distributed otherwise
serves identity, logs and call stacks on 8787 and on every worker, credentials or not) unless ``--dashboard``
asks for the scheduler's dashboard (127.0.0.1 only, its address printed).

One writer per catalogue: the run holds ``<output>.lock`` (``catalog.outputs.lock_output``) from before it
touches the output until its history entry is written, so a second run on the same output stops at once, naming
the first; a new catalogue is built under a temporary name and renamed into place, so its final name never
shows a half-made catalogue.

Determinism: a spectrum's latent draws come from (seed, source_id) only — its latent stream
``SeedSequence([seed, source_id, LATENT])`` (``runtime.streams``), never the stream its survey noise was drawn
from — so the catalogue is the same whatever the chunk size or worker count. The catalogue records the scheme
(``random_streams``). Resume: ``--resume`` reopens a catalogue made with the same bundle, seed, samples, random
stream scheme and survey *content* (its fingerprint, not its path), and runs only the shards not marked done.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from distributed import Scheduler, Worker, WorkerPlugin
from tqdm.auto import tqdm

from catalog.outputs import claim_output, creation_path, lock_output, publish, remove_leftover_creations
from catalog.schema import PROVENANCE_COLUMNS, catalogue_columns
from catalog.writers import CATALOG_FORMAT, CatalogueStore, shard_layout
from spectra.contracts.conventions import continuum_kind, software_version

from .bundle import Bundle, BundleError, load_bundle
from .inference import MIN_SAMPLES, InferenceSettings, catalogue_rows, check_samples, validate_flux
from .precision import choose_precision, variant_file
from .resim import Resimulator
from .sampler import OnnxPosterior
from .sessions import ProviderError, resolve_providers
from .streams import LEGACY_SCHEME, check_seed
from .streams import scheme as random_stream_scheme
from .survey import SurveyReader, open_survey

__all__ = ["MIN_SAMPLES", "ProcessOptions", "ProcessReport", "TLSFiles", "check_arguments", "process_chunk",
           "process_survey", "validate_flux"]

#: the stages a task's seconds are counted in (ChunkResult.timings, the catalogue's runs attribute)
STAGES = ("read", "network", "summary", "resim", "other", "write")
#: resume-identity attributes that catalogues from before they existed lack, with the value they implied
_IDENTITY_DEFAULTS = {"snr_cap": False, "precision": "fp32", "random_streams": LEGACY_SCHEME}
READ_ROWS = 256  # survey rows read at a time inside a task (memory ~ READ_ROWS x pixels x 4 bytes)
_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")
_LOG = logging.getLogger(__name__)


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
    force_precision: bool = False  # run a variant whose recorded error is above the tolerance
    summary: str = "auto"  # where rejection/MAP/quantiles run: auto (device graph on GPUs), device, host
    cuda_graph: bool = False  # CUDA provider: capture and replay CUDA graphs (calls padded to --batch spectra)


@dataclass(frozen=True)
class TLSFiles:
    """Files for a TLS connection to a Dask scheduler (``distributed.Security``): CA, client cert and key."""

    ca_file: str
    cert: str
    key: str

    def security(self):
        from distributed import Security

        for what, path in (("--tls-ca-file", self.ca_file), ("--tls-cert", self.cert), ("--tls-key", self.key)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{what} {path} not found")
        return Security(tls_ca_file=self.ca_file, tls_client_cert=self.cert, tls_client_key=self.key,
                        require_encryption=True)


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
    timings: dict[str, float] = field(default_factory=dict)  # task seconds: read, network, summary, other, write
    read_failures: list[str] = field(default_factory=list)
    precision: str = "fp32"

    @property
    def spectra_per_second(self) -> float:
        rows = self.n_rows * self.chunks_run / max(self.chunks_run + self.chunks_skipped, 1)
        return rows / self.seconds if self.seconds > 0 else float("nan")


_SESSIONS: dict[tuple, OnnxPosterior] = {}


def _posterior(bundle_path: str, options: ProcessOptions, sha256: str | None = None) -> OnnxPosterior:
    """One set of ONNX Runtime sessions per process (i.e. per Dask worker), created on first use from a bundle
    whose identity must be ``sha256`` (the one the driver loaded and recorded in the catalogue)."""
    key = (bundle_path, options.device, options.threads, options.precision, options.force_precision,
           options.summary, options.cuda_graph, options.batch, options.samples, sha256)
    if key not in _SESSIONS:
        bundle = load_bundle(bundle_path, check_graphs=False, expected_sha256=sha256)
        _SESSIONS[key] = OnnxPosterior(bundle, device=options.device, threads=options.threads,
                                       max_rows=options.batch * options.samples, precision=options.precision,
                                       force_precision=options.force_precision, summary=options.summary,
                                       cuda_graph=options.cuda_graph, n_samples=options.samples)
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
    if np.shape(model) != (1, manifest.n_pixels):
        emulator = (posterior.bundle.emulator or {}).get("file")
        raise BundleError(f"{posterior.bundle.path}: the emulator ({emulator}) gives "
                          f"spectra of shape {np.shape(model)}, expected (1, {manifest.n_pixels})")
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


def _resim_description(bundle: Bundle) -> str:
    entry = bundle.emulator
    if not entry:
        return "none: the bundle carries no emulator"
    return (f"chi2_resim/resim_rms against the bundle's emulator ({entry['file']}) at the MAP, rotated by the MAP "
            f"v_broad; model error {entry['model_error']:.4f} added in quadrature to the noise; POOR_FIT above "
            f"{entry.get('poor_fit_chi2')}")


def _open_survey(path: Path, bundle: Bundle) -> tuple[SurveyReader, list[str]]:
    """The survey's reader, checked against the bundle's pixel grid; source ids unique. Unreadable source_id
    chunks do not stop the run: they are returned as problems (their rows will be flagged READ_FAILED)."""
    survey = open_survey(path)
    bundle.check_wavelength(survey.wavelength, f"{path}/wavelength")
    ids, problems = survey.source_ids()
    known = ids[ids != -1]
    if np.unique(known).size != known.size:
        raise ValueError(f"{path}/source_id: identifiers are not unique; results are keyed by (seed, source_id)")
    return survey, problems


def default_task_rows(n: int, workers: int) -> int:
    """Rows per task (= per catalogue shard) when ``--chunk`` is not given: enough tasks to keep the workers
    busy (about 4 each), at most 16 384 rows (a 4 M-row catalogue stays near 1 500 files), at least 32."""
    return int(min(16_384, max(32, -(-n // (4 * max(workers, 1))))))


def check_arguments(options: ProcessOptions, workers: int = 1, scheduler: str | None = None,
                    chunk: int | None = None, tls: TLSFiles | None = None, dashboard: bool = False) -> None:
    """Refuse impossible settings before anything is created (one clear error each)."""
    check_samples(options.samples)
    if options.batch < 0:
        raise ValueError(f"--batch must be >= 1 (or 0 for the device's default), got {options.batch}")
    if options.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {options.threads}")
    check_seed(options.seed, "--seed")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    if scheduler is not None and (not scheduler.startswith(_SCHEMES) or ":" not in scheduler.split("://", 1)[1]):
        raise ValueError(f"--scheduler {scheduler!r}: expected an address like tcp://HOST:8786")
    if scheduler is not None and scheduler.startswith("tls://") and tls is None:
        raise ValueError(f"--scheduler {scheduler}: a TLS scheduler needs --tls-ca-file, --tls-cert and --tls-key")
    if tls is not None and (scheduler is None or not scheduler.startswith("tls://")):
        raise ValueError("--tls-ca-file/--tls-cert/--tls-key go with a --scheduler tls://HOST:PORT")
    if dashboard and (scheduler is not None or workers < 2):
        raise ValueError("--dashboard goes with --workers N (N >= 2, the run's own local cluster); an existing "
                         "--scheduler serves its own dashboard")
    if dashboard:
        from importlib.util import find_spec

        if find_spec("bokeh") is None:
            raise ValueError("--dashboard needs the bokeh package (pip install bokeh)")


def process_survey(input_path: str | Path, bundle_path: str | Path, output_path: str | Path,
                   options: ProcessOptions = ProcessOptions(), workers: int = 1, scheduler: str | None = None,
                   chunk: int | None = None, resume: bool = False, progress: bool = True,
                   overwrite: bool = False, tls: TLSFiles | None = None, dashboard: bool = False) -> ProcessReport:
    """Process a survey into a catalogue (see the module docstring).

    Everything that can be checked is checked before the catalogue is created or touched: arguments, bundle files
    and manifest, survey layout, the output's lock (one run per catalogue), every ONNX Runtime session the run will
    use (built and tried, on every worker), the scheduler connection. A new catalogue appears under its name only
    whole (built under a temporary name, then renamed); a failed start removes only that temporary store.
    """
    check_arguments(options, workers, scheduler, chunk, tls, dashboard)
    input_path, output_path = Path(input_path).resolve(), Path(output_path).resolve()
    bundle = load_bundle(bundle_path)
    survey, survey_problems = _open_survey(input_path, bundle)
    n = survey.n
    if chunk is None:
        chunk = (int(CatalogueStore.open(output_path).chunk) if resume and output_path.exists()
                 else default_task_rows(n, 1 if scheduler is None else 8) if workers == 1
                 else default_task_rows(n, workers))
    chunk = shard_layout(chunk)[0]
    device, _ = resolve_providers(options.device, notify=_tell_warning)
    precision = choose_precision(bundle, options.precision, device, options.force_precision)
    options = replace(options, precision=precision, force_precision=options.force_precision and precision != "fp32",
                      batch=options.batch or (16 if device == "cpu" else 256))
    corrected = list(bundle.manifest.bias_correction["coefficients"]) if (
        options.bias_correction and bundle.manifest.bias_correction) else []
    if options.bias_correction and not corrected:
        raise BundleError(f"{bundle_path}: --bias-correction requested but the manifest holds no coefficients")
    warnings = []
    kind = continuum_kind(dict(survey.attrs))  # true or pseudo, as `spectra survey/ingest` recorded it
    if kind != bundle.manifest.continuum:
        warnings.append(f"{input_path} is {kind}-continuum normalised but the model was trained on "
                        f"{bundle.manifest.continuum}-continuum spectra: every row is flagged CONTINUUM_MISMATCH "
                        "(expect biases of ~-70 K in T_eff and -0.15 dex in [Fe/H]; README, Observed spectra)")
    provenance = tuple(c.name for c in PROVENANCE_COLUMNS if survey.has(c.name))
    identity = {"survey_fingerprint": survey.fingerprint(), "bundle_sha256": bundle.sha256, "seed": options.seed,
                "samples": options.samples, "n_rows": n, "chunk": chunk, "bias_correction": bool(corrected),
                "snr_cap": options.snr_cap, "precision": precision, "random_streams": random_stream_scheme()}
    ctx = RunContext(str(input_path), str(output_path), str(Path(bundle_path).resolve()), bundle.sha256,
                     options, bool(warnings), provenance)
    distributed = scheduler is not None or workers > 1
    if distributed:  # single-threaded workers: one ONNX Runtime thread each unless told otherwise
        ctx = replace(ctx, options=replace(options, threads=options.threads or 1))
    lock = lock_output(output_path, "catalogue", warn=_tell_warning)
    runner = None
    try:
        for leftover in remove_leftover_creations(output_path):
            _tell_warning(f"removed {leftover}, a catalogue whose creation a crashed run left unfinished")
        if distributed:  # connects and builds the sessions on every worker before any output
            runner = _DistributedRunner(workers, scheduler, ctx, tls, dashboard)
            runner.prepare()
        else:
            build_sessions(ctx.bundle_path, ctx.options, ctx.bundle_sha256)
        claim_output(output_path, "catalogue", (CATALOG_FORMAT,), overwrite=overwrite, resume=resume)
        if output_path.exists():
            store = CatalogueStore.open(output_path, mode="r+")
            _check_identity(output_path, dict(store.attrs), identity)
        else:
            columns = catalogue_columns(bundle.manifest.raw["parameters"], corrected, list(provenance),
                                        resim=bool(bundle.emulator))
            store = _create_catalogue(output_path, n, chunk, columns, {
                **identity, "input": str(input_path), "bundle": str(Path(bundle_path).resolve()),
                "software": f"cinn4most {software_version()}", "device": device,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "bias_correction_source": (bundle.manifest.bias_correction or {}).get("source") if corrected else "",
                "map_definition": "highest-density posterior sample inside the training bounds",
                "model_continuum": bundle.manifest.continuum, "survey_continuum": kind,
                "warnings": warnings, "precision_forced": options.force_precision,
                "precision_graph": variant_file(bundle, precision, "hoisted_flow", "hoisted_flow.onnx"),
                "precision_verification": (bundle.manifest.precisions.get(precision) or {}).get("verification"),
                "resim": _resim_description(bundle),
                "poor_fit_chi2": (bundle.emulator or {}).get("poor_fit_chi2"),
            })
        chunks_run, skipped, seconds, where, results = _run_shards(store, ctx, runner, survey_problems, device,
                                                                   progress)
    finally:  # also on KeyboardInterrupt: the cluster goes, the lock is released (after the history is written)
        if runner is not None:
            runner.close()
        lock.release()
    timings = {key: sum(r.timings[key] for r in results) for key in STAGES}
    return ProcessReport(output_path, n, chunks_run, skipped, seconds, device, where, warnings, timings,
                         [m for r in results for m in r.failures], precision)


def _tell_warning(message: str) -> None:
    """A warning the user should see now, not at the end of a long run (a lock taken over, a leftover removed)."""
    print(f"runtime process: warning: {message}", file=sys.stderr)


def _create_catalogue(output_path: Path, n: int, chunk: int, columns: list, attrs: dict) -> CatalogueStore:
    """A new catalogue, built under a temporary name beside the output and then renamed into place: a crash or an
    error while it is made never leaves a half-made catalogue under the output's name (whose absence tells the
    next run to create it, not to resume it), and a failure removes only the temporary store this run made."""
    building = creation_path(output_path)
    try:
        CatalogueStore.create(building, n, chunk, columns, attrs)
        publish(building, output_path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return CatalogueStore.open(output_path, mode="r+")


def _run_shards(store: CatalogueStore, ctx: RunContext, runner: _DistributedRunner | None, problems: list[str],
                device: str, progress: bool) -> tuple[int, int, float, str, list[ChunkResult]]:
    """Run the shards not yet done; (shards run, shards skipped, seconds, where, results). The run's history
    entry is written whatever happens (also on an interruption), while the caller still holds the lock."""
    todo = [int(k) for k in np.flatnonzero(~store.done())]
    skipped = store.n_chunks - len(todo)
    start = time.perf_counter()
    bar = tqdm(total=store.n_rows, initial=store.n_rows - sum(_rows(store, k) for k in todo),
               desc=f"process on {device}", unit="spec", smoothing=0.1, disable=not progress)
    results: list[ChunkResult] = []
    where = ""

    def finished(result: ChunkResult) -> None:
        results.append(result)
        bar.update(result.rows)

    try:
        if runner is None:
            where = "in-process"
            _run_in_process(todo, ctx, finished)
        else:
            where = runner.run(todo, finished)
    finally:
        if runner is not None:
            runner.close()
        _record_run(store, results, problems, time.perf_counter() - start, where, device)
        bar.close()
    return len(todo), skipped, time.perf_counter() - start, where, results


def _check_identity(output_path: Path, attrs: dict, identity: dict) -> None:
    """Refuse to resume a catalogue made with other settings (one line naming the first difference): its finished
    shards and this run's would not form one catalogue."""
    for key, value in identity.items():
        made = attrs.get(key, _IDENTITY_DEFAULTS.get(key))
        if made == value:
            continue
        if key == "random_streams":
            version = made.get("version") if isinstance(made, dict) else made
            raise ValueError(f"{output_path} was made with random-stream scheme version {version!r}"
                             f"{' (latent draws shared the survey noise stream)' if made == LEGACY_SCHEME else ''}, "
                             f"this software draws with version {value['version']}: its rows would differ from "
                             "the finished ones; re-run without --resume (--overwrite) to remake the catalogue")
        raise ValueError(f"{output_path} was made with {key} = {attrs.get(key)!r}, this run has {value!r}; resume "
                         "needs the same settings")


def _run_in_process(todo: list[int], ctx: RunContext, finished) -> None:
    """Shards one after another in this process; each shard is written in a background thread while the next
    one is computed (its done marker after its data, so an interruption loses at most the shards in flight)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind") as writer:
        pending = None
        for k in todo:
            values, result = compute_chunk(k, ctx)
            if pending is not None:
                finished(pending.result())
            pending = writer.submit(write_chunk, k, ctx, values, result)
        if pending is not None:
            finished(pending.result())


def _record_run(store: CatalogueStore, results: list[ChunkResult], problems: list[str], seconds: float, where: str,
                device: str) -> None:
    """The driver (the only writer of the catalogue's attributes) notes unreadable survey chunks and what this
    invocation did (rows, wall time, task seconds per stage), so a resumed run's history stays with the data."""
    updates: dict = {}
    messages = [m for r in results for m in r.failures] + problems
    if messages:
        earlier = list(store.attrs.get("read_failures", []))
        updates["read_failures"] = earlier + [m for m in messages if m not in earlier]
    if results:
        stages = STAGES
        updates["runs"] = [*store.attrs.get("runs", []), {
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "where": where, "device": device,
            "tasks": len(results), "rows": int(sum(r.rows for r in results)), "wall_seconds": round(seconds, 3),
            "task_seconds": {k: round(sum(r.timings[k] for r in results), 3) for k in stages}}]
    if updates:
        store.root.attrs.update(updates)


def _rows(store: CatalogueStore, k: int) -> int:
    a, b = store.chunk_bounds(int(k))
    return b - a



class _NoHTTP:
    """Mixin for a ``dask.distributed`` Scheduler or Worker that serves no HTTP. distributed starts an HTTP
    server on every scheduler (port 8787, even with ``dashboard_address=None``) and on every worker (a random
    port), whose routes publish identity, logs, metrics and call stacks to whoever reaches the port, no
    credentials asked; the run's private cluster needs none of it."""

    def start_http_server(self, routes, dashboard_address, default_port=0, ssl_options=None) -> None:
        from distributed.http.routing import RoutingApplication

        self.http_application = RoutingApplication([])  # what shutdown looks for; nothing listens


class _QuietScheduler(_NoHTTP, Scheduler):
    """The private cluster's scheduler: TLS comms only, no HTTP server."""


class _QuietWorker(_NoHTTP, Worker):
    """The private cluster's workers (started by their nannies in their own processes): no HTTP server, deaf to
    Ctrl-C, and silent while they close.

    A Ctrl-C in a terminal reaches every process of the foreground group, the workers too: each one used to die with
    a KeyboardInterrupt and log its tracebacks, about seventy lines before the driver's one useful line. The driver
    alone handles the interruption (it stops the cluster and says how to resume), so the workers ignore SIGINT, and
    what they log while being stopped (cancelled tasks, a scheduler already gone) is not shown.
    """

    def __init__(self, *args, **kwargs):
        _ignore_interrupts()
        super().__init__(*args, **kwargs)

    async def close(self, *args, **kwargs):
        logging.disable(logging.CRITICAL)  # this process is ending: its shutdown chatter is no news to the user
        return await super().close(*args, **kwargs)


def _ignore_interrupts() -> None:
    """SIGINT ignored in this process, where that is allowed (the main thread of a worker process)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _quiet_logging():
    """No log records from this process while the run's cluster is stopped (the scheduler and nannies live here):
    on an interruption they are warnings about the workers being stopped, which the user just asked for."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _run_security():
    """TLS credentials made for this run only, in memory (``distributed.Security.temporary``: a self-signed
    certificate that is its own CA, ``require_encryption``): the scheduler, workers and nannies accept only
    peers that present it, so no other process can join the cluster or submit work to it."""
    from distributed import Security

    try:
        import cryptography  # noqa: F401  (Security.temporary needs it)
    except ImportError:
        raise ValueError("--workers N needs the cryptography package (pip install cryptography): the run's local "
                         "cluster is private, over TLS with a certificate made for the run") from None
    security = Security.temporary()
    assert security.require_encryption
    return security


def _private_cluster(workers: int, dashboard: bool = False):
    """The run's own cluster of ``workers`` single-threaded worker processes (a ``SpecCluster`` laid out as
    ``LocalCluster`` lays it out: nannies, memory split evenly), private to the run: 127.0.0.1 only, TLS with
    :func:`_run_security`, and no HTTP server anywhere unless ``dashboard`` (then the scheduler's dashboard, on
    127.0.0.1 only)."""
    from distributed import Nanny, SpecCluster
    from distributed.worker_memory import parse_memory_limit

    security = _run_security()
    common = {"host": "127.0.0.1", "protocol": "tls://", "security": security}
    scheduler = {"cls": Scheduler if dashboard else _QuietScheduler,
                 "options": {**common, "port": 0, "dashboard": dashboard,
                             "dashboard_address": "127.0.0.1:8787" if dashboard else None}}
    worker = {"cls": Nanny, "options": {**common, "nthreads": 1, "worker_class": _QuietWorker, "dashboard": False,
                                        "dashboard_address": None, "silence_logs": logging.WARNING,
                                        "memory_limit": parse_memory_limit("auto", 1, workers, logger=_LOG)}}
    return SpecCluster(workers=dict.fromkeys(range(workers), worker), scheduler=scheduler, worker=worker,
                       security=security, silence_logs=logging.WARNING)


class _DistributedRunner:
    """A Dask client (the run's private cluster, or an existing scheduler), connected when made: a wrong address
    fails here, before the catalogue exists."""

    def __init__(self, workers: int, scheduler: str | None, ctx: RunContext, tls: TLSFiles | None = None,
                 dashboard: bool = False):
        from dask.distributed import Client

        self.cluster = None
        self.client: Client | None = None  # connected below; None again once closed
        self.ctx = ctx
        self.dashboard = ""
        if scheduler:
            security = tls.security() if tls else None
            try:
                self.client = Client(scheduler, timeout="10s", security=security)
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
            self.where = f"scheduler {scheduler}"
            return
        self.cluster = _private_cluster(workers, dashboard)
        try:
            self.client = Client(self.cluster)
        except BaseException:
            self.cluster.close()
            raise
        self.where = f"LocalCluster of {workers} worker processes"
        if dashboard:
            self.dashboard = self.cluster.dashboard_link
            print(f"runtime process: dashboard at {self.dashboard} (127.0.0.1 only; any local user can open it "
                  "while the run lasts)", file=sys.stderr)

    def prepare(self) -> None:
        """Build and try the run's sessions on every worker now (:class:`BundleSessions`): a bundle that fails
        there fails before the catalogue exists, with the workers' one-line error."""
        options = self.ctx.options
        assert self.client is not None, "the runner is closed"
        self.client.register_plugin(BundleSessions(self.ctx.bundle_path, options, self.ctx.bundle_sha256))

    def run(self, todo: list[int], finished) -> str:
        from dask.distributed import as_completed

        assert self.client is not None, "the runner is closed"
        futures = [self.client.submit(process_chunk, k, self.ctx, pure=False) for k in todo]
        for future in as_completed(futures):
            finished(future.result())
            future.release()
        return self.where

    def close(self) -> None:
        """Disconnect and stop the run's own cluster (idempotent: the driver calls it on every way out), without
        the log records distributed writes while a cluster with running tasks is stopped (an interrupted run)."""
        client, cluster, self.client, self.cluster = getattr(self, "client", None), self.cluster, None, None
        with _quiet_logging():
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
