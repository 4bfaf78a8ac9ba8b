"""``runtime process``: stream a survey through a model bundle into a catalogue, with Dask.

Work is split into tasks of catalogue rows, one task per catalogue shard (``--chunk`` rows; by default about
four tasks per worker, at most 16 384 rows). A task reads its survey rows 256 at a time through
``spectra.stores.survey_reader`` (a Zarr survey or a simulated one), samples the posterior of each valid spectrum
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

Modules by role: this one is the driver (:func:`process_survey`, its checks and options, the catalogue's
creation, identity and run history); ``runtime.task`` is what runs per catalogue shard, on a worker
(:func:`~runtime.task.process_chunk` around ``runtime.inference``, the per-process ONNX Runtime sessions);
``runtime.cluster`` is the run's private Dask cluster and the client that submits the tasks.

One writer per catalogue: the run holds ``<output>.lock`` (``spectra.common.outputs.lock_output``) from before it
touches the output until its history entry is written, so a second run on the same output stops at once, naming
the first; a new catalogue is built under a temporary name and renamed into place, so its final name never
shows a half-made catalogue.

Determinism: a spectrum's latent draws come from (seed, source_id) only — its latent stream
``SeedSequence([seed, source_id, LATENT])`` (``spectra.contracts.streams``), never the stream its survey noise was drawn
from — so the catalogue is the same whatever the chunk size or worker count. The catalogue records the scheme
(``random_streams``). Resume: ``--resume`` reopens a catalogue made with the same bundle, seed, samples, random
stream scheme and survey *content* (its fingerprint, not its path), and runs only the shards not marked done.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from catalog.schema import PROVENANCE_COLUMNS, catalogue_columns
from catalog.writers import CATALOG_FORMAT, CatalogueStore, shard_layout
from spectra.common.outputs import claim_output, creation_path, lock_output, publish, remove_leftover_creations
from spectra.contracts.conventions import continuum_kind, software_version
from spectra.contracts.streams import LEGACY_SCHEME, check_seed
from spectra.contracts.streams import scheme as random_stream_scheme
from spectra.stores.survey_reader import SurveyReader, open_survey

from .bundle import Bundle, BundleError, load_bundle
from .cluster import DistributedRunner, TLSFiles
from .engines import cpu_features, engine_version
from .inference import MIN_SAMPLES, check_samples, validate_flux
from .precision import choose_engine, engine_verification, variant_file
from .sessions import resolve_providers
from .task import STAGES, ChunkResult, ProcessOptions, RunContext, build_sessions, compute_chunk, write_chunk

__all__ = ["MIN_SAMPLES", "ProcessOptions", "ProcessReport", "TLSFiles", "check_arguments", "process_survey",
           "validate_flux"]

#: resume-identity attributes that catalogues from before they existed lack, with the value they implied
_IDENTITY_DEFAULTS = {"snr_cap": False, "precision": "fp32", "random_streams": LEGACY_SCHEME, "engine": "onnxruntime"}
_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")


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
    engine: str = "onnxruntime"

    @property
    def spectra_per_second(self) -> float:
        rows = self.n_rows * self.chunks_run / max(self.chunks_run + self.chunks_skipped, 1)
        return rows / self.seconds if self.seconds > 0 else float("nan")


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
    engine, precision = choose_engine(bundle, options.engine, options.precision, device, options.force_precision)
    options = replace(options, precision=precision, engine=engine,
                      force_precision=options.force_precision and precision != "fp32",
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
                "snr_cap": options.snr_cap, "precision": precision, "random_streams": random_stream_scheme(),
                "engine": engine}
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
            runner = DistributedRunner(workers, scheduler, ctx, tls, dashboard)
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
                "precision_graph": (variant_file(bundle, precision, "hoisted_flow", "hoisted_flow.onnx")
                                    if engine == "onnxruntime" else f"hoisted_flow.onnx ({engine} {precision} hint)"),
                "precision_verification": engine_verification(bundle, engine, precision),
                "engine_version": f"{engine} {engine_version(engine)}", "cpu_features": list(cpu_features()),
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
                         [m for r in results for m in r.failures], precision, engine)


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


def _run_shards(store: CatalogueStore, ctx: RunContext, runner: DistributedRunner | None, problems: list[str],
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
        hint = (f" (give --engine {attrs.get('engine', 'onnxruntime')} --precision {attrs.get('precision', 'fp32')})"
                if key in ("engine", "precision") else "")
        raise ValueError(f"{output_path} was made with {key} = {made!r}, this run has {value!r}; resume "
                         f"needs the same settings{hint}")


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
