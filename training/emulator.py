"""Spectral emulator: stellar labels -> the normalised, unrotated 4MOST HR spectrum (The Payne-style network).

PySME costs seconds per spectrum; an emulator trained on a few thousand PySME spectra makes new ones in
microseconds, so a cINN can be trained on an unlimited stream of labels drawn from the prior (Ting et al. 2019;
GALAH DR4 interpolates SME spectra the same way).

* Inputs: every grid label except v_broad (:data:`EMULATOR_INPUTS`: T_eff, log g, [Fe/H], v_mic and the 21
  [X/Fe]), in physical units. Each is transformed as in ``spectra.schema`` (log10 for T_eff) and scaled to
  [-1, 1] by its training bounds inside the model.
* Output: flux on the grid's pixels = the training set's mean spectrum + an MLP's correction: either one weight
  per pixel in the output layer (``basis=0``), or the MLP's ``basis`` coefficients times the leading principal
  components of the training spectra (``basis>0``). The basis costs nothing in accuracy (256 components rebuild
  held-out PySME spectra to 0.036 % rms median, 384 to 0.026 %) and makes a training step ~50x cheaper, since
  the loss is taken on the coefficients (the basis is orthonormal, so coefficient error = pixel error): long
  training, the emulator's main need, becomes affordable on a CPU.
* v_broad is not the emulator's job: spectra are synthesised unrotated (``spectra grid --unrotated``) and
  rotated afterwards by ``spectra.forward.rotation.Rotator``, a convolution that commutes with the line-spread
  functions.
* Pixels: those of the training grids, margin included. An emulator trained on grids stored with a wavelength
  margin (``spectra.wavegrid.hr_grid(2)``, 25 360 pixels) outputs the margin too, unlike every other reader of such
  grids, which crops to the 25 200 HR pixels: its output is always rotated before use (the fresh training stream,
  ``emulate-grid``, the information limit, and the runtime's re-simulation, ``runtime.resim``, which rotates it by
  the MAP v_broad), and the margin exists so that this rotation sees real spectrum beyond the window edges; cropped
  first, the outer v_broad/c x λ (up to 2.2 Å) of each window would again see a repeated edge value. Each consumer
  rotates with ``spectra.forward.rotation.hr_rotator`` (on the margin, then the crop), so what comes after (noise,
  continuum, the network) still sees the HR pixels; the error table (:func:`evaluate_emulator`) is measured on the
  HR pixels, those a bundle sees. The margin costs 0.6 % more output weights.

Scaling and mean spectrum are buffers of the module, so the exported ONNX graph (``export emulator``) takes
physical labels and needs nothing else.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spectra import schema
from spectra.common.outputs import claim_report_folder
from spectra.contracts.parameters import log10_mask
from spectra.forward.margin import crop, hr_index
from spectra.forward.rotation import Rotator, hr_rotator
from spectra.stores.gridstore import GridReader

__all__ = ["EMULATOR_INPUTS", "Emulator", "EmulatorConfig", "emulate", "emulate_grid", "emulator_rotator",
           "error_table", "evaluate_emulator", "fit_emulator", "load_emulator", "load_unrotated", "pca_basis",
           "validation_residuals", "validation_stars"]

EMULATOR_INPUTS: tuple[str, ...] = tuple(p.name for p in schema.ALL_LABELS if p.name != "vbroad")


@dataclass(frozen=True)
class EmulatorConfig:
    hidden: tuple[int, ...] = (256, 256, 512)
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    basis: int = 0  # 0: one output weight per pixel; > 0: this many principal components of the training spectra
    weight_decay: float = 0.0  # AdamW's (0: Adam)
    schedule: str = "cosine"  # "cosine" decay from lr, or "onecycle" (5 % warm-up to lr, then annealing)
    val_fraction: float = 0.1
    seed: int = 0
    log_every: int = 100
    members: int = 1  # networks averaged (an ensemble), each trained alone on the same split and basis
    # > 1: a step's gradient norm is clipped to this many times the median of the previous CLIP_WINDOW steps'
    # (:class:`SpikeGuard`); 0: no clipping (the recipe up to session 21)
    clip_factor: float = 0.0

    def __post_init__(self):
        if not (self.clip_factor == 0 or self.clip_factor > 1):
            raise ValueError(f"--clip-factor = {self.clip_factor}; expected 0 (no clipping) or a factor > 1 (at or "
                             "below 1 every step would be clipped below the last and training would stall)")


#: steps whose gradient norms set the clipping level of :class:`SpikeGuard`
CLIP_WINDOW = 200
#: steps at the start of a training that are never clipped (their norms start the window)
CLIP_WARMUP = 50


class SpikeGuard:
    """Clips a gradient whose norm is more than ``factor`` times the median of the last :data:`CLIP_WINDOW`
    (nothing in the first :data:`CLIP_WARMUP` steps); a gradient that is not finite is not taken at all.

    Why: with the PCA targets, a batch now and then holds a spectrum the network fits badly (a cool giant's TiO
    forest) and its gradient is 50-100x the usual one (measured in session 22: median norm ~1e-3, such a step 0.26).
    Adam then takes a full-size step in that direction and inflates its second moments; in one run the validation
    rms went from 0.42 to 1.0 % and ended at 0.29 % instead of ~0.19 %. A fixed clipping norm would depend on the
    data's scale; a multiple of the recent median does not, and leaves ordinary steps alone."""

    def __init__(self, factor: float):
        self.factor = factor
        self.norms: deque[float] = deque(maxlen=CLIP_WINDOW)  # the recent steps' norms, spikes clipped
        self.clipped = 0
        self.skipped = 0

    def __call__(self, parameters) -> bool:
        """Clip the gradients of ``parameters`` in place; False when the step must not be taken (not finite)."""
        limit = (self.factor * float(np.median(self.norms))
                 if self.factor > 0 and len(self.norms) >= CLIP_WARMUP else float("inf"))
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, limit))
        if not np.isfinite(norm):
            self.skipped += 1
            return False
        if norm > limit:
            self.clipped += 1
        self.norms.append(min(norm, limit))  # a spike does not raise the level that judges the next one
        return True


