"""Posterior sampling with a model bundle through ONNX Runtime (numpy + onnxruntime only).

For each spectrum: features once (``feature_extractor.onnx``) and the subnets' condition term once
(``condition_projection.onnx``), then ``n_samples`` latent draws z ~ N(0, I) from the spectrum's own latent
stream ``SeedSequence([seed, source_id, LATENT])`` (``spectra.contracts.streams``; a simulated survey's noise has its
own tag, so z is never the noise shifted) — so a spectrum's samples depend on (seed, source_id) only, never on
batching, chunking, workers or device — pushed through the hoisted flow
(``hoisted_flow.onnx`` or its int8/fp16/bf16 variant, ``runtime.precision``), many spectra x samples per call.
Densities: log p = log N(z; 0, I) - log|det dx/dz| (network space).

Summaries (rejection, MAP, quantiles): on GPU providers by the bundle's ``posterior_summary.onnx`` on the device,
through IO binding (``runtime.binding``), so only the summaries cross to the host; on the CPU by the numpy
reference ``runtime.posterior.summarize`` (the samples are in host memory already, and numpy's sort is ~4x
faster than ONNX Runtime's CPU TopK: 1.6 against 6.9 ms per spectrum). Both give the same numbers (tested).

Latent draws stay on the host: 4096 x 13 float32 per spectrum is 0.2 MB to upload, far less than the flow's
work, and drawing them with numpy keeps the (seed, source_id) stream identical on every device.

int8 variants quantize activations dynamically (one scale per call), so the int8 flow is called one spectrum
at a time: a spectrum's result must not depend on which other spectra share its call.
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
from .posterior import PosteriorSummary, summarize
from .precision import choose_precision, variant_file
from .sessions import check_provider, engine_cache_dir, resolve_providers, session_options

__all__ = ["SUMMARY_MODES", "OnnxPosterior", "latent_draws"]

SUMMARY_MODES = ("auto", "device", "host")


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
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int = 0, max_rows: int = 65_536,
                 use_hoisted: bool = True, precision: str = "fp32", force_precision: bool = False,
                 summary: str = "auto", cuda_graph: bool = False, n_samples: int = 4096,
                 flow_graph: str | Path | None = None):
        import onnxruntime as ort

        if summary not in SUMMARY_MODES:
            raise ValueError(f"summary must be one of {SUMMARY_MODES}, got {summary!r}")
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

    def _proj_width(self) -> int:
        probe = self.projection_session.run(None, {"features": np.zeros((1, self.manifest.n_features), np.float32)})
        return int(probe[0].shape[1])

    @property
    def providers(self) -> list[str]:
        return self.flow_session.get_providers()

    @property
    def summary_on_device(self) -> bool:
        return self.binding is not None and self.summary_session is not None

    @property
    def description(self) -> dict:
        """What runs, for the catalogue: device, precision (and whether forced), summary location."""
        return {"device": self.device, "providers": self.providers, "precision": self.precision,
                "precision_forced": self.forced,
                "summary": "device graph" if self.summary_on_device else "numpy on the host",
                "spectra_per_call": self.spectra_per_call}

    def features(self, flux: np.ndarray, snr: np.ndarray) -> np.ndarray:
        return self.features_session.run(None, {"flux": np.ascontiguousarray(flux, dtype=np.float32),
                                                "snr": np.asarray(snr, dtype=np.float32).reshape(-1, 1)})[0]

    def projection(self, features: np.ndarray) -> np.ndarray:
        return self.projection_session.run(None, {"features": features})[0]

    def flow(self, z: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x and log|det dx/dz| for rows of z with their (already repeated) features: the plain fp32 graph."""
        xs, logs = [], []
        for start in range(0, z.shape[0], self.max_rows):
            stop = start + self.max_rows
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
            assert self.binding is not None  # bound in __init__ whenever the hoisted flow runs on a device
            x, log_det = self.binding.flow(z[start:stop], proj[start:stop])
            xs.append(x)
            logs.append(log_det)
        return np.concatenate(xs), np.concatenate(logs)

    def _per_call(self, n_samples: int) -> int:
        """Spectra per flow call: 1 for int8 (per-call activation scales), fixed under CUDA graphs, else as many
        as ``max_rows`` allows."""
        if self.precision == "int8" or self.fixed_shape:
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
            x, log_det = self.flow(z.reshape(n * n_samples, d), np.repeat(feats, n_samples, axis=0))
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
