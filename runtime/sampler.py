"""Posterior sampling with a model bundle through ONNX Runtime (numpy + onnxruntime only).

For each spectrum: features once (``feature_extractor.onnx``), then ``n_samples`` latent draws
z ~ N(0, I) from ``numpy.random.default_rng(SeedSequence([seed, source_id]))`` — so a spectrum's
samples depend on (seed, source_id) only, never on batching, chunking or workers — pushed through
``inverse_flow.onnx`` with the spectrum's features repeated, many spectra x samples per call.
Densities: log p = log N(z; 0, I) - log|det dx/dz| (network space). Summaries come from
``runtime.posterior.summarize`` in physical units.
"""

from __future__ import annotations

import math

import numpy as np

from .bundle import HOISTED, Bundle
from .posterior import PosteriorSummary, summarize
from .sessions import resolve_providers, session_options

__all__ = ["OnnxPosterior", "latent_draws"]


def latent_draws(seed: int, source_id: int, n_samples: int, n_params: int) -> np.ndarray:
    """z (n_samples, n_params) float32 for one spectrum, from (seed, source_id) only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(source_id)]))
    return rng.standard_normal((n_samples, n_params), dtype=np.float32)


class OnnxPosterior:
    """The two bundle graphs in ONNX Runtime sessions, created once and reused.

    Arguments:
        bundle: a loaded :class:`~runtime.bundle.Bundle`.
        device: ``cpu``, ``cuda``, ``tensorrt`` or ``auto`` (see ``runtime.sessions``).
        threads: intra-op threads for the CPU provider (0 = ONNX Runtime's default).
        max_rows: most flow rows (spectra x samples) per inference call; bounds memory
            (~ max_rows x (2 D + F) x 4 bytes).
        use_hoisted: use the bundle's ``condition_projection`` + ``hoisted_flow`` graphs when it has them
            (the subnets' condition term once per spectrum instead of once per sample; same results to
            float32 rounding).
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int = 0, max_rows: int = 65_536,
                 use_hoisted: bool = True):
        import onnxruntime as ort

        self.device, providers = resolve_providers(device, cache_dir=str(bundle.path / "trt_cache"))
        options = session_options(self.device, threads)
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.features_session = ort.InferenceSession(str(bundle.graph_path("feature_extractor")), options,
                                                     providers=providers)
        self.flow_session = ort.InferenceSession(str(bundle.graph_path("inverse_flow")), options,
                                                 providers=providers)
        self.hoisted = use_hoisted and bundle.has_hoisted
        sessions = [self.features_session, self.flow_session]
        if self.hoisted:
            self.projection_session = ort.InferenceSession(str(bundle.path / HOISTED["projection"]), options,
                                                           providers=providers)
            self.hoisted_session = ort.InferenceSession(str(bundle.path / HOISTED["flow"]), options,
                                                        providers=providers)
            sessions += [self.projection_session, self.hoisted_session]
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        for session in sessions:
            if session.get_providers()[0] != wanted:
                raise RuntimeError(f"ONNX Runtime gave {session.get_providers()} instead of {wanted}")
        self.max_rows = max_rows

    @property
    def providers(self) -> list[str]:
        return self.flow_session.get_providers()

    def features(self, flux: np.ndarray, snr: np.ndarray) -> np.ndarray:
        return self.features_session.run(None, {"flux": np.ascontiguousarray(flux, dtype=np.float32),
                                                "snr": np.asarray(snr, dtype=np.float32).reshape(-1, 1)})[0]

    def flow(self, z: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x and log|det dx/dz| for rows of z with their (already repeated) features, in bounded calls."""
        xs, logs = [], []
        for start in range(0, z.shape[0], self.max_rows):
            stop = start + self.max_rows
            x, log_det = self.flow_session.run(None, {"z": z[start:stop], "features": features[start:stop]})
            xs.append(x)
            logs.append(log_det)
        return np.concatenate(xs), np.concatenate(logs)

    def hoisted_flow(self, z: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, S, D) and log|det dx/dz| (N, S) for z (N, S, D) of N spectra with features (N, F)."""
        proj = self.projection_session.run(None, {"features": features})[0]
        per_call = max(1, self.max_rows // z.shape[1])
        xs, logs = [], []
        for start in range(0, z.shape[0], per_call):
            stop = start + per_call
            x, log_det = self.hoisted_session.run(None, {"z": z[start:stop], "cond_proj": proj[start:stop]})
            xs.append(x)
            logs.append(log_det)
        return np.concatenate(xs), np.concatenate(logs)

    def sample(self, flux: np.ndarray, snr: np.ndarray, source_ids: np.ndarray, seed: int,
               n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Physical samples (N, S, D) and network-space log densities (N, S)."""
        n, d = flux.shape[0], self.manifest.n_params
        feats = self.features(flux, snr)
        z = np.stack([latent_draws(seed, sid, n_samples, d) for sid in source_ids])
        if self.hoisted:
            x, log_det = self.hoisted_flow(z, feats)
            log_det = log_det.reshape(-1)
        else:
            x, log_det = self.flow(z.reshape(n * n_samples, d), np.repeat(feats, n_samples, axis=0))
        log_density = -0.5 * np.sum(z.reshape(n * n_samples, d).astype(np.float64) ** 2, axis=1)
        log_density -= 0.5 * d * math.log(2 * math.pi) + log_det
        return self.manifest.to_physical(x.reshape(n, n_samples, d)), log_density.reshape(n, n_samples)

    def posterior(self, flux: np.ndarray, snr: np.ndarray, source_ids: np.ndarray, seed: int,
                  n_samples: int) -> PosteriorSummary:
        samples, log_density = self.sample(flux, snr, source_ids, seed, n_samples)
        return summarize(samples, log_density, self.manifest.lower, self.manifest.upper)
