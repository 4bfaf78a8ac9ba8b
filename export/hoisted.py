"""The inverse flow with the per-spectrum part of every subnet's first layer computed once.

Each GLOW subnet's first layer sees [x_half, c]: W [x_half, c] + b = W_x x_half + (W_c c + b). The bracket
depends on the spectrum only, not on the sample, yet a plain export computes it for each of the 4096
samples: with c of width 256 and subnets of width 512 that is 1/3 of the flow's arithmetic (25.8 ->
17.4 MFLOP per sample for the paper's network). Two extra graphs avoid it:

``condition_projection.onnx``  features [B, F] -> cond_proj [B, 2 * n_blocks * width]
``hoisted_flow.onnx``          z [B, S, D], cond_proj [B, K] -> x [B, S, D], log_jac_det [B, S]

The second takes the samples of B spectra as a 3-D tensor and broadcasts each spectrum's projection over
its S samples, so nothing is repeated in memory. ``HoistedInverseFlow`` re-implements FrEIA's
``SequenceINN`` reverse pass of ``PermuteRandom`` + ``GLOWCouplingBlock`` with the same weights; parity with
``CINN.reverse`` is checked by ``export verify`` like the two standard graphs.

A model with an affine base (``Config.affine_base``: x = mu(c) + sigma(c) * flow(z; c)) appends its per-spectrum
(mu, raw log sigma) [B, 2 D] to cond_proj, and the hoisted flow applies the affine last: the graphs' inputs and
outputs, and so the runtime, are the same for both kinds of model. The affine is elementwise (Mul, Add, Exp):
ONNX Runtime's dynamic int8 quantisation leaves it in fp32, so the quantised flow works in the posterior's units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.model import CINN, affine_scale

__all__ = ["ConditionProjection", "HoistedInverseFlow", "hoisted_modules"]


def _blocks(model: CINN):
    """[(permutation module, GLOW block)] in forward order."""
    mods = list(model.flow.module_list)
    return [(mods[i], mods[i + 1]) for i in range(0, len(mods), 2)]


def _linears(subnet: nn.Sequential) -> list[nn.Linear]:
    return [m for m in subnet if isinstance(m, nn.Linear)]


class ConditionProjection(nn.Module):
    """features [B, F] -> concatenated W_c c + b of every subnet's first layer [B, 2 * n_blocks * width]."""

    def __init__(self, model: CINN):
        super().__init__()
        weights, biases = [], []
        for _, block in _blocks(model):
            for subnet, n_x in ((block.subnet1, block.split_len1), (block.subnet2, block.split_len2)):
                first = _linears(subnet)[0]
                weights.append(first.weight[:, n_x:])
                biases.append(first.bias)
        if model.base is not None:  # (mu, raw log sigma) of the affine base, after the subnets' projections
            weights.append(model.base.weight)
            biases.append(model.base.bias)
        self.register_buffer("weight", torch.cat(weights, dim=0).detach().clone())
        self.register_buffer("bias", torch.cat(biases, dim=0).detach().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


class HoistedInverseFlow(nn.Module):
    """z [B, S, D] and cond_proj [B, K] -> (x [B, S, D], log|det dx/dz| [B, S])."""

    def __init__(self, model: CINN):
        super().__init__()
        self.alpha = float(model.config.clamp)
        self.width = model.config.subnet_width
        self.layers = nn.ModuleList()
        perms, splits = [], []
        for perm, block in _blocks(model):
            perms.append(perm.perm_inv.detach().clone())
            splits.append((block.split_len1, block.split_len2))
            for subnet, n_x in ((block.subnet1, block.split_len1), (block.subnet2, block.split_len2)):
                linears = _linears(subnet)
                first = nn.Linear(n_x, self.width, bias=False)
                first.weight = nn.Parameter(linears[0].weight[:, :n_x].detach().clone())
                rest = nn.ModuleList([_copy(lin) for lin in linears[1:]])
                self.layers.append(nn.ModuleList([first, rest]))
        for k, p in enumerate(perms):
            self.register_buffer(f"perm_inv_{k}", p)
        self.splits = splits
        self.n_params = model.n_params
        self.affine = model.base is not None
        self.base_offset = 2 * len(splits) * self.width  # where (mu, raw log sigma) start in cond_proj

    def _subnet(self, index: int, u: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        first, rest = self.layers[index]
        offset = proj[:, None, index * self.width:(index + 1) * self.width]
        h = torch.relu(first(u) + offset)
        for k, layer in enumerate(rest):
            h = layer(h)
            if k < len(rest) - 1:
                h = torch.relu(h)
        return h

    def _clamp(self, s: torch.Tensor) -> torch.Tensor:
        return self.alpha * (2.0 / math.pi) * torch.atan(s / self.alpha)

    def forward(self, z: torch.Tensor, cond_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = z
        log_det = torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
        for k in reversed(range(len(self.splits))):
            n1, n2 = self.splits[k]
            x1, x2 = x[..., :n1], x[..., n1:]
            a1 = self._subnet(2 * k, x1, cond_proj)       # subnet1 on x1 -> (s1, t1) for the x2 half
            s1 = self._clamp(a1[..., :n2])
            y2 = (x2 - a1[..., n2:]) * torch.exp(-s1)
            a2 = self._subnet(2 * k + 1, y2, cond_proj)   # subnet2 on y2 -> (s2, t2) for the x1 half
            s2 = self._clamp(a2[..., :n1])
            y1 = (x1 - a2[..., n1:]) * torch.exp(-s2)
            log_det = log_det - s1.sum(-1) - s2.sum(-1)
            x = torch.cat([y1, y2], dim=-1)[..., getattr(self, f"perm_inv_{k}")]
        if self.affine:
            d, start = self.n_params, self.base_offset
            mu = cond_proj[:, None, start:start + d]
            log_sigma = affine_scale(cond_proj[:, None, start + d:start + 2 * d])
            x = mu + torch.exp(log_sigma) * x
            log_det = log_det + log_sigma.sum(-1)
        return x, log_det


def _copy(linear: nn.Linear) -> nn.Linear:
    out = nn.Linear(linear.in_features, linear.out_features)
    out.load_state_dict(linear.state_dict())
    return out


def hoisted_modules(model: CINN) -> tuple[ConditionProjection, HoistedInverseFlow]:
    return ConditionProjection(model).eval(), HoistedInverseFlow(model).eval()
