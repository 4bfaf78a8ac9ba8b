"""The conditional INN of Ksoll et al. (2026): a fully connected feature extractor + a FrEIA GLOW flow.

``CINN`` maps standardised targets x (13-D) to latent z given a spectrum: the spectrum (continuum-
normalised flux on the HR grid + its S/N per Å) goes through the feature extractor to the condition
c (F-D), then 16 x [fixed random permutation, GLOW affine coupling conditioned on c]. Flux and S/N
standardisation live inside the model as buffers, so an exported graph takes raw flux and S/N.

Input mask (``Config.input_mask``, ``spectra.contracts.masks``): with one, ``features`` first sets the masked pixels
to the recorded fill (``input_mask`` and ``input_fill`` buffers, set by ``set_input_mask``), so neither training, nor
evaluation, nor the exported feature graph lets those pixels carry information (their gradient is exactly 0).
Models of configs without a mask have no such buffers: runs saved before the field existed load unchanged.

Sign convention (checked against a numerical Jacobian in the tests):
``forward(x)`` returns ``(z, log|det dz/dx|)``; ``reverse(z)`` returns ``(x, log|det dx/dz|)``,
so log p(x | spectrum) = log N(z; 0, I) + log|det dz/dx| = log N(z; 0, I) - log|det dx/dz|.
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from torch import nn

from spectra.contracts.density import log_normal_constant

from .config import Config

__all__ = ["CINN", "affine_scale", "atan_clamp", "count_parameters", "torch_log_density"]


def atan_clamp(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """FrEIA multiplies this by ``clamp`` = alpha: s -> (2 alpha / pi) atan(s / alpha) (paper Sect. 3.1)."""
    return (2.0 / math.pi) * torch.atan(u / alpha)


#: bound of the affine base's log sigma: posteriors from ~e-6 to ~e+6 of the prior's standardised width
LOG_SIGMA_BOUND = 6.0


def affine_scale(raw: torch.Tensor) -> torch.Tensor:
    """log sigma of the affine base from its raw linear output: smoothly bounded to +-``LOG_SIGMA_BOUND`` (an
    arctangent, like the couplings' clamp) so that a wild feature vector early in training cannot overflow exp();
    slope 1 at 0, where training starts."""
    half_pi = 0.5 * math.pi
    return (LOG_SIGMA_BOUND / half_pi) * torch.atan(raw * (half_pi / LOG_SIGMA_BOUND))


def _mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _subnet(width: int, n_layers: int):
    def constructor(n_in: int, n_out: int) -> nn.Module:
        net = _mlp([n_in] + [width] * (n_layers - 1) + [n_out])
        # start near the identity map: the last layer outputs zeros (s = t = 0)
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
        return net

    return constructor


class CINN(nn.Module):
    """Feature extractor + conditional GLOW flow.

    Arguments:
        config: sizes (``Config.feature_layers``, ``n_blocks``, ``subnet_width``, ...).
        n_pixels: number of flux pixels P of the HR grid.
        n_params: number of targets D (13).
    """

    def __init__(self, config: Config, n_pixels: int, n_params: int):
        super().__init__()
        self.config = config
        self.n_pixels, self.n_params = n_pixels, n_params
        self.n_features = config.feature_layers[-1]
        n_inputs = config.compression or n_pixels
        self.feature_extractor = _mlp([n_inputs + 1, *config.feature_layers], config.feature_dropout)
        self.flow = Ff.SequenceINN(n_params)
        for k in range(config.n_blocks):
            self.flow.append(Fm.PermuteRandom, seed=config.permutation_seed + k)
            self.flow.append(
                Fm.GLOWCouplingBlock,
                cond=0,
                cond_shape=(self.n_features,),
                subnet_constructor=_subnet(config.subnet_width, config.subnet_layers),
                clamp=config.clamp,
                clamp_activation=partial(atan_clamp, alpha=config.clamp),
            )
        #: the affine base (``Config.affine_base``): features -> (mu, raw log sigma) of x, zero at the start, so
        #: that training begins from the plain flow
        self.base: nn.Linear | None = None
        if config.affine_base:
            self.base = nn.Linear(self.n_features, 2 * n_params)
            nn.init.zeros_(self.base.weight)
            nn.init.zeros_(self.base.bias)
        # standardisation (set from the training data by ``set_standardisation``)
        self.register_buffer("flux_mean", torch.zeros(n_inputs))  # of the coefficients when compressing
        self.register_buffer("flux_std", torch.ones(n_inputs))
        self.register_buffer("log_snr_mean", torch.zeros(1))
        self.register_buffer("log_snr_std", torch.ones(1))
        self.register_buffer("x_mean", torch.zeros(n_params))
        self.register_buffer("x_std", torch.ones(n_params))
        if config.compression:
            # flux -> principal-component coefficients (set by ``set_compression``)
            self.register_buffer("pca_mean", torch.zeros(n_pixels))
            self.register_buffer("pca_basis", torch.zeros(config.compression, n_pixels))
        if config.input_mask:
            # pixels the network never sees, and the value they get (set by ``set_input_mask``)
            self.register_buffer("input_mask", torch.zeros(n_pixels, dtype=torch.bool))
            self.register_buffer("input_fill", torch.ones(1))

    def set_input_mask(self, mask, fill: float) -> None:
        """The pixels (P,) bool to set to ``fill`` before the feature extractor (``spectra.contracts.masks``)."""
        if not self.config.input_mask:
            raise ValueError(f"config {self.config.name!r} has no input_mask: this model takes every pixel")
        self.input_mask.copy_(torch.as_tensor(mask, dtype=torch.bool).reshape(self.input_mask.shape))
        self.input_fill.fill_(float(fill))

    def set_compression(self, mean, basis) -> None:
        """The projection of :func:`training.stream.pca_basis` (mean spectrum (P,), orthonormal rows (n, P))."""
        self.pca_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.pca_basis.copy_(torch.as_tensor(basis, dtype=torch.float32))

    def set_standardisation(self, flux_mean, flux_std, log_snr_mean, log_snr_std, x_mean, x_std) -> None:
        for name, value in dict(flux_mean=flux_mean, flux_std=flux_std, log_snr_mean=log_snr_mean,
                                log_snr_std=log_snr_std, x_mean=x_mean, x_std=x_std).items():
            buffer = getattr(self, name)
            buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype).reshape(buffer.shape))

    def features(self, flux: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        """Condition c from raw continuum-normalised flux (B, P) and S/N per Å (B, 1); masked pixels (if the config
        masks) are set to the fill first, exactly (``torch.where``: a NaN there is replaced too)."""
        if self.config.input_mask:
            flux = torch.where(self.input_mask, self.input_fill.to(flux.dtype), flux)
        if self.config.compression:
            return self.features_from_coefficients((flux - self.pca_mean) @ self.pca_basis.T, snr)
        return self.features_from_coefficients(flux, snr)

    def features_from_coefficients(self, inputs: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        """Condition c from the feature extractor's raw input: flux, or its principal-component coefficients
        when the model compresses (what the training stream's workers compute, from flux already masked)."""
        f = (inputs - self.flux_mean) / self.flux_std
        s = (torch.log10(snr) - self.log_snr_mean) / self.log_snr_std
        return self.feature_extractor(torch.cat([f, s], dim=1))

    def _affine(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) [B, D] of the affine base for features c."""
        assert self.base is not None
        out = self.base(c)
        return out[:, :self.n_params], affine_scale(out[:, self.n_params:])

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised targets x -> (z, log|det dz/dx|) given features c. With an affine base the flow sees
        (x - mu(c)) / sigma(c): the posterior in units of its own location and scale."""
        if self.base is None:
            return self.flow(x, c=[c], rev=False, jac=True)
        mu, log_sigma = self._affine(c)
        z, log_det = self.flow((x - mu) * torch.exp(-log_sigma), c=[c], rev=False, jac=True)
        return z, log_det - log_sigma.sum(dim=1)

    def reverse(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent z -> (standardised x, log|det dx/dz|) given features c."""
        if self.base is None:
            return self.flow(z, c=[c], rev=True, jac=True)
        mu, log_sigma = self._affine(c)
        u, log_det = self.flow(z, c=[c], rev=True, jac=True)
        return mu + torch.exp(log_sigma) * u, log_det + log_sigma.sum(dim=1)

    def log_prob(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log p(x | c): the forward pass gives log|det dz/dx| = -log|det dx/dz|, the contract's Jacobian."""
        z, log_det = self.forward(x, c)
        return torch_log_density(z, -log_det)


def torch_log_density(z: torch.Tensor, log_jac_det: torch.Tensor) -> torch.Tensor:
    """``spectra.contracts.density.log_density`` in torch (differentiable, and traceable into the summary graph):
    log N(z; 0, I) - log|det dx/dz| over the last axis, in the dtype of ``z``. Tested equal to the contract."""
    return -0.5 * (z * z).sum(dim=-1) - (log_normal_constant(z.shape[-1]) + log_jac_det)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
