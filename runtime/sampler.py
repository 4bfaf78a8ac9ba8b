"""Posterior sampling with a model bundle through ONNX Runtime (numpy + onnxruntime only).

For each spectrum: features once (``feature_extractor.onnx``) and the subnets' condition term once
(``condition_projection.onnx``), then ``n_samples`` latent draws z ~ N(0, I) from the spectrum's own latent
stream ``SeedSequence([seed, source_id, LATENT])`` (``spectra.contracts.streams``; a simulated survey's noise has its
own tag, so z is never the noise shifted) — so a spectrum's samples depend on (seed, source_id) only, never on
batching, chunking, workers or device — pushed through the hoisted flow
(``hoisted_flow.onnx`` or its int8/fp16/bf16 variant, ``runtime.precision``), many spectra x samples per call.
Densities: log p = log N(z; 0, I) - log|det dx/dz| (network space). Every spectrum reaches the feature extractor
through :meth:`OnnxPosterior.features`, which first sets the pixels of the bundle's input mask (manifest
``input_mask``) to its fill (``runtime.bundle.Bundle.mask_input``): the one door of ``runtime process``,
``Model.infer`` and ``Model.posterior`` alike.

Summaries (rejection, MAP, quantiles): on GPU providers by the bundle's ``posterior_summary.onnx`` on the device,
through IO binding (``runtime.binding``), so only the summaries cross to the host; on the CPU by the numpy
reference ``runtime.posterior.summarize`` (the samples are in host memory already, and numpy's sort is ~4x
faster than ONNX Runtime's CPU TopK: 1.6 against 6.9 ms per spectrum). Both give the same numbers (tested).

Latent draws stay on the host: 4096 x 13 float32 per spectrum is 0.2 MB to upload, far less than the flow's
work, and drawing them with numpy keeps the (seed, source_id) stream identical on every device.

int8 variants quantize activations dynamically (one scale per call), so the int8 flow is called one spectrum
at a time: a spectrum's result must not depend on which other spectra share its call.

``engine="openvino"`` (``runtime.engines``): the same graphs, latent draws and numpy summary, computed by OpenVINO
on the CPU in fp32 or bf16 (its precision hint on the fp32 graphs); every graph is called with one fixed shape, for
the same reason as int8 (OpenVINO's kernels may depend on the batch shape): the flow one spectrum at a time, the
once-per-spectrum graphs in blocks of ``OPENVINO_BLOCK`` spectra. In bf16 the densities carry
errors of ~0.01 in log p, enough to swap the highest-density sample (the MAP) with a neighbour of nearly equal
density far away in parameter space; and a sample within the bf16 error of a training bound may be rejected in
one precision and kept in the other, which shifts every quantile of that parameter by a rank (most posteriors of
the current default model lean on a bound). So the ``EXACT_TOP`` samples of highest bf16 density, and every sample
within ``EXACT_MARGIN`` (standardised units) of a bound, are recomputed in fp32: the MAP is chosen on exact densities
and the rejection decided on exact values wherever a flip would move a quantile (the margin's comment).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectra.contracts.density import log_density as latent_log_density
from spectra.contracts.manifest import HOISTED, SUMMARY
from spectra.contracts.quantiles import QUANTILES
from spectra.contracts.streams import LATENT, stream_rng

from .binding import BoundFlow
from .bundle import Bundle, BundleError
from .engines import OpenVinoSession
from .posterior import PosteriorSummary, summarize
from .precision import choose_precision, variant_file
from .sessions import check_provider, engine_cache_dir, resolve_providers, session_options

__all__ = ["SUMMARY_MODES", "OnnxPosterior", "latent_draws"]

SUMMARY_MODES = ("auto", "device", "host")
#: samples per spectrum recomputed in fp32 after a bf16 OpenVINO flow, those of highest bf16 density (MAP choice)
EXACT_TOP = 32
#: standardised distance to a training bound within which a bf16 sample's acceptance is decided in fp32. bf16 errors
#: of x are ~0.0005 (median; the largest 0.01 on an AMX Xeon): only samples that close to a bound can flip, and a
#: flip moves a quantile by one rank, which matters only where many samples crowd a bound. Measured on the default
#: model (the bundle verification, 24 spectra x 3 S/N, AMX Xeon), largest quantile error in fp32 half-widths by margin:
#: 0 -> 0.045, 0.0005 -> 0.044, 0.001 -> 0.037, 0.002 -> 0.024, 0.004 and 0.01 -> 0.024 (what is left is the bf16
#: arithmetic itself). 0.002 recomputes a fifth of the samples 0.01 did (session 17; at 0.01 the recomputation took
#: 40 % of the paper-size stage's time on AMX), and each bundle's verification on each CPU still decides whether bf16
#: is used at all
EXACT_MARGIN = 0.002
#: rows per OpenVINO call of the once-per-spectrum graphs (features, condition projection). The shape is fixed, so a
#: spectrum's features do not depend on its batch-mates or on where it sits in a block (tested), and the feature
#: network's weights (206 MB in fp32 at the paper's size, read from memory at every call) are read once per block:
#: one spectrum per call spent ~18 ms per spectrum on that alone, 15 % of the paper-size bf16 sampling
OPENVINO_BLOCK = 8


def latent_draws(seed: int, source_id: int, n_samples: int, n_params: int) -> np.ndarray:
    """z (n_samples, n_params) float32 for one spectrum, from (seed, source_id) only: its latent stream
    (``spectra.contracts.streams.LATENT``), independent of the noise of a survey simulated with the same seed."""
    rng = stream_rng(seed, source_id, LATENT)
    return rng.standard_normal((n_samples, n_params), dtype=np.float32)


class OnnxPosterior:
    """The bundle's graphs in ONNX Runtime sessions, created once and reused.

    Arguments:
        bundle: a loaded :class:`~runtime.bundle.Bundle`.
        device: ``cpu``, ``cuda``, ``tensorrt`` or ``auto`` (see ``runtime.sessions``).
        threads: intra-op threads for the CPU provider (0 = ONNX Runtime's default).
        max_rows: most flow rows (spectra x samples) per inference call; bounds memory
            (~ max_rows x (2 D + width) x 4 bytes) and sets the spectra per call on a GPU.
        use_hoisted: use ``condition_projection`` + ``hoisted_flow`` (the subnets' condition term once per
            spectrum); False runs the plain ``inverse_flow`` graph (fp32 only, for comparisons).
        precision: ``auto``, ``fp32``, ``int8``, ``fp16`` or ``bf16`` (``runtime.precision``).
        force_precision: run a variant whose recorded error exceeds the tolerance.
        summary: ``device`` (summary graph), ``host`` (numpy) or ``auto`` (device on GPU providers).
        cuda_graph: capture CUDA graphs (CUDA provider; calls padded to a fixed number of spectra).
        n_samples: the samples per spectrum the run will draw (sizes TensorRT's profile and the CUDA graph).
        flow_graph: run this file as the ``precision`` variant of the hoisted flow instead of the bundle's (for
            ``export quantize``, which verifies a candidate before listing it).
        engine: ``onnxruntime`` or ``openvino`` (CPU; ``precision`` fp32 or bf16), as ``runtime.precision``
            chose it; openvino's bf16 is its precision hint on the fp32 graphs.
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int = 0, max_rows: int = 65_536,
                 use_hoisted: bool = True, precision: str = "fp32", force_precision: bool = False,
                 summary: str = "auto", cuda_graph: bool = False, n_samples: int = 4096,
                 flow_graph: str | Path | None = None, engine: str = "onnxruntime"):
        if summary not in SUMMARY_MODES:
            raise ValueError(f"summary must be one of {SUMMARY_MODES}, got {summary!r}")
        self.engine = engine
        if engine == "openvino":
            self._init_openvino(bundle, threads, max_rows, use_hoisted, precision, force_precision, summary)
            return
        import onnxruntime as ort

        self.bundle, self.manifest, self.max_rows = bundle, bundle.manifest, max_rows
        trt_cache = engine_cache_dir(bundle.sha256) if device == "tensorrt" else None
        device, providers = resolve_providers(device, cache_dir=trt_cache)
        self.device = device
        self.hoisted = use_hoisted and bundle.has_hoisted
        if flow_graph is not None:
            self.precision = precision
        else:
            self.precision = choose_precision(bundle, precision, device, force_precision) if self.hoisted else "fp32"
        if not self.hoisted and precision not in ("auto", "fp32"):
            raise BundleError(f"{bundle.path}: --precision {precision} needs the bundle's hoisted graphs")
        self.forced = self.precision != "fp32" and force_precision
        options = session_options(device, threads)

        def session(filename: str | Path, **kw):
            _, chosen = resolve_providers(device, cache_dir=trt_cache, **kw)
            return ort.InferenceSession(str(bundle.path / filename), options, providers=chosen)

        self.features_session = session(bundle.graph_path("feature_extractor").name)
        self.flow_session = session(bundle.graph_path("inverse_flow").name)
        sessions = [self.features_session, self.flow_session]
        self.spectra_per_call = 1
        self.fixed_shape = False
        self.binding = None
        if self.hoisted:
            s, d = n_samples, self.manifest.n_params
            self.spectra_per_call = 1 if self.precision == "int8" else max(1, max_rows // s)
            self.projection_session = session(HOISTED["projection"])
            proj_width = int(self.projection_session.get_outputs()[0].shape[1] or 0) or self._proj_width()
            flow_file = (Path(flow_graph).resolve() if flow_graph is not None
                         else variant_file(bundle, self.precision, "hoisted_flow", HOISTED["flow"]))
            b = self.spectra_per_call
            trt = {"z": (f"1x1x{d}", f"{b}x{s}x{d}", f"{b}x{s}x{d}"),
                   "cond_proj": (f"1x{proj_width}", f"{b}x{proj_width}", f"{b}x{proj_width}")}
            use_graph = cuda_graph and device == "cuda"
            self.fixed_shape = use_graph
            self.hoisted_session = session(flow_file, cuda_graph=use_graph, trt_profile=trt)
            on_device = summary == "device" or (summary == "auto" and device != "cpu")
            if on_device and not bundle.has_summary_graph:
                if summary == "device":
                    raise BundleError(f"{bundle.path}: no {SUMMARY} in this bundle; re-export it")
                on_device = False
            self.summary_session = session(SUMMARY, cuda_graph=use_graph) if on_device else None
            sessions += [self.projection_session, self.hoisted_session]
            sessions += [self.summary_session] if on_device else []
            self.binding = BoundFlow(self.hoisted_session, self.summary_session, d, proj_width, len(QUANTILES),
                                     device="cpu" if device == "cpu" else "cuda",
                                     fixed_batch=b if use_graph else 0)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        for sess in sessions:
            check_provider(sess, wanted, device)

    def _init_openvino(self, bundle: Bundle, threads: int, max_rows: int, use_hoisted: bool, precision: str,
                       force_precision: bool, summary: str) -> None:
        """Sessions compiled by OpenVINO on the CPU; ``precision`` is already chosen (fp32 or bf16)."""
        if precision not in ("fp32", "bf16"):
            raise BundleError(f"{bundle.path}: --engine openvino runs fp32 or bf16, not {precision}")
        if summary == "device":
            raise ValueError("--summary device needs a GPU provider; --engine openvino summarises on the host")
        self.bundle, self.manifest, self.max_rows = bundle, bundle.manifest, max_rows
        self.device, self.precision = "cpu", precision
        self.hoisted = use_hoisted and bundle.has_hoisted
        if not self.hoisted and precision != "fp32":
            raise BundleError(f"{bundle.path}: --precision {precision} needs the bundle's hoisted graphs")
        self.forced = precision != "fp32" and force_precision

        def session(filename: str, at: str = "fp32", static: bool = True) -> OpenVinoSession:
            return OpenVinoSession(bundle.path / filename, at, threads, static=static)

        # once per spectrum, so fp32 costs nothing; the flow (4096 samples per spectrum) is what bf16 speeds up
        self.features_session = session(bundle.graph_path("feature_extractor").name)
        self.flow_session = session(bundle.graph_path("inverse_flow").name)
        self.spectra_per_call, self.fixed_shape, self.binding, self.summary_session = 1, False, None, None
        self.exact_session = None
        self.exact_counts = [0, 0]  # samples recomputed in fp32, samples drawn (by bf16 flows; for benchmarks)
        if self.hoisted:
            self.projection_session = session(HOISTED["projection"])
            self.hoisted_session = session(HOISTED["flow"], precision)
            if precision != "fp32":
                self.exact_session = session(HOISTED["flow"], static=False)  # a different count per spectrum

    def _proj_width(self) -> int:
        probe = self.projection_session.run(None, {"features": np.zeros((1, self.manifest.n_features), np.float32)})
        return int(probe[0].shape[1])

    @property
    def providers(self) -> list[str]:
        """What computes the flow: ONNX Runtime's providers, or OpenVINO and the flow's precision."""
        return list((self.hoisted_session if self.hoisted else self.flow_session).get_providers())

    @property
    def summary_on_device(self) -> bool:
        return self.binding is not None and self.summary_session is not None

    @property
    def description(self) -> dict:
        """What runs, for the catalogue: device, precision (and whether forced), summary location."""
        return {"device": self.device, "engine": self.engine, "providers": self.providers, "precision": self.precision,
                "precision_forced": self.forced,
                "summary": "device graph" if self.summary_on_device else "numpy on the host",
                "spectra_per_call": self.spectra_per_call}

    def features(self, flux: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """Features (N, F) of flux (N, P) at S/N per Å (N, 1), the bundle's masked pixels set to its fill first."""
        flux = np.ascontiguousarray(self.bundle.mask_input(np.asarray(flux, dtype=np.float32)))
        snr = np.asarray(snr, dtype=np.float32).reshape(-1, 1)
        return self._run_once_per_spectrum(self.features_session, {"flux": flux, "snr": snr})

    def projection(self, features: np.ndarray) -> np.ndarray:
        return self._run_once_per_spectrum(self.projection_session, {"features": features})

    def _run_once_per_spectrum(self, session, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output of a graph taken once per spectrum: for all rows of ``feeds`` in one call, or under
        OpenVINO in blocks of ``OPENVINO_BLOCK`` rows (module docstring: one fixed shape, one kernel choice, whatever
        the batch), the last block filled up with copies of its last row."""
        if self.engine != "openvino":
            return session.run(None, feeds)[0]
        n = next(iter(feeds.values())).shape[0]
        out = []
        for start in range(0, n, OPENVINO_BLOCK):
            rows = np.arange(start, min(start + OPENVINO_BLOCK, n))
            block = np.concatenate([rows, np.full(OPENVINO_BLOCK - rows.size, rows[-1])])
            out.append(session.run(None, {k: v[block] for k, v in feeds.items()})[0][:rows.size])
        return np.concatenate(out)

    def flow(self, z: np.ndarray, features: np.ndarray, rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """x and log|det dx/dz| for rows of z with their (already repeated) features: the plain fp32 graph,
        ``rows`` (default ``max_rows``) rows per call."""
        xs, logs = [], []
        rows = rows or self.max_rows
        for start in range(0, z.shape[0], rows):
            stop = start + rows
            x, log_det = self.flow_session.run(None, {"z": z[start:stop], "features": features[start:stop]})
            xs.append(x)
            logs.append(log_det)
        return np.concatenate(xs), np.concatenate(logs)

    def hoisted_flow(self, z: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, S, D) and log|det dx/dz| (N, S) for z (N, S, D) of N spectra with features (N, F)."""
        proj = self.projection(features)
        xs, logs = [], []
        per_call = self._per_call(z.shape[1])
        for start in range(0, z.shape[0], per_call):
            stop = start + per_call
            if self.binding is None:  # openvino: the session itself, one spectrum per call
                x, log_det = self.hoisted_session.run(None, {"z": z[start:stop], "cond_proj": proj[start:stop]})
                if self.exact_session is not None:
                    self._exact_top(z[start:stop], proj[start:stop], x, log_det)
            else:
                x, log_det = self.binding.flow(z[start:stop], proj[start:stop])
            xs.append(x)
            logs.append(log_det)
        return np.concatenate(xs), np.concatenate(logs)

    def _exact_top(self, z: np.ndarray, proj: np.ndarray, x: np.ndarray, log_det: np.ndarray) -> None:
        """Recompute in fp32, in place, the ``EXACT_TOP`` samples of highest density of one spectrum (z [1, S, D])
        whose x and log_det came from a reduced-precision flow (module docstring)."""
        assert self.exact_session is not None
        density = latent_log_density(z[0], log_det[0])
        redo = self._near_bounds(x[0])
        redo[np.argpartition(-density, min(EXACT_TOP, density.size) - 1)[:EXACT_TOP]] = True
        top = np.flatnonzero(redo)
        self.exact_counts[0] += int(top.size)
        self.exact_counts[1] += int(density.size)
        x_top, log_det_top = self.exact_session.run(None, {"z": z[:, top], "cond_proj": proj})
        x[:, top], log_det[:, top] = x_top, log_det_top

    def _near_bounds(self, x: np.ndarray) -> np.ndarray:
        """Samples (S,) with a coordinate whose +-``EXACT_MARGIN`` interval (standardised units) straddles a bound."""
        a, b = self.manifest.to_physical(x - EXACT_MARGIN), self.manifest.to_physical(x + EXACT_MARGIN)
        low, high = np.minimum(a, b), np.maximum(a, b)
        lower, upper = self.manifest.lower, self.manifest.upper
        return (((low < lower) & (high >= lower)) | ((low <= upper) & (high > upper))).any(axis=1)

    def _per_call(self, n_samples: int) -> int:
        """Spectra per flow call: 1 for int8 (per-call activation scales), fixed under CUDA graphs, else as many
        as ``max_rows`` allows."""
        if self.precision == "int8" or self.fixed_shape or self.engine == "openvino":
            return self.spectra_per_call
        return max(1, self.max_rows // n_samples)

    def _latents(self, source_ids: np.ndarray, seed: int, n_samples: int) -> np.ndarray:
        return np.stack([latent_draws(seed, sid, n_samples, self.manifest.n_params) for sid in source_ids])

    def sample(self, flux: np.ndarray, snr: np.ndarray, source_ids: np.ndarray, seed: int,
               n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Physical samples (N, S, D) and network-space log densities (N, S)."""
        n, d = flux.shape[0], self.manifest.n_params
        feats = self.features(flux, snr)
        z = self._latents(source_ids, seed, n_samples)
        if self.hoisted:
            x, log_det = self.hoisted_flow(z, feats)
            log_det = log_det.reshape(-1)
        else:
            per_call = n_samples if self.engine == "openvino" else 0  # one spectrum per call (module docstring)
            x, log_det = self.flow(z.reshape(n * n_samples, d), np.repeat(feats, n_samples, axis=0), per_call)
        log_density = latent_log_density(z.reshape(n * n_samples, d), log_det.reshape(-1))
        return self.manifest.to_physical(x.reshape(n, n_samples, d)), log_density.reshape(n, n_samples)

    def posterior(self, flux: np.ndarray, snr: np.ndarray, source_ids: np.ndarray, seed: int,
                  n_samples: int) -> PosteriorSummary:
        """Summaries of N spectra: on the device when the summary graph runs there, else numpy on the host."""
        if not self.summary_on_device:
            samples, log_density = self.sample(flux, snr, source_ids, seed, n_samples)
            return summarize(samples, log_density, self.manifest.lower, self.manifest.upper)
        proj = self.projection(self.features(flux, snr))
        assert self.binding is not None  # summary_on_device implies a bound flow (__init__)
        parts = []
        per_call = self._per_call(n_samples)
        for start in range(0, flux.shape[0], per_call):
            stop = min(start + per_call, flux.shape[0])
            parts.append(self.binding.summary(self._latents(source_ids[start:stop], seed, n_samples),
                                              proj[start:stop]))
        maps, quantiles, n_valid = (np.concatenate(p) for p in zip(*parts, strict=True))
        return PosteriorSummary(maps, quantiles, n_valid, 1.0 - n_valid / n_samples)
