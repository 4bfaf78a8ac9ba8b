"""The training loop: maximum likelihood + reverse loss, Adam, exponential lr decay, early stopping, resume.

Loss per batch (paper Eqs. 7, 8), per target dimension D:
    L_ML  = mean(|z|^2 / 2 - log|det dz/dx|) / D
    L_rev = mean((x - g(f(x; c) + dz; c))^2),   dz ~ N(0, reverse_noise * I)
    L     = L_ML + reverse_loss_weight * L_rev

Reproducibility and resume: batches, noise and dz of epoch e come from generators seeded with
(seed, e) only, and a checkpoint (model, optimiser, scheduler, history, early-stopping state) is written
atomically after every epoch. A run stopped at any point and resumed from its last checkpoint
therefore ends in the same state as an uninterrupted run (tested).

Outputs in the run folder: ``config.json``, ``checkpoint.pt`` (latest), ``best.pt`` (best validation
loss: what evaluation and export use), ``history.json`` and ``loss.png``.

Input mask: the config's ``input_mask`` (``spectra.contracts.masks``) is computed once on the training pixels, set
into the model (``CINN.set_input_mask``: the grid path masks there) and, for the stream, handed to its workers by
name (they mask before projecting); its description is recorded in ``run.json`` (``input_mask``), which ``export``
copies into the bundle's manifest. Runs saved before the field existed load with ``input_mask`` None (no mask).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spectra.common.scratch import written_atomically
from spectra.contracts.conventions import software_version
from spectra.contracts.masks import input_mask

from .config import Config
from .data import SNR_RANGE, GridData
from .model import CINN, count_parameters

__all__ = ["DivergenceError", "FitResult", "StepGuard", "fit", "load_run", "resolve_device", "save_untrained_run"]


class DivergenceError(RuntimeError):
    """The loss or the gradients became NaN/inf: training stops with the last good checkpoint kept."""


#: a batch whose gradient norm exceeds this many times the median of the last ``SPIKE_WINDOW`` accepted ones (once
#: ``SPIKE_WARMUP`` are known), or whose loss or gradient is not finite, is skipped: no optimiser step
SPIKE_FACTOR = 50.0
SPIKE_WINDOW = 64
SPIKE_WARMUP = 16
#: this many skipped batches in a row (or an epoch's worth, if fewer) end the fit (DivergenceError): the model itself
#: has gone bad, not one batch
MAX_SKIPPED_IN_A_ROW = 10


class StepGuard:
    """Which batches may move the weights.

    Why: a rare training example (a fresh emulated star whose features land where the affine base's scale is tiny)
    gives its batch a loss of 1e4-1e13 nats. Clipped to norm 1e3, its gradient still fills Adam's second-moment
    estimates, and at a higher learning rate one such batch went to an infinite gradient norm (epoch 3 of a
    56-epoch run, session 18) where the 24-epoch runs had only survived theirs. Skipping such a batch costs 512
    examples of an unlimited stream. The recent norms are part of the checkpoint, so a resumed fit decides as an
    uninterrupted one does."""

    def __init__(self, norms: list[float] | None = None):
        self.norms: deque[float] = deque(norms or [], maxlen=SPIKE_WINDOW)
        self.in_a_row = 0

    def accept(self, loss: float, norm: float) -> bool:
        ok = math.isfinite(loss) and math.isfinite(norm) and (
            len(self.norms) < SPIKE_WARMUP or norm <= SPIKE_FACTOR * statistics.median(self.norms))
        if ok:
            self.norms.append(norm)
            self.in_a_row = 0
        else:
            self.in_a_row += 1
        return ok


@dataclass
class FitResult:
    run: Path
    epochs_done: int
    best_epoch: int
    best_val: float
    stopped_early: bool
    seconds: float
    n_parameters: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def _epoch_seed(seed: int, epoch: int) -> list[int]:
    return [seed, epoch, 1_000_003]


def _batch_loss(model: CINN, flux, snr, x, config: Config, generator: torch.Generator):
    # the stream's workers deliver the compressed inputs already; a grid delivers pixels
    c = model.features_from_coefficients(flux, snr) if config.data == "stream" else model.features(flux, snr)
    z, log_det = model(x, c)
    nll = (0.5 * (z**2).sum(dim=1) - log_det).mean() / model.n_params
    if config.reverse_loss_weight > 0:
        dz = math.sqrt(config.reverse_noise) * torch.randn(z.shape, generator=generator).to(z.device)
        x_rec, _ = model.reverse(z + dz, c)
        rev = ((x - x_rec) ** 2).mean()
    else:
        rev = torch.zeros((), device=x.device)
    return nll, rev


def _atomic_save(obj, path: Path) -> None:
    """Checkpoints are written whole under a scratch name of ours, then renamed (``spectra.common.scratch``)."""
    with written_atomically(path) as tmp:
        torch.save(obj, tmp)


def _validation_batches(data, config: Config) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed noisy validation batches (same stars and noise every epoch, so epochs compare)."""
    if config.data == "stream":  # stars of their own stream (epoch 2**31 - 1), never a training batch
        return list(data.batches([[2**31 - 1, k] for k in range(config.val_batches)]))
    rng = np.random.default_rng([config.seed, 424242])
    out = []
    for _ in range(config.val_batches):
        rows = rng.choice(data.split.val, size=min(config.batch_size, 4 * data.split.val.size))
        out.append(data.noisy_batch(rows, rng, config.snr_mode))
    return out


def _train_batches(data, config: Config, epoch: int, rng: np.random.Generator):
    """The epoch's training batches (flux or coefficients, S/N, standardised targets), in order."""
    if config.data == "stream":
        yield from data.batches([[epoch, b] for b in range(config.batches_per_epoch)])
        return
    for _ in range(config.batches_per_epoch):
        rows = rng.choice(data.split.train, size=config.batch_size)
        yield data.noisy_batch(rows, rng, config.snr_mode)


def _validation_loss(model: CINN, batches, config: Config, device: torch.device) -> float:
    """Mean loss on the fixed validation batches."""
    gen = torch.Generator().manual_seed(config.seed + 99)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for arrays in batches:
            flux, snr, x = (torch.from_numpy(a).to(device) for a in arrays)
            nll, rev = _batch_loss(model, flux, snr, x, config, gen)
            total += float(nll + config.reverse_loss_weight * rev)
    model.train()
    return total / config.val_batches


def _input_mask(config: Config, wavelength: np.ndarray) -> tuple[np.ndarray | None, dict | None]:
    """(mask, its description for run.json and the manifest) of the config's ``input_mask`` on the training pixels;
    (None, None) for a config without one."""
    if not config.input_mask:
        return None, None
    return input_mask(wavelength, config.input_mask)


def _stream_model(emulator: str | Path, config: Config, out: Path, workers: int, progress: bool, state):
    """(EmulatedData, model with its compression and standardisation) for a stream run; the principal components
    are kept in the run folder (``pca.npz``) so that a resumed run projects exactly as before."""
    from .stream import EmulatedData, StreamSpec, pca_basis

    model_error = None
    if config.model_error:  # the emulator's error on its validation stars (and their labels), kept with the run
        from .emulator import validation_stars

        model_error = out / "model_error.npy"
        if not model_error.exists() or not (out / "model_error_labels.npy").exists():
            labels, residuals = validation_stars(emulator)
            np.save(model_error, residuals)
            np.save(out / "model_error_labels.npy", labels)
    spec = StreamSpec(str(Path(emulator).resolve()), config.stream_stars, config.stream_copies, SNR_RANGE, config.seed,
                      str(model_error) if model_error else None, config.input_mask,
                      config.model_error_neighbours if model_error else 0, config.stream_reuse,
                      config.model_error_amplitude_neighbours if model_error else 0)
    if config.stream_reuse < 1 or config.batches_per_epoch % config.stream_reuse:
        raise ValueError(f"stream_reuse must be a positive divisor of batches_per_epoch ({config.batches_per_epoch}),"
                         f" got {config.stream_reuse}")
    if config.batch_size != spec.batch_size:
        raise ValueError(f"stream runs need batch_size = stream_stars x stream_copies = {spec.batch_size}, "
                         f"got {config.batch_size}")
    projection = None
    if config.compression:
        path = out / "pca.npz"
        if not path.exists():
            mean, basis, singular = pca_basis(spec, config.pca_stars, config.compression, workers, progress)
            np.savez(path, mean=mean, basis=basis, singular=singular)
        saved = np.load(path)
        projection = (saved["mean"], saved["basis"])
    data = EmulatedData(spec, projection, workers)
    torch.manual_seed(config.seed)
    model = CINN(config, data.n_pixels, data.n_params)
    if projection is not None:
        model.set_compression(*projection)
    mask, record = _input_mask(config, data.wavelength)
    if mask is not None:
        model.set_input_mask(mask, record["fill"]["value"])
    if state is None:
        drawn = list(data.batches([[2**31 - 2, k] for k in range(8)]))  # their own stream again
        inputs, snr = (np.concatenate([d[i] for d in drawn]) for i in (0, 1))
        log_snr = np.log10(snr[:, 0].astype(float))
        model.set_standardisation(inputs.mean(axis=0), np.maximum(inputs.std(axis=0), 1e-3),
                                  np.array([log_snr.mean()]), np.array([log_snr.std() + 1e-8]),
                                  data.x_mean, data.x_std)
    return data, model


def build_model(config: Config, data: GridData) -> CINN:
    """A new model for a grid: its input mask and the flux statistics of the masked noisy training draws."""
    torch.manual_seed(config.seed)
    model = CINN(config, data.n_pixels, data.n_params)
    mask, record = _input_mask(config, data.wavelength)
    if mask is None:
        stats = data.flux_statistics(config.snr_mode, config.seed)
    else:
        model.set_input_mask(mask, record["fill"]["value"])
        stats = data.flux_statistics(config.snr_mode, config.seed, input_mask=mask, fill=record["fill"]["value"])
    model.set_standardisation(**stats)
    return model


def fit(grid: str | Path, config: Config, out: str | Path, device: str = "auto", restart: bool = False,
        progress: bool = True, stop_after_epochs: int | None = None, workers: int = 1) -> FitResult:
    """Train (or resume) a cINN on ``grid`` into the run folder ``out``.

    With ``config.data == "stream"``, ``grid`` is an emulator run folder and every batch is fresh emulated stars
    (``training.stream``), made by ``workers`` processes ahead of the optimiser.
    ``stop_after_epochs`` ends the call after that many epochs *of this call* (used to test resume).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    cores = len(os.sched_getaffinity(0))
    # a stream's worker processes keep their cores busy: the optimiser gets what is left (at least one)
    torch.set_num_threads(max(1, cores - (workers if config.data == "stream" and workers > 1 else 0)))
    checkpoint_path = out / "checkpoint.pt"
    resume = checkpoint_path.exists() and not restart
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False) if resume else None
    # checkpoints saved before these fields existed: no mask, no affine base, no star reuse. The name is a label,
    # not a setting: a recipe renamed (an experiment promoted to the default) resumes or leaves its finished run.
    defaults = {"input_mask": None, "affine_base": False, "stream_reuse": 1}
    if state is not None and {**defaults, **state["config"], "name": config.name} != asdict(config):
        raise ValueError(f"{out} holds a run with another config; use --restart or another --out")
    if config.data == "stream":
        data, model = _stream_model(grid, config, out, workers, progress, state)
    else:
        data = GridData(grid, config.split, config.split_seed)
        model = build_model(config, data) if state is None else CINN(config, data.n_pixels, data.n_params)
    _, mask_record = _input_mask(config, data.wavelength)
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay)
    if config.lr_schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, pct_start=0.1,
                                                        total_steps=config.epochs * config.batches_per_epoch)
    elif config.lr_schedule == "exponential":
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=config.lr_decay)
    else:
        raise ValueError(f"lr_schedule must be 'exponential' or 'onecycle', got {config.lr_schedule!r}")
    per_batch = config.lr_schedule == "onecycle"
    val_batches = _validation_batches(data, config)
    history: list[dict] = []
    best_val, best_epoch, bad_epochs, start_epoch = math.inf, -1, 0, 0
    if state is not None:
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_val, best_epoch = state["history"], state["best_val"], state["best_epoch"]
        bad_epochs, start_epoch = state["bad_epochs"], state["epoch"] + 1
    guard = StepGuard(state.get("guard_norms") if state is not None else None)
    (out / "config.json").write_text(config.to_json())
    meta = {"grid": str(Path(grid).resolve()), "grid_attrs": _plain(data.grid_attrs), "software": software_version(),
            "schema": run_schema(config, data.grid_attrs), "input_mask": mask_record,
            "torch": torch.__version__}
    if config.data == "stream":
        meta["stream"] = {"emulator": str(Path(grid).resolve()), "stars_per_batch": config.stream_stars,
                          "copies": config.stream_copies,
                          "reuse": config.stream_reuse}
    else:
        meta["split_sizes"] = {k: int(getattr(data.split, k).size) for k in ("train", "test", "val")}
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str))

    start = time.perf_counter()
    stopped_early = bad_epochs >= config.patience
    bar = tqdm(total=config.epochs, initial=start_epoch, desc=f"fit {out.name}", unit="epoch", disable=not progress)
    epoch = start_epoch - 1
    for epochs_this_call, epoch in enumerate(range(start_epoch, config.epochs), start=1):
        if stopped_early:
            break
        rng = np.random.default_rng(_epoch_seed(config.seed, epoch))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        train_nll = train_rev = 0.0
        skipped = 0
        model.train()
        for batch, arrays in enumerate(_train_batches(data, config, epoch, rng)):
            flux, snr, x = (torch.from_numpy(a).to(dev) for a in arrays)
            nll, rev = _batch_loss(model, flux, snr, x, config, gen)
            loss = nll + config.reverse_loss_weight * rev
            optimiser.zero_grad()
            norm = math.nan
            if torch.isfinite(loss):
                loss.backward()
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e3))
            if guard.accept(loss.item(), norm):
                optimiser.step()
                train_nll += float(nll.detach())
                train_rev += float(rev.detach())
            else:
                skipped += 1
                if guard.in_a_row >= min(MAX_SKIPPED_IN_A_ROW, config.batches_per_epoch):  # or a whole epoch
                    raise DivergenceError(
                        f"loss became {loss.item()} (gradient norm {norm:.3g}) at epoch {epoch}, batch {batch}, the "
                        f"{guard.in_a_row}th skipped batch in a row (lr {scheduler.get_last_lr()[0]:.3g}); the last "
                        f"good state is in {checkpoint_path}. Lower the learning rate or check the grid.")
            if per_batch:  # the schedule follows the batches, taken or skipped: the run's length is fixed
                scheduler.step()
        if not per_batch:
            scheduler.step()
        val = _validation_loss(model, val_batches, config, dev)
        taken = max(config.batches_per_epoch - skipped, 1)
        record = {"epoch": epoch, "train_nll": train_nll / taken, "train_rev": train_rev / taken,
                  "skipped_batches": skipped, "val_loss": val,
                  "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - start}
        history.append(record)
        if val < best_val - config.min_delta:
            best_val, best_epoch, bad_epochs = val, epoch, 0
            _atomic_save({"model": model.state_dict(), "config": asdict(config), "epoch": epoch,
                          "val_loss": val, "meta": meta}, out / "best.pt")
        else:
            bad_epochs += 1
        stopped_early = bad_epochs >= config.patience
        _atomic_save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                      "scheduler": scheduler.state_dict(), "history": history, "best_val": best_val,
                      "best_epoch": best_epoch, "bad_epochs": bad_epochs, "epoch": epoch,
                      "guard_norms": list(guard.norms),
                      "config": asdict(config)}, checkpoint_path)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        bar.set_postfix(train=f"{record['train_nll']:.3f}", val=f"{val:.3f}", best=best_epoch, skipped=skipped)
        bar.update(1)
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
    bar.close()
    plot_history(history, out / "loss.png")
    data.close()
    return FitResult(out, len(history), best_epoch, best_val, stopped_early, time.perf_counter() - start,
                     count_parameters(model))


def run_schema(config: Config, grid_attrs: dict) -> dict:
    """The schema this run is trained for (``spectra.schema.training_schema``): targets and bounds as they
    are now, the S/N range of ``config.snr_mode`` and the grid's continuum convention."""
    from spectra.contracts.conventions import continuum_kind
    from spectra.schema import training_schema

    values = "log-uniform 10-1000" if config.snr_mode == "continuous" else "paper's 19 values"
    return training_schema(continuum_kind(grid_attrs), SNR_RANGE, values)


def _plain(attrs: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool)) else str(v)) for k, v in attrs.items()}


