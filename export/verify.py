"""Verify a bundle against the PyTorch model it came from: ONNX Runtime vs torch on the same inputs.

Checks, each on random inputs and on real (noisy) spectra of the training grid when it is available:
* ``feature_extractor.onnx`` features vs ``model.features``;
* ``inverse_flow.onnx`` x and log|det dx/dz| vs ``model.reverse`` on the same z and features;
* ``hoisted_flow.onnx`` (with ``condition_projection.onnx``) against the same reference;
* posterior MAPs: 4096 samples per spectrum through ``runtime.sampler`` (numpy + onnxruntime; the hoisted
  graphs when the bundle has them, as the runtime does) vs the
  same z through PyTorch, summarised by the same ``runtime.posterior.summarize``.
* the summary graph (``posterior_summary.onnx``, used on GPUs) against the numpy summary on the same samples.
Error measure: max over elements of |onnx - torch| / max(|torch|, 1) (relative for large values,
absolute below 1, which is the scale of the standardised outputs). fp32 must reach <= 1e-4.

Every reduced-precision variant the bundle lists is measured again against fp32 on posteriors of real grid
spectra (``export.variants.verify_variant``, in half-widths), and must pass ``runtime.precision``'s rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runtime.bundle import load_bundle
from runtime.posterior import summarize
from runtime.precision import describe_check
from runtime.sampler import OnnxPosterior, latent_draws
from spectra.contracts.density import log_density
from training.fit import load_run

__all__ = ["FP32_TOLERANCE", "VerifyReport", "verify_bundle"]

FP32_TOLERANCE = 1e-4


def _err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0)))


@dataclass
class VerifyReport:
    errors: dict[str, float] = field(default_factory=dict)
    variants: dict[str, dict] = field(default_factory=dict)
    graph_bytes: dict[str, int] = field(default_factory=dict)
    graph_nodes: dict[str, int] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.errors.values())

    @property
    def ok(self) -> bool:
        return self.worst <= FP32_TOLERANCE and all(v["passed"] for v in self.variants.values())

    def lines(self) -> list[str]:
        out = [f"{k:<36s} {v:.2e}" for k, v in self.errors.items()]
        out += [f"{name + ' variant':<36s} {describe_check(v)}: {'ok' if v['passed'] else 'FAILED'}"
                for name, v in self.variants.items()]
        out += [f"{k:<36s} {self.graph_bytes[k] / 1e6:.1f} MB, {self.graph_nodes[k]} nodes" for k in self.graph_bytes]
        return out


def _inputs(model, bundle, rng, n_random: int = 16) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    p = model.n_pixels
    sets = {"random": (rng.uniform(0.2, 1.1, (n_random, p)).astype(np.float32),
                       np.exp(rng.uniform(np.log(10), np.log(1000), (n_random, 1))).astype(np.float32))}
    grid = Path(bundle.manifest.raw["provenance"].get("grid", ""))
    if grid.is_file():
        from spectra.forward.degrade import add_noise
        from spectra.stores.gridstore import GridReader

        with GridReader(grid) as reader:
            rows = np.flatnonzero(reader.done)[:8]
            clean = reader.hr_flux(rows).astype(float)  # the HR pixels the model takes, margin or not
        snr = np.array([250.0, 50.0] * 4)[: len(rows)]
        noisy = add_noise(clean, snr, bundle.manifest.raw["pixel_grid"]["pixel_width"], rng)
        sets["grid spectra"] = (noisy.astype(np.float32), snr.reshape(-1, 1).astype(np.float32))
    return sets


def torch_posterior(model, manifest, flux: np.ndarray, snr: np.ndarray, source_ids: np.ndarray, seed: int,
                    n_samples: int):
    """The PyTorch reference of ``runtime.sampler.OnnxPosterior.posterior``: same z, same summary code."""
    n, d = flux.shape[0], model.n_params
    zs = np.stack([latent_draws(seed, i, n_samples, d) for i in source_ids])
    with torch.no_grad():
        c = model.features(torch.from_numpy(flux), torch.from_numpy(snr))
        x, log_det = model.reverse(torch.from_numpy(zs.reshape(-1, d)), c.repeat_interleave(n_samples, dim=0))
    logp = log_density(zs.reshape(-1, d), log_det.numpy().reshape(-1))
    return summarize(manifest.to_physical(x.numpy().reshape(n, n_samples, d)), logp.reshape(n, n_samples),
                     manifest.lower, manifest.upper)


def _compare_graphs(model, posterior: OnnxPosterior, sets, rng, report_errors: dict, n_samples: int) -> None:
    d = model.n_params
    for label, (flux, snr) in sets.items():
        with torch.no_grad():
            feats_t = model.features(torch.from_numpy(flux), torch.from_numpy(snr)).numpy()
        feats_o = posterior.features(flux, snr)
        report_errors[f"features [{label}]"] = _err(feats_o, feats_t)
        z = rng.standard_normal((feats_t.shape[0] * 64, d)).astype(np.float32)
        rep = np.repeat(feats_t, 64, axis=0)
        with torch.no_grad():
            x_t, logdet_t = model.reverse(torch.from_numpy(z), torch.from_numpy(rep))
        x_o, logdet_o = posterior.flow(z, rep)
        report_errors[f"inverse flow x [{label}]"] = _err(x_o, x_t.numpy())
        report_errors[f"inverse flow log_jac_det [{label}]"] = _err(logdet_o, logdet_t.numpy().reshape(-1))
        if posterior.hoisted:
            x_h, logdet_h = posterior.hoisted_flow(z.reshape(feats_t.shape[0], 64, d), feats_t)
            report_errors[f"hoisted flow x [{label}]"] = _err(x_h.reshape(-1, d), x_t.numpy())
            report_errors[f"hoisted flow log_jac_det [{label}]"] = _err(logdet_h.reshape(-1),
                                                                      logdet_t.numpy().reshape(-1))
        # MAP parity: same z per spectrum through both back-ends, same summary code
        n = min(4, flux.shape[0])
        ids = np.arange(n) + 1000
        summary_o = posterior.posterior(flux[:n], snr[:n], ids, seed=0, n_samples=n_samples)
        summary_t = torch_posterior(model, posterior.manifest, flux[:n], snr[:n], ids, 0, n_samples)
        both = np.isfinite(summary_t.map) & np.isfinite(summary_o.map)
        report_errors[f"posterior MAP [{label}]"] = _err(summary_o.map[both], summary_t.map[both]) if both.any() \
            else 0.0


def verify_bundle(bundle_path: str | Path, run: str | Path, n_samples: int = 4096, seed: int = 0,
                  grid: str | Path | None = None) -> VerifyReport:
    """Compare the bundle with its run; see the module docstring. Does not raise on large errors."""
    import onnx

    bundle = load_bundle(bundle_path)
    model, _, _ = load_run(run)
    model = model.float().eval()
    if model.n_pixels != bundle.manifest.n_pixels or model.n_params != bundle.manifest.n_params:
        raise ValueError(f"{bundle_path} does not come from {run}: shapes differ")
    rng = np.random.default_rng(seed)
    sets = _inputs(model, bundle, rng)
    report = VerifyReport()
    _compare_graphs(model, OnnxPosterior(bundle), sets, rng, report.errors, n_samples)
    if bundle.has_summary_graph:
        flux, snr = sets.get("grid spectra", sets["random"])
        ids = np.arange(flux.shape[0]) + 1
        host = OnnxPosterior(bundle, summary="host").posterior(flux, snr, ids, seed, n_samples)
        device = OnnxPosterior(bundle, summary="device").posterior(flux, snr, ids, seed, n_samples)
        report.errors["summary graph quantiles"] = _err(np.nan_to_num(device.quantiles), np.nan_to_num(host.quantiles))
        report.errors["summary graph MAP"] = _err(np.nan_to_num(device.map), np.nan_to_num(host.map))
    variants = bundle.manifest.precisions
    if variants:
        from runtime.precision import within_tolerance

        from .variants import verify_variant

        grid_path = Path(grid) if grid else Path(bundle.manifest.raw["provenance"].get("grid", ""))
        if not grid_path.is_file():
            raise FileNotFoundError(f"{bundle_path} has {', '.join(variants)} variants; verifying them needs real "
                                    f"spectra: give --grid (the training grid {str(grid_path)!r} is not here)")
        for name, variant in variants.items():
            check = verify_variant(bundle.path, name, bundle.path / variant["files"]["hoisted_flow"], grid_path)
            errors = check["verification"]
            errors["passed"] = within_tolerance(errors)
            report.variants[name] = errors
    for key in ("feature_extractor", "inverse_flow"):
        path = bundle.graph_path(key)
        report.graph_bytes[key] = path.stat().st_size
        report.graph_nodes[key] = len(onnx.load(str(path), load_external_data=False).graph.node)
    return report