def member_seed(seed: int, member: int) -> int:
    """Batch-order seed of ensemble member ``member``: ``seed`` itself for the first (a one-member emulator is
    the same network as before ensembles existed), an independent stream of (seed, member) for the others."""
    return seed if member == 0 else int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


class Emulator(nn.Module):
    """Physical labels (B, len(EMULATOR_INPUTS)) -> flux (B, P).

    ``n_basis`` > 0: the MLP gives that many coefficients of the buffer ``basis`` (n_basis, P), the principal
    components of the training spectra scaled by :func:`pca_basis` (filled in by :func:`fit_emulator`, or by
    ``load_state_dict``).

    ``members`` > 1: that many MLPs (``nets``) whose outputs are averaged. With a few thousand PySME spectra in a
    25-label space the emulator's error is mostly variance (its training error is half its validation error), and
    independently trained networks err differently where the data are thin; one averaged output is still one
    graph for export and for every consumer."""

    def __init__(self, n_pixels: int, hidden: tuple[int, ...] = (256, 256, 512),
                 mean_flux: np.ndarray | None = None, n_basis: int = 0, members: int = 1):
        super().__init__()
        params = [schema.parameter(n) for n in EMULATOR_INPUTS]
        lower = np.array([float(p.to_network(p.lower)) for p in params])
        upper = np.array([float(p.to_network(p.upper)) for p in params])
        self.register_buffer("centre", torch.tensor((lower + upper) / 2, dtype=torch.float32))
        self.register_buffer("half_range", torch.tensor((upper - lower) / 2, dtype=torch.float32))
        self.register_buffer("log10_mask", torch.from_numpy(log10_mask([p.transform for p in params])))
        mean = np.ones(n_pixels) if mean_flux is None else np.asarray(mean_flux, dtype=float)
        self.register_buffer("mean_flux", torch.tensor(mean, dtype=torch.float32))
        self.n_basis = int(n_basis)
        if self.n_basis:
            self.register_buffer("basis", torch.zeros(self.n_basis, n_pixels))
        if members < 1:
            raise ValueError(f"members = {members}; an emulator has at least one network")
        self.nets = nn.ModuleList(_mlp([len(EMULATOR_INPUTS), *hidden], self.n_basis or n_pixels)
                                  for _ in range(members))

    def scale(self, labels: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log10_mask, torch.log10(torch.clamp(labels, min=1e-6)), labels)
        return (x - self.centre) / self.half_range

    def coefficients(self, labels: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """The MLPs' output: per-pixel corrections, or the basis coefficients when ``n_basis`` > 0; averaged over
        the members, or of one ``member`` (what training fits)."""
        x = self.scale(labels)
        if member is not None:
            return self.nets[member](x)
        return torch.stack([net(x) for net in self.nets]).mean(dim=0)

    def forward(self, labels: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """Flux of the ensemble (or of one ``member``)."""
        correction = self.coefficients(labels, member)
        return self.mean_flux + (correction @ self.basis if self.n_basis else correction)


def _mlp(sizes: list[int], n_out: int) -> nn.Sequential:
    """SiLU MLP (``sizes`` = inputs and hidden widths) with a zero-initialised output layer: it starts at the mean
    spectrum."""
    layers: list[nn.Module] = []
    for n_in, n_hidden in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_hidden), nn.SiLU()]
    head = nn.Linear(sizes[-1], n_out)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(nn.Sequential(*layers), head)


