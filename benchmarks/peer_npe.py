"""The machine-learning peer: `sbi`'s neural posterior estimation (NPE) with a `zuko` neural spline flow,
given the same feature extractor and training budget as our ``small`` cINN.

Same inputs: the training grid's train split (``training.data.GridData`` with the run's split), noise
added as in our training (log-uniform S/N 10-1000 per Å, paper Eq. 1), input = standardised flux plus
standardised log10 S/N, targets in the same network space (log10 for v_mic, v_broad) with a uniform prior
over the training bounds (sbi rejects samples outside it, as our runtime does).
Same feature extractor: the MLP of the ``small`` config (25 201 → 256 → 128 → 64, dropout 0.3) as sbi's
``embedding_net``. Same budget: sbi trains on a fixed set of simulations, so each training star gets
``copies`` noisy copies and training stops after as many examples as our run saw (``max_epochs``) or when
the validation loss stalls for 10 epochs (our patience).

    python benchmarks/peer_npe.py train --grid GRID.h5 --run RUN --out npe.pt
    python benchmarks/peer_npe.py sample --model npe.pt --survey S.zarr --out npe_catalogue.npz
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from runtime.posterior import summarize
from spectra import schema
from training import evaluate
from training.data import GridData
from training.fit import load_run
from training.model import _mlp


def _network_bounds() -> tuple[np.ndarray, np.ndarray]:
    """The training bounds in the network's space (log10 where the schema says), as our prior box."""
    lo = np.array([p.to_network(p.lower) for p in schema.TARGETS])
    hi = np.array([p.to_network(p.upper) for p in schema.TARGETS])
    return lo, hi


def to_physical(net: np.ndarray) -> np.ndarray:
    """Network space (not standardised: sbi z-scores internally) -> physical units."""
    d = net.shape[-1]
    return evaluate.to_physical(net, np.zeros(d), np.ones(d))


def train(grid: str, run: str, out: str, copies: int = 16, seed: int = 0, max_epochs: int | None = None) -> dict:
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn
    from sbi.utils import BoxUniform

    # sbi warns that spectra have "outliers" for z-scoring (deep line cores): expected for spectra, harmless
    warnings.filterwarnings("ignore", message="Data has extreme outliers")
    _, config, _ = load_run(run)
    data = GridData(grid, config.split, config.split_seed)
    rng = np.random.default_rng(seed)
    rows = np.repeat(data.split.train, copies)
    flux, snr, _ = data.noisy_batch(rows, rng, config.snr_mode)
    x = np.concatenate([flux, np.log10(snr)], axis=1).astype(np.float32)
    theta = data.transform(data.labels[rows]).astype(np.float32)
    lo, hi = _network_bounds()
    prior = BoxUniform(torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32))
    embedding = _mlp([x.shape[1], *config.feature_layers], config.feature_dropout)
    estimator = posterior_nn("zuko_nsf", embedding_net=embedding, hidden_features=config.subnet_width,
                             num_transforms=5)
    inference = NPE(prior=prior, density_estimator=estimator, show_progress_bars=False)
    seen_by_cinn = _examples_seen(run, config)
    max_epochs = max_epochs or max(1, round(seen_by_cinn / (0.9 * len(rows))))
    torch.manual_seed(seed)
    start = time.perf_counter()
    inference.append_simulations(torch.tensor(theta), torch.tensor(x))
    estimator = inference.train(training_batch_size=config.batch_size, learning_rate=config.lr,
                                stop_after_epochs=config.patience, max_num_epochs=max_epochs)
    seconds = time.perf_counter() - start
    posterior = inference.build_posterior(estimator)
    info = {"grid": str(Path(grid).resolve()), "cinn_run": str(Path(run).resolve()), "copies": copies,
            "n_train_examples": len(rows), "max_epochs": max_epochs, "examples_seen_by_cinn": seen_by_cinn,
            "epochs_trained": int(inference.summary["epochs_trained"][-1]), "train_seconds": seconds,
            "best_validation_loss": float(inference.summary["best_validation_loss"][-1]),
            "n_parameters": int(sum(p.numel() for p in estimator.parameters())), "sbi_flow": "zuko_nsf, 5 transforms"}
    torch.save({"posterior": posterior, "info": info}, out)
    data.close()
    return info


def _examples_seen(run: str, config) -> int:
    history = json.loads((Path(run) / "history.json").read_text())
    return len(history) * config.batches_per_epoch * config.batch_size


def sample(model: str, survey: str, out: str, n_samples: int = 4096, seed: int = 0) -> dict:
    import zarr

    state = torch.load(model, weights_only=False)
    posterior = state["posterior"]
    root = zarr.open_group(survey, mode="r")
    flux, snr = root["flux"][:].astype(np.float32), root["snr"][:].astype(np.float32)
    lower = np.array([p.lower for p in schema.TARGETS])
    upper = np.array([p.upper for p in schema.TARGETS])
    maps, quants, n_valid = [], [], []
    torch.manual_seed(seed)
    start = time.perf_counter()
    for i in range(flux.shape[0]):
        x = torch.tensor(np.concatenate([flux[i], [np.log10(snr[i])]])[None], dtype=torch.float32)
        samples = posterior.sample((n_samples,), x=x, show_progress_bars=False)
        # unnormalised: the MAP does not need sbi's leakage correction (a constant, 3x the sampling cost)
        logp = posterior.log_prob(samples, x=x, norm_posterior=False).detach().numpy()
        phys = to_physical(samples.numpy().astype(float))
        summary = summarize(phys[None], logp[None], lower, upper)
        maps.append(summary.map[0])
        quants.append(summary.quantiles[0])
        n_valid.append(summary.n_valid[0])
    seconds = time.perf_counter() - start
    np.savez(out, map=np.array(maps), quantiles=np.array(quants), n_valid=np.array(n_valid),
             source_id=root["source_id"][:], seconds_per_spectrum=seconds / flux.shape[0])
    return {"seconds_per_spectrum": seconds / flux.shape[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--grid", required=True)
    p.add_argument("--run", required=True, help="the cINN run whose config, split and budget to match")
    p.add_argument("--out", required=True)
    p.add_argument("--copies", type=int, default=16)
    p.add_argument("--max-epochs", type=int, help="default: as many examples as the cINN run saw")
    p = sub.add_parser("sample")
    p.add_argument("--model", required=True)
    p.add_argument("--survey", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=4096)
    args = parser.parse_args()
    if args.command == "train":
        info = train(args.grid, args.run, args.out, copies=args.copies, max_epochs=args.max_epochs)
        print(json.dumps(info, indent=1))
    else:
        print(json.dumps(sample(args.model, args.survey, args.out, n_samples=args.samples), indent=1))


if __name__ == "__main__":
    main()