def plot_history(history: list[dict], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(epochs, [h["train_nll"] for h in history], label="train: ML loss (Eq. 7) / D")
    axes[0].plot(epochs, [h["val_loss"] for h in history], label="validation: total loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    axes[1].semilogy(epochs, [max(h["train_rev"], 1e-12) for h in history], label="train: reverse loss (Eq. 8)")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_untrained_run(config: Config, n_pixels: int, n_params: int, out: str | Path, perturb: float = 0.0,
                       seed: int = 0) -> tuple[CINN, Path]:
    """A run folder holding an untrained model (e.g. the paper-size network for export parity and speed
    benchmarks, where the weights do not matter). ``perturb`` adds N(0, perturb) to the flow weights (and the
    affine base's) so the flow is not the identity it starts as."""
    torch.manual_seed(seed)
    model = CINN(config, n_pixels, n_params)
    mask_record = None
    if config.input_mask:  # the mask of the HR pixels, the only pixels an untrained run is made for
        from spectra.wavegrid import hr_grid

        wave = hr_grid().wave
        if wave.size != n_pixels:
            raise ValueError(f"config {config.name!r} masks pixels of the HR grid ({wave.size}), not of {n_pixels} "
                             "pixels: give a config with input_mask None")
        mask, mask_record = input_mask(wave, config.input_mask)
        model.set_input_mask(mask, mask_record["fill"]["value"])
    if perturb:
        with torch.no_grad():
            base = list(model.base.parameters()) if model.base is not None else []
            for p in [*model.flow.parameters(), *base]:
                if p.is_floating_point():
                    p.add_(perturb * torch.randn_like(p))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_save({"model": model.state_dict(), "config": asdict(config), "epoch": None}, out / "best.pt")
    meta = {"grid": "", "untrained": True, "schema": run_schema(config, {}), "input_mask": mask_record}
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    return model, out


def recorded_schema(run: str | Path, meta: dict, n_params: int, use: str) -> dict:
    """The schema ``run`` was trained with (parameters, labels, units, transforms, bounds, S/N range, continuum) as
    its run.json recorded it: ``spectra.schema`` may have changed since, and its live targets would mis-transform,
    mis-bound and mislabel this network's outputs. ``use``: what the caller needs it for, for the error message."""
    recorded = meta.get("schema")
    if not recorded or not recorded.get("parameters"):
        raise ValueError(f"{run}/run.json records no training schema (parameters, bounds, S/N range, continuum): "
                         f"the run predates schema recording; re-train it so that {use}")
    if len(recorded["parameters"]) != n_params:
        raise ValueError(f"{run}: the recorded schema has {len(recorded['parameters'])} parameters, "
                         f"the network {n_params}")
    return recorded


def load_run(run: str | Path, which: str = "best") -> tuple[CINN, Config, dict]:
    """Model (eval mode, CPU), config and metadata of a run folder."""
    run = Path(run)
    path = run / f"{which}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} a training run folder (training fit --out)?")
    state = torch.load(path, map_location="cpu", weights_only=False)
    data = {"input_mask": None, **state["config"]}  # runs saved before the field existed: no mask
    for key in ("feature_layers", "split", "betas"):
        data[key] = tuple(data[key])
    config = Config(**data)
    n_pixels = state["model"].get("pca_mean", state["model"]["flux_mean"]).numel()
    n_params = state["model"]["x_mean"].numel()
    model = CINN(config, n_pixels, n_params)
    model.load_state_dict(state["model"])
    model.eval()
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    meta["epoch"] = state.get("epoch")
    return model, config, meta