def pca_basis(flux: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` leading principal components (n, P) of ``flux`` - ``mean``, each scaled by the largest
    coefficient standard deviation: the network's targets are then O(1), and the pixel error is still the
    coefficient error times one common factor (the components are orthogonal with equal norms)."""
    if not 0 < n <= min(flux.shape):
        raise ValueError(f"basis = {n} components; a set of {flux.shape[0]} spectra of {flux.shape[1]} pixels has "
                         f"at most {min(flux.shape)}")
    _, _, components = np.linalg.svd(flux - mean, full_matrices=False)
    components = components[:n]
    scale = float(((flux - mean) @ components.T).std(axis=0).max())
    return (components * scale).astype(np.float32)


def load_unrotated(paths: list[str | Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """(labels (N, len(EMULATOR_INPUTS)), flux (N, P) float32, wavelength, provenance) of the finished rows of
    unrotated grids (``spectra grid --unrotated``, or ``spectra unpack-grid`` of packed shards)."""
    labels, fluxes, provenance, wave = [], [], [], None
    for path in map(Path, paths):
        with GridReader(path) as grid:
            if grid.attrs.get("rotation") != "none":
                raise ValueError(f"{path}: rotation = {grid.attrs.get('rotation')!r}; the emulator learns unrotated "
                                 "spectra (make grids with `spectra grid --unrotated`)")
            if wave is not None and not np.array_equal(wave, grid.wavelength):
                raise ValueError(f"{path}: pixel grid differs from the first grid's")
            wave = grid.wavelength
            rows = np.flatnonzero(grid.done)
            index = [grid.label_names.index(n) for n in EMULATOR_INPUTS]
            labels.append(grid.labels[rows][:, index])
            fluxes.append(np.stack([grid.flux[int(i), :] for i in rows]).astype(np.float32))
            provenance.append({"path": str(path), "rows": int(rows.size), "seed": grid.attrs.get("seed"),
                               "engine": grid.attrs.get("engine_version"), "prior": grid.attrs.get("prior")})
    if not labels:
        raise ValueError("no grids given")
    return np.concatenate(labels), np.concatenate(fluxes), wave, provenance


def fit_emulator(grids: list[str | Path], out: str | Path, config: EmulatorConfig = EmulatorConfig(),
                 progress: bool = True) -> dict:
    """Train an emulator on ``grids`` into the folder ``out`` (``emulator.pt``, ``emulator.json``); returns the
    record written to ``emulator.json`` (config, inputs, grids, held-out validation rms, history)."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels, flux, wave, provenance = load_unrotated(grids)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(labels.shape[0])
    n_val = max(1, round(config.val_fraction * labels.shape[0]))
    val, train = order[:n_val], order[n_val:]
    if train.size < 2:
        raise ValueError(f"{labels.shape[0]} spectra are too few to train an emulator")
    torch.manual_seed(config.seed)
    mean = flux[train].mean(axis=0)
    model = Emulator(flux.shape[1], tuple(config.hidden), mean, n_basis=config.basis, members=config.members)
    x_train, y_train = torch.from_numpy(labels[train]).float(), torch.from_numpy(flux[train])
    if config.basis:  # targets: the training spectra's coefficients (the loss never touches the pixels)
        basis = pca_basis(flux[train], mean, config.basis)
        model.basis.copy_(torch.from_numpy(basis))
        norm2 = float(np.sum(basis[0].astype(float) ** 2))
        y_train = torch.from_numpy(((flux[train] - mean) @ basis.T / norm2).astype(np.float32))
    x_val, y_val = torch.from_numpy(labels[val]).float(), torch.from_numpy(flux[val])

    def val_rms(member: int | None) -> torch.Tensor:
        with torch.no_grad():
            return torch.sqrt(torch.mean((model(x_val, member) - y_val) ** 2, dim=1))

    history, start = [], time.perf_counter()
    for member in range(config.members):
        optimiser = torch.optim.AdamW(model.nets[member].parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)
        schedule = _lr_schedule(optimiser, config)
        generator = torch.Generator().manual_seed(member_seed(config.seed, member))
        guard = SpikeGuard(config.clip_factor)
        desc = f"emulator {out.name}" + (f" {member + 1}/{config.members}" if config.members > 1 else "")
        for step in tqdm(range(config.steps), desc=desc, disable=not progress):
            batch = torch.randint(0, train.size, (min(config.batch_size, train.size),), generator=generator)
            predicted = (model.coefficients if config.basis else model)(x_train[batch], member)
            loss = torch.mean((predicted - y_train[batch]) ** 2)
            optimiser.zero_grad()
            loss.backward()
            if config.clip_factor == 0 or guard(model.nets[member].parameters()):
                optimiser.step()
            schedule.step()
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                history.append({"member": member, "step": step + 1, "train_mse": float(loss.detach()),
                                "clipped_steps": guard.clipped, "skipped_steps": guard.skipped,
                                "val_rms_median": float(val_rms(member).median()),
                                "seconds": round(time.perf_counter() - start, 1)})
    ensemble_val = float(val_rms(None).median())
    torch.save({"model": model.state_dict(), "config": asdict(config), "n_pixels": flux.shape[1]},
               out / "emulator.pt")
    np.save(out / "wavelength.npy", wave)
    record = {"inputs": list(EMULATOR_INPUTS), "units": [schema.parameter(n).unit for n in EMULATOR_INPUTS],
              "bounds": [[schema.parameter(n).lower, schema.parameter(n).upper] for n in EMULATOR_INPUTS],
              "rotation": "none (apply v_broad with spectra.forward.rotation.Rotator)", "config": asdict(config),
              "grids": provenance, "n_train": int(train.size), "n_val": int(val.size),
              "val_rms_median": ensemble_val,
              "member_val_rms_median": [h["val_rms_median"] for h in history if h["step"] == config.steps],
              "cpu_seconds": round(time.perf_counter() - start, 1),
              "parameters": int(sum(p.numel() for p in model.parameters())), "history": history}
    (out / "emulator.json").write_text(json.dumps(record, indent=1))
    return record


def _lr_schedule(optimiser: torch.optim.Optimizer, config: EmulatorConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.05)
    raise ValueError(f"schedule = {config.schedule!r}; expected 'cosine' or 'onecycle'")


def load_emulator(run: str | Path) -> tuple[Emulator, dict, np.ndarray]:
    """(model in eval mode, its ``emulator.json`` record, wavelength) of a trained emulator folder."""
    run = Path(run)
    path = run / "emulator.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} an emulator folder (training emulator-fit --out)?")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = Emulator(int(state["n_pixels"]), tuple(state["config"]["hidden"]),
                     n_basis=int(state["config"].get("basis", 0)), members=int(state["config"].get("members", 1)))
    model.load_state_dict(_ensemble_names(state["model"]))
    model.eval()
    return model, json.loads((run / "emulator.json").read_text()), np.load(run / "wavelength.npy")


def _ensemble_names(state: dict) -> dict:
    """An ``emulator.pt`` saved before ensembles existed holds its one MLP as ``body`` and ``head``: the names of
    ``nets[0]`` now (a file, not the module, is what is old, so :func:`load_emulator` translates it)."""
    prefixes = {"body.": "nets.0.0.", "head.": "nets.0.1."}
    return {next((new + k[len(old):] for old, new in prefixes.items() if k.startswith(old)), k): v
            for k, v in state.items()}


def emulate(model: Emulator, labels: np.ndarray, batch: int = 256) -> np.ndarray:
    """Flux (N, P) for physical labels (N, len(EMULATOR_INPUTS)), in batches."""
    out = []
    with torch.no_grad():
        for start in range(0, labels.shape[0], batch):
            out.append(model(torch.from_numpy(np.asarray(labels[start:start + batch], dtype=np.float32))).numpy())
    return np.concatenate(out) if out else np.empty((0, model.mean_flux.numel()), dtype=np.float32)


def error_table(model: Emulator, labels: np.ndarray, flux: np.ndarray, keep: np.ndarray | None = None) -> dict:
    """Errors on held-out spectra: per-pixel |Δ| median and 99th percentile, per-spectrum rms (median, 95th
    percentile, fraction <= 0.3 %), and the per-spectrum rms by T_eff, log g and [Fe/H] bins.

    ``keep``: the emulator's output pixels that ``flux`` holds (its HR pixels when it has a margin); None: all."""
    delta = crop(emulate(model, labels), keep) - flux
    rms = np.sqrt(np.mean(delta**2, axis=1))
    names = list(EMULATOR_INPUTS)
    teff, logg, feh = (labels[:, names.index(n)] for n in ("teff", "logg", "fe_h"))
    bins = {}
    for name, values, edges in (("teff", teff, [4000, 5000, 6000, 7000]), ("logg", logg, [1, 2.5, 3.5, 5]),
                                ("fe_h", feh, [-5, -2, -1, 0.5])):
        for lo, hi in itertools.pairwise(edges):
            inside = (values >= lo) & (values <= hi)
            if inside.any():
                bins[f"{name} {lo:g}..{hi:g}"] = {"n": int(inside.sum()), "rms_median": float(np.median(rms[inside])),
                                                  "rms_p95": float(np.percentile(rms[inside], 95))}
    abs_delta = np.abs(delta)
    return {"n_spectra": int(labels.shape[0]), "pixel_abs_median": float(np.median(abs_delta)),
            "pixel_abs_p99": float(np.percentile(abs_delta, 99)), "rms_median": float(np.median(rms)),
            "rms_p95": float(np.percentile(rms, 95)), "fraction_rms_le_0.3pct": float(np.mean(rms <= 3e-3)),
            "bins": bins, "rms": rms.tolist()}


def evaluate_emulator(run: str | Path, test_grids: list[str | Path], out: str | Path, overwrite: bool = False) -> dict:
    """The error table of an emulator on held-out PySME grids, as ``emulator_errors.json`` and ``.md`` in ``out``
    (a new or empty folder, or with ``overwrite`` an earlier error report:
    ``spectra.common.outputs.claim_report_folder``; nothing else is touched)."""
    out = claim_report_folder(out, "emulator error report", "emulator_errors.json", overwrite)
    model, record, wave = load_emulator(run)
    labels, flux, test_wave, provenance = load_unrotated(test_grids)
    keep, test_keep = hr_index(wave), hr_index(test_wave)  # HR pixels: margins may differ, the HR pixels may not
    if not np.array_equal(crop(wave, keep), crop(test_wave, test_keep)):
        raise ValueError("the test grid's pixels differ from the emulator's")
    table = error_table(model, labels, crop(flux, test_keep), keep)
    table.update(emulator=str(Path(run).resolve()), test_grids=provenance, n_train=record["n_train"])
    (out / "emulator_errors.json").write_text(json.dumps(table, indent=1))
    lines = [f"# Emulator errors on {table['n_spectra']} held-out PySME spectra", "",
             f"Emulator `{table['emulator']}` trained on {record['n_train']} spectra "
             f"({', '.join(g['path'] for g in record['grids'])}); tested on "
             f"{', '.join(g['path'] for g in provenance)}.", "",
             "| per-pixel median abs | per-pixel 99th pct abs | per-spectrum rms median | rms 95th pct | "
             "fraction with rms <= 0.3 % |", "|---|---|---|---|---|",
             f"| {100 * table['pixel_abs_median']:.3f} % | {100 * table['pixel_abs_p99']:.3f} % | "
             f"{100 * table['rms_median']:.3f} % | {100 * table['rms_p95']:.3f} % | "
             f"{100 * table['fraction_rms_le_0.3pct']:.0f} % |", "", "| bin | spectra | rms median | rms 95th pct |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {100 * v['rms_median']:.3f} % | {100 * v['rms_p95']:.3f} % |"
              for k, v in table["bins"].items()]
    lines += ["", "Goal (issue 20): per-spectrum rms median <= 0.2 %, 95th percentile <= 0.5 %.", ""]
    (out / "emulator_errors.md").write_text("\n".join(lines))
    return table


def emulate_grid(run: str | Path, out: str | Path, n: int, seed: int, batch: int = 256,
                 progress: bool = True, labels_from: str | Path | None = None) -> Path:
    """A grid of ``n`` emulated spectra: labels from the grid prior (``spectra.prior.draw_labels``, Sobol ``seed``;
    prefix-stable like ``spectra grid``), the emulator's unrotated spectrum, rotated by each row's v_broad
    (``spectra.forward.rotation.hr_rotator``: on the emulator's margin if it has one) and stored on the HR pixels.
    A training set as large as wanted for the cost of a forward pass, with the emulator's errors; its attributes
    say so (``engine`` = the emulator). Resumable like any grid.

    ``labels_from``: take the finished rows' labels of that grid instead (``n`` and ``seed`` are then ignored):
    the emulator's version of a PySME set, e.g. the held-out stars with no emulator mismatch at all."""
    from tqdm.auto import tqdm

    from spectra.prior import PRIOR_VERSION, draw_labels
    from spectra.stores.gridstore import GridWriter
    from spectra.wavegrid import hr_grid

    model, record, wave = load_emulator(run)
    rotator = emulator_rotator(run, wave)
    grid = hr_grid()
    names = schema.label_names()
    if labels_from is not None:
        with GridReader(labels_from) as source:
            if source.label_names != names:
                raise ValueError(f"{labels_from}: labels {source.label_names} differ from the schema's {names}")
            labels = source.labels[np.flatnonzero(source.done)]
        n, seed = labels.shape[0], -1
    else:
        labels = draw_labels(n, seed)
    index = [names.index(name) for name in EMULATOR_INPUTS]
    prior = PRIOR_VERSION if labels_from is None else f"labels of {labels_from}"
    attrs = {"seed": seed, "prior": prior, "engine": "emulator", "engine_version": str(Path(run).resolve()),
             "emulator_training": json.dumps({k: record[k] for k in ("grids", "n_train", "val_rms_median")}),
             "linelist_sha256": "as the emulator's training grids",
             "rotation": "applied by spectra.forward.rotation.Rotator",
             "continuum": "true continuum (emulated synthesis)"}
    with GridWriter(out, n, grid, attrs) as writer:
        todo = np.flatnonzero(~writer.done)
        for a in tqdm(range(0, todo.size, batch), desc=f"emulate {Path(out).name}", disable=not progress):
            rows = todo[a:a + batch]
            flux = rotator(emulate(model, labels[rows][:, index]).astype(float), labels[rows, names.index("vbroad")])
            for i, f in zip(rows, flux, strict=True):
                writer.write_row(int(i), f, labels[i], "emulated", 0.0)
    return Path(out)


def emulator_rotator(run: str | Path, wave: np.ndarray) -> Rotator:
    """The ``spectra.forward.rotation.hr_rotator`` for the output of the emulator in ``run`` (pixels ``wave``):
    rotation on its pixels, margin included, returning the HR pixels. ValueError if they are no HR grid."""
    try:
        return hr_rotator(wave)
    except ValueError:
        raise ValueError(f"{run}: the emulator's pixel grid is not the HR grid (with or without a margin)") from None


def validation_residuals(run: str | Path) -> np.ndarray:
    """PySME − emulator (N_val, P) of the emulator's own validation stars (the split of :func:`fit_emulator`,
    never fitted): realisations of its error on stars it did not see, unrotated and on the emulator's own pixels
    (margin included), for model-error augmentation: added to its output before the rotation."""
    return validation_stars(run)[1]


def validation_stars(run: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N_val, len(EMULATOR_INPUTS)), residuals PySME − emulator (N_val, P)) of the emulator's validation
    stars: the labels let model-error augmentation draw a residual from stars like the one it is added to."""
    model, record, _ = load_emulator(run)
    labels, flux, _, _ = load_unrotated([g["path"] for g in record["grids"]])
    config = EmulatorConfig(**{**record["config"], "hidden": tuple(record["config"]["hidden"])})
    order = np.random.default_rng(config.seed).permutation(labels.shape[0])
    val = np.sort(order[:max(1, round(config.val_fraction * labels.shape[0]))])
    if val.size != record["n_val"]:
        raise ValueError(f"{run}: its training grids no longer give the recorded split ({record['n_val']} validation "
                         f"stars, now {val.size})")
    return labels[val], (flux[val] - emulate(model, labels[val])).astype(np.float32)
