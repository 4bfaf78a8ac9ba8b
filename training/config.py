"""Model and training configurations (``paper``, ``small``, ``tiny``, or a JSON file of the same fields).

``paper`` is exactly Ksoll et al. (2026, Sect. 3): feature extractor 2048 -> 1024 -> 512 -> 256 (ReLU),
16 GLOW coupling blocks each after a fixed random permutation, subnets of three weight layers of
width 512 (in -> 512 -> 512 -> out, ReLU), clamp (2 alpha / pi) atan(s / alpha) with alpha = 1.9;
Adam beta1 = beta2 = 0.8, lr 2.299e-3, weight decay 2.34e-7, lr x 0.95 per epoch, 128 batches of
1024 per epoch, reverse loss with dz ~ N(0, 1e-5).

``small`` trains usefully in minutes on 2 CPU cores (used by the demo and the tests); ``tiny`` is
for unit tests only.

``input_mask``: the pixels the network never sees (``spectra.contracts.masks.INPUT_MASKS``: ``"model-invalid"``,
the telluric O2 band and the H-alpha core, set to the continuum before the feature extractor), or None. Every config
masks by default; runs saved before the field existed have no key and load as None (no mask), as they were trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from spectra.contracts.masks import INPUT_MASKS

__all__ = ["CONFIGS", "Config", "load_config"]


@dataclass(frozen=True)
class Config:
    name: str
    # model
    feature_layers: tuple[int, ...] = (2048, 1024, 512, 256)
    n_blocks: int = 16
    subnet_width: int = 512
    subnet_layers: int = 3  # weight layers: in -> w -> ... -> out
    feature_dropout: float = 0.0  # dropout after each hidden feature layer (not in the paper; regularises small grids)
    compression: int = 0  # > 0: project the flux on this many principal components first (training.stream.pca_basis)
    clamp: float = 1.9
    permutation_seed: int = 0
    # data
    snr_mode: str = "paper"  # "paper": the 19 discrete S/N values; "continuous": log-uniform 10-1000
    split: tuple[float, float, float] = (0.75, 0.20, 0.05)  # train, test, validation (paper Sect. 2.1)
    split_seed: int = 0
    # optimisation
    batch_size: int = 1024
    batches_per_epoch: int = 128
    epochs: int = 123
    lr: float = 2.299e-3
    betas: tuple[float, float] = (0.8, 0.8)
    weight_decay: float = 2.34e-7
    lr_decay: float = 0.95
    reverse_loss_weight: float = 1.0
    reverse_noise: float = 1e-5  # variance of dz in Eq. 8
    patience: int = 15  # early stopping: epochs without validation improvement
    min_delta: float = 1e-3
    val_batches: int = 8
    seed: int = 0
    # data: "grid" (noisy copies of a grid's spectra) or "stream" (fresh emulated stars every batch, training.stream)
    data: str = "grid"
    stream_stars: int = 64  # stream: new stars per batch (batch_size = stream_stars x stream_copies)
    stream_copies: int = 8  # stream: noisy copies of each star (independent S/N and noise)
    # stream: each set of new stars serves this many consecutive batches with fresh S/N and noise (StreamSpec.reuse)
    stream_reuse: int = 1
    pca_stars: int = 3072  # stream + compression: noiseless emulated stars the principal components come from
    model_error: bool = False  # stream: add the emulator's validation-star residuals (random one per star)
    # stream + model_error: draw each star's residual from the k validation stars nearest to it in T_eff, log g and
    # [Fe/H] (scaled by the prior's ranges), so a dwarf does not carry a cool giant's TiO error; 0: from any star
    model_error_neighbours: int = 0
    # stream + model_error: shrink each drawn residual (its pattern from any validation star) to the median rms of
    # the k validation stars nearest to the star it is added to, where that is smaller: a warm dwarf no longer
    # carries a cool giant's 3-15 % TiO error, only errors of its neighbours' size (~0.1 %); 0: the residual as drawn
    model_error_amplitude_neighbours: int = 0
    lr_schedule: str = "exponential"  # "exponential" (lr x lr_decay per epoch) or "onecycle" (over all epochs)
    # pixels set to the continuum before the network sees them (spectra.contracts.masks.INPUT_MASKS), or None
    input_mask: str | None = "model-invalid"
    # an affine base conditioned on the spectrum, x = mu(c) + sigma(c) * flow(z; c) (training.model.CINN): the flow
    # then works in units of each posterior's own location and scale
    affine_base: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_mask is not None and self.input_mask not in INPUT_MASKS:
            raise ValueError(f"config {self.name!r}: input_mask {self.input_mask!r} is not defined; choose one of "
                             f"{', '.join(INPUT_MASKS)} or null (no mask)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


PAPER = Config(name="paper")
# Trained on a few hundred base spectra, the paper-style feature extractor memorises the training stars within
# two epochs (validation loss up 20x by epoch 7 on a 512-spectrum grid); dropout 0.3 and weight decay 1e-3 keep
# it generalising (validation loss still falling at epoch 2, measured on the same grid).
SMALL = Config(
    name="small",
    feature_layers=(256, 128, 64),
    n_blocks=8,
    subnet_width=128,
    feature_dropout=0.3,
    weight_decay=1e-3,
    snr_mode="continuous",
    batch_size=128,
    batches_per_epoch=64,
    epochs=60,
    lr=1e-3,
    patience=10,
    val_batches=4,
)
TINY = replace(SMALL, name="tiny", feature_layers=(32, 16), n_blocks=2, subnet_width=32, feature_dropout=0.0,
               batch_size=16, batches_per_epoch=4, epochs=3, val_batches=2, patience=100)
CONFIGS = {c.name: c for c in (PAPER, SMALL, TINY)}


def load_config(name_or_path: str, **overrides) -> Config:
    """A named config or a JSON file of :class:`Config` fields, with keyword overrides (None = keep)."""
    if name_or_path in CONFIGS:
        config = CONFIGS[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"config {name_or_path!r} is neither one of {sorted(CONFIGS)} nor a JSON file")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(Config)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown config field(s) {sorted(unknown)}")
        for key in ("feature_layers", "split", "betas"):
            if key in data:
                data[key] = tuple(data[key])
        config = Config(**data)
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
