"""The posterior summary as an ONNX graph, so that it runs where the flow runs (paper Sect. 3.5, 4.1).

``posterior_summary.onnx``::

    x [B, S, D] (standardised flow output), log_jac_det [B, S], z [B, S, D]
        -> map [B, D], quantiles [B, Q, D], n_valid [B]

It is the graph form of ``runtime.posterior.summarize`` (the numpy reference, kept for tests and for bundles
without this graph) and gives the same numbers:

* physical units: ``x * x_std + x_mean``, then ``10 **`` for log10 parameters, in float64 like the reference;
* a sample is valid when every parameter is inside the training bounds and its density is finite;
* MAP: the valid sample with the highest ``log N(z; 0, I) - log_jac_det`` (float64; first of equal maxima, as
  ``numpy.argmax``);
* quantiles: numpy's default 'linear' rule over the valid samples. The samples are ordered with one TopK along
  the sample axis (float32 keys, invalid samples as +inf so they sort last), the float64 values are gathered in
  that order, and the two order statistics around rank ``(n_valid - 1) q`` are interpolated exactly as numpy's
  ``_lerp``. Ordering by float32 keys can swap two samples that differ only below float32 rounding, so the
  quantiles equal the reference to float32 rounding (tested), not always bit for bit.

Only these ~80 numbers per spectrum leave the device; the 4096 x 13 samples never do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from spectra.contracts.manifest import SUMMARY
from spectra.contracts.parameters import log10_mask
from spectra.contracts.quantiles import QUANTILES
from training.model import torch_log_density

__all__ = ["PosteriorSummaryGraph", "export_summary"]


class PosteriorSummaryGraph(nn.Module):
    """(x, log_jac_det, z) of B spectra x S samples -> (map, quantiles, n_valid); see the module docstring."""

    def __init__(self, x_mean: np.ndarray, x_std: np.ndarray, log10: np.ndarray, lower: np.ndarray,
                 upper: np.ndarray, quantiles: tuple[float, ...] = QUANTILES):
        super().__init__()
        as64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        self.register_buffer("x_mean", as64(x_mean))
        self.register_buffer("x_std", as64(x_std))
        self.register_buffer("log10", torch.as_tensor(np.asarray(log10, dtype=bool)))
        self.register_buffer("lower", as64(lower))
        self.register_buffer("upper", as64(upper))
        self.register_buffer("q", as64(quantiles)[None, :])

    def forward(self, x: torch.Tensor, log_jac_det: torch.Tensor, z: torch.Tensor):
        d = x.shape[2]
        y = x.double() * self.x_std + self.x_mean
        phys = torch.where(self.log10, torch.exp(y * math.log(10.0)), y)
        inside = ((phys >= self.lower) & (phys <= self.upper)).all(dim=2)
        log_det = log_jac_det.double()
        valid = inside & torch.isfinite(log_det)
        n_valid = valid.long().sum(dim=1)
        any_valid = n_valid > 0
        nan = torch.full_like(phys[:, 0, :], float("nan"))

        log_p = torch_log_density(z.double(), log_det)  # spectra.contracts.density, in float64
        masked = torch.where(valid, log_p, torch.full_like(log_p, float("-inf")))
        best = torch.argmax(masked, dim=1, keepdim=True)  # (B, 1), first maximum like numpy
        map_estimate = torch.gather(phys, 1, best.unsqueeze(2).expand(-1, -1, d)).squeeze(1)
        map_estimate = torch.where(any_valid.unsqueeze(1), map_estimate, nan)

        # sort along the last axis (contiguous for TopK: 5x faster than along the sample axis of [B, S, D])
        keys = torch.where(valid.unsqueeze(1), phys.float().transpose(1, 2), float("inf"))  # [B, D, S]
        _, order = torch.sort(keys, dim=2)  # TopK in ONNX; invalid samples last
        ordered = torch.gather(phys, 1, order.transpose(1, 2))
        k = n_valid.double().unsqueeze(1)  # (B, 1)
        virtual = (k - 1.0) * self.q  # numpy 'linear': (n - 1) q
        below = torch.floor(virtual)
        gamma = (virtual - below).unsqueeze(2)
        last = torch.clamp(n_valid - 1, min=0).unsqueeze(1)
        lo = torch.minimum(torch.clamp(below.long(), min=0), last)
        hi = torch.minimum(torch.clamp(below.long() + 1, min=0), last)
        a = torch.gather(ordered, 1, lo.unsqueeze(2).expand(-1, -1, d))
        b = torch.gather(ordered, 1, hi.unsqueeze(2).expand(-1, -1, d))
        diff = b - a
        quantiles = torch.where(gamma >= 0.5, b - diff * (1.0 - gamma), a + diff * gamma)  # numpy's _lerp
        quantiles = torch.where(any_valid.view(-1, 1, 1), quantiles, nan.unsqueeze(1))
        return map_estimate, quantiles, n_valid


def export_summary(manifest: dict, out_file, opset: int) -> dict:
    """Write the summary graph for the parameters, transforms and bounds of ``manifest``; its extra_graphs entry."""
    params = manifest["parameters"]
    module = PosteriorSummaryGraph(
        np.asarray(manifest["x_mean"]), np.asarray(manifest["x_std"]),
        log10_mask([p["transform"] for p in params]),
        np.array([p["lower"] for p in params], dtype=float), np.array([p["upper"] for p in params], dtype=float))
    d = len(params)
    x, z = torch.zeros(2, 5, d), torch.zeros(2, 5, d)
    log_det = torch.zeros(2, 5)
    per_sample = {0: "batch", 1: "samples"}
    dynamic = {"x": per_sample, "z": per_sample, "log_jac_det": per_sample, "map": {0: "batch"},
               "quantiles": {0: "batch"}, "n_valid": {0: "batch"}}
    torch.onnx.export(module, (x, log_det, z), str(out_file), input_names=["x", "log_jac_det", "z"],
                      output_names=["map", "quantiles", "n_valid"], dynamic_axes=dynamic, opset_version=opset,
                      dynamo=False)
    return {"file": SUMMARY, "inputs": ["x", "log_jac_det", "z"], "outputs": ["map", "quantiles", "n_valid"],
            "quantiles": list(QUANTILES),
            "description": "rejection (training bounds), MAP (highest-density valid sample) and quantiles "
                           "(numpy 'linear' rule) over the valid samples, on the execution device"}
