"""The cINN: architecture, invertibility, log-det convention, data split, training, resume, evaluation."""

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("FrEIA")

from training.config import CONFIGS, load_config  # noqa: E402
from training.data import GridData, split_rows  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.fit import DivergenceError, fit, load_run  # noqa: E402
from training.model import CINN, count_parameters  # noqa: E402


def _randomised(model: CINN, scale: float = 0.2) -> CINN:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.flow.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn_like(p))
    return model.double()


def test_paper_config_matches_the_paper():
    model = CINN(CONFIGS["paper"], 25_200, 13)
    linear = [m for m in model.feature_extractor if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(25_201, 2048), (2048, 1024), (1024, 512), (512, 256)]
    blocks = [m for m in model.flow.module_list if type(m).__name__ == "GLOWCouplingBlock"]
    perms = [m for m in model.flow.module_list if type(m).__name__ == "PermuteRandom"]
    assert len(blocks) == 16 and len(perms) == 16
    sub = [m for m in blocks[0].subnet1 if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in sub] == [(6 + 256, 512), (512, 512), (512, 14)]
    assert blocks[0].clamp == 1.9
    assert count_parameters(model) == 67_304_000


def test_clamp_is_the_papers_atan():
    from training.model import atan_clamp

    s = torch.linspace(-50, 50, 101)
    clamped = 1.9 * atan_clamp(s, 1.9)
    assert torch.allclose(clamped, (2 * 1.9 / np.pi) * torch.atan(s / 1.9))
    assert clamped.abs().max() < 1.9


def test_flow_is_invertible():
    model = _randomised(CINN(CONFIGS["tiny"], 50, 13))
    x = torch.randn(64, 13, dtype=torch.float64)
    c = torch.randn(64, model.n_features, dtype=torch.float64)
    z, log_fwd = model(x, c)
    x_back, log_rev = model.reverse(z, c)
    assert torch.max(torch.abs(x_back - x)) < 1e-4
    assert torch.allclose(log_fwd, -log_rev, atol=1e-8)


def test_log_det_sign_against_a_numerical_jacobian():
    model = _randomised(CINN(replace(CONFIGS["tiny"], n_blocks=3), 50, 13))
    c = torch.randn(1, model.n_features, dtype=torch.float64)
    x0 = torch.randn(13, dtype=torch.float64)
    eps = 1e-6
    jac = torch.stack([(model((x0 + eps * e)[None], c)[0] - model((x0 - eps * e)[None], c)[0])[0] / (2 * eps)
                       for e in torch.eye(13, dtype=torch.float64)], dim=1)
    _, logdet_numeric = torch.linalg.slogdet(jac)
    _, log_fwd = model(x0[None], c)
    assert abs(float(log_fwd[0]) - float(logdet_numeric)) < 1e-5   # forward returns log|det dz/dx|
    z0 = model(x0[None], c)[0]
    _, log_rev = model.reverse(z0, c)
    assert abs(float(log_rev[0]) + float(logdet_numeric)) < 1e-5   # reverse returns log|det dx/dz|


def test_split_never_puts_a_base_spectrum_on_both_sides(labelled_grid):
    data = GridData(labelled_grid, (0.75, 0.20, 0.05), split_seed=3)
    train, test, val = set(data.split.train), set(data.split.test), set(data.split.val)
    assert not (train & test) and not (train & val) and not (test & val)
    assert train | test | val == set(data.rows)
    assert (len(train), len(test), len(val)) == (45, 12, 3)
    # noisy copies are drawn from the requested rows only, and the split is reproducible
    rng = np.random.default_rng(0)
    rows = rng.choice(data.split.train, 32)
    _, snr, x = data.noisy_batch(rows, rng, "paper")
    np.testing.assert_allclose(x, data.standardise(data.labels[rows]), rtol=1e-5, atol=1e-6)
    assert set(np.unique(snr)) <= {10, 12, 14, 16, 18, 20, 23, 26, 30, 35, 40, 45, 50, 80, 100, 130, 180, 250, 1000}
    np.testing.assert_array_equal(split_rows(data.rows, (0.75, 0.2, 0.05), 3).test, data.split.test)
    data.close()


def test_continuous_snr_is_log_uniform_in_10_1000(labelled_grid):
    data = GridData(labelled_grid)
    _, snr, _ = data.noisy_batch(np.zeros(4000, dtype=int), np.random.default_rng(1), "continuous")
    log_snr = np.log10(snr[:, 0])
    assert log_snr.min() >= 1.0 and log_snr.max() <= 3.0 and abs(np.median(log_snr) - 2.0) < 0.05
    data.close()


def test_loss_decreases_and_run_files(labelled_grid, tmp_path):
    config = replace(CONFIGS["tiny"], epochs=6, batches_per_epoch=8, lr=3e-3)
    result = fit(labelled_grid, config, tmp_path / "run", device="cpu", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert result.epochs_done == 6
    assert history[-1]["train_nll"] < history[0]["train_nll"] - 0.1
    for name in ("config.json", "checkpoint.pt", "best.pt", "loss.png", "run.json"):
        assert (tmp_path / "run" / name).exists()
    _, cfg, meta = load_run(tmp_path / "run")
    assert cfg == config and meta["epoch"] == result.best_epoch


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(labelled_grid, tmp_path):
    config = replace(CONFIGS["tiny"], epochs=4, batches_per_epoch=3)
    fit(labelled_grid, config, tmp_path / "straight", device="cpu", progress=False)
    fit(labelled_grid, config, tmp_path / "resumed", device="cpu", progress=False, stop_after_epochs=2)
    fit(labelled_grid, config, tmp_path / "resumed", device="cpu", progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]


def test_diverging_run_stops_with_a_clear_message(labelled_grid, tmp_path):
    import h5py

    with h5py.File(labelled_grid, "r+") as f:
        f["flux"][:, 100] = np.inf
    with pytest.raises(DivergenceError, match="loss became"):
        fit(labelled_grid, CONFIGS["tiny"], tmp_path / "bad", device="cpu", progress=False)


def test_config_file_and_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "mine", "n_blocks": 4, "feature_layers": [64, 32]}))
    config = load_config(str(path), epochs=7)
    assert config.n_blocks == 4 and config.feature_layers == (64, 32) and config.epochs == 7
    path.write_text(json.dumps({"name": "x", "blocks": 4}))
    with pytest.raises(ValueError, match="unknown config field"):
        load_config(str(path))
    with pytest.raises(FileNotFoundError, match="neither one of"):
        load_config("huge")


def _recomputed(saved, k: int, j: int) -> dict:
    """The report's statistics of S/N slice ``k`` and parameter ``j``, recomputed from ``evaluation.npz``."""
    truth, maps, q = saved["truth"][k][:, j], saved["map"][k][:, j], saved["quantiles"][k][:, :, j]
    ok = np.isfinite(saved["map"][k]).all(axis=1) & np.isfinite(saved["truth"][k]).all(axis=1)
    r = (maps - truth)[ok]
    return {"bias": r.mean(), "sigma": r.std(), "rmse": np.sqrt(np.mean(r**2)),
            "coverage68": np.mean((q[ok, 1] <= truth[ok]) & (truth[ok] <= q[ok, 3])),
            "coverage95": np.mean((q[ok, 0] <= truth[ok]) & (truth[ok] <= q[ok, 4])),
            "median_width68": np.median(q[ok, 3] - q[ok, 1]),
            "sbc_hist": np.histogram(saved["ranks"][k][ok, j], bins=10, range=(0, 1))[0].tolist()}


def test_evaluation_report(labelled_grid, tmp_path):
    """Every number of the report is the one its per-spectrum arrays give, recomputed here; those arrays hold the
    grid's own labels of the run's test rows at the requested S/N; the quantiles are ordered and agree with the SBC
    ranks; report.md shows metrics.json. A second evaluation into the folder needs ``overwrite``."""
    from spectra import schema
    from spectra.common.outputs import OutputExistsError
    from spectra.stores.gridstore import GridReader
    from spectra.stores.survey import parse_snr

    config = replace(CONFIGS["tiny"], epochs=2)
    fit(labelled_grid, config, tmp_path / "run", device="cpu", progress=False)
    metrics = evaluate(tmp_path / "run", labelled_grid, tmp_path / "report", snr=parse_snr("50,250"),
                       n_samples=256, progress=False)
    saved = np.load(tmp_path / "report" / "evaluation.npz")
    keys, names = list(saved["snr_keys"]), list(saved["parameters"])
    assert keys == ["50", "250"] and set(metrics["per_snr"]) == set(keys) and names == schema.target_names()
    rows = split_rows(np.arange(60), config.split, config.split_seed).test
    np.testing.assert_array_equal(saved["rows"], rows)
    with GridReader(labelled_grid) as grid:
        columns = [schema.label_names().index(n) for n in names]
        labels = grid.labels[:, columns][rows]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Table A.1" in text
    for k, key in enumerate(keys):
        np.testing.assert_allclose(saved["truth"][k], labels, rtol=1e-6)
        np.testing.assert_array_equal(saved["snr"][k], float(key))
        q = saved["quantiles"][k]
        assert np.all(np.diff(q[np.isfinite(q).all(axis=(1, 2))], axis=1) >= 0)  # p2.5 <= p16 <= ... <= p97.5
        ranks, truth = saved["ranks"][k], saved["truth"][k]
        step = 1.0 / np.maximum(saved["n_valid"][k], 1)[:, None] * np.ones_like(ranks)  # one sample's share
        below, above = truth < q[:, 0], truth > q[:, 4]  # outside the 95 % interval: the rank says so too
        assert below.any() or above.any()
        assert np.all(ranks[below] < 0.025 + step[below]) and np.all(ranks[above] > 0.975 - step[above])
        for j, name in enumerate(names):
            reported = metrics["per_snr"][key]["params"][name]
            for stat, value in _recomputed(saved, k, j).items():
                assert np.allclose(reported[stat], value, rtol=1e-6, atol=1e-12), (key, name, stat)
        assert metrics["per_snr"][key]["n"] == metrics["n_spectra"] == len(rows)
    assert f"{metrics['per_snr']['250']['params']['teff']['bias']:+.3g}" in text
    for name in ("report.md", "metrics.json", "predicted_vs_true.png", "sbc.png", "residuals_vs_snr.png"):
        assert (tmp_path / "report" / name).exists()
    with pytest.raises(OutputExistsError, match="add --overwrite"):
        evaluate(tmp_path / "run", labelled_grid, tmp_path / "report", snr=parse_snr("250"), n_samples=16,
                 max_spectra=2, progress=False)


def test_evaluation_coverage_detects_miscalibration():
    """The report's coverage and SBC statistics on toy posteriors whose calibration is known: N(mu, 1) posteriors of
    truths drawn from N(mu, 1) cover 68 % / 95 % and give flat SBC ranks; posteriors half as wide cover far less."""
    from training.evaluate import _metrics

    rng = np.random.default_rng(3)
    n, s = 4000, 400
    mu = rng.uniform(-1, 1, (n, 1))
    truth = mu + rng.standard_normal((n, 1))
    levels = [0.025, 0.16, 0.5, 0.84, 0.975]
    for width, calibrated in ((1.0, True), (0.5, False)):
        samples = mu[:, None, :] + width * rng.standard_normal((n, s, 1))
        quantiles = np.moveaxis(np.quantile(samples, levels, axis=1), 0, 1)  # (n, 5, 1)
        ranks = (samples < truth[:, None, :]).mean(axis=1)
        out = _metrics(truth, mu, quantiles, np.full(n, s), ranks, s, np.ones(1), ["x"])["params"]["x"]
        hist = np.asarray(out["sbc_hist"]) / n
        if calibrated:
            assert abs(out["coverage68"] - 0.68) < 0.025 and abs(out["coverage95"] - 0.95) < 0.012
            assert np.all(np.abs(hist - 0.1) < 0.02)
            assert abs(out["sigma"] - 1.0) < 0.05 and abs(out["bias"]) < 0.05
        else:
            assert out["coverage68"] < 0.45 and out["coverage95"] < 0.75 and hist[0] > 0.2 and hist[-1] > 0.2


def test_saliency_maps_and_line_enrichment(tmp_path, labelled_grid):
    """Maps have one normalised row per parameter; the enrichment statistic finds peaks put on lines."""
    from training.saliency import element_lines, line_enrichment, saliency

    fit(labelled_grid, replace(CONFIGS["tiny"], epochs=1), tmp_path / "run", device="cpu", progress=False)
    result = saliency(tmp_path / "run", labelled_grid, tmp_path / "sal", n_spectra=4, samples=8, progress=False)
    maps = np.load(tmp_path / "sal" / "saliency.npz")["median"]
    assert maps.shape == (13, 25200) and np.all(maps >= 0) and np.all(maps <= 1)
    assert (tmp_path / "sal" / "saliency_mg_fe.png").exists() and "mg_fe" in result["enrichment"]
    wave = np.arange(5160.0, 5730.0, 0.05) + 0.025
    mg = element_lines("Mg")
    assert np.any(np.abs(mg - 5183.6) < 0.05)  # Mg b in the shipped line list
    on_lines = np.zeros(wave.size)
    for line in mg[(mg > 5160) & (mg < 5730)]:
        on_lines[np.argmin(np.abs(wave - line))] = 1.0
    assert line_enrichment(wave, on_lines, mg, n_peaks=5)["enrichment"] > 20
    far = np.min(np.abs(wave[:, None] - mg[None, :]), axis=1) > 1.0
    off_lines = np.where(far, np.random.default_rng(0).random(wave.size), 0.0)
    assert line_enrichment(wave, off_lines, mg, n_peaks=50)["enrichment"] == 0


def test_step_guard_skips_spikes_and_non_finite_batches():
    """A batch far above the recent gradient norms, or not finite, moves nothing; ordinary ones do; the count of
    skipped batches in a row is what ends a fit."""
    from training.fit import SPIKE_FACTOR, SPIKE_WARMUP, StepGuard

    guard = StepGuard()
    assert all(guard.accept(1.0, 10.0 * (1 + 0.01 * k)) for k in range(SPIKE_WARMUP))
    assert not guard.accept(1.0, 10.0 * SPIKE_FACTOR * 1.5)  # a spike
    assert not guard.accept(float("inf"), float("nan")) and guard.in_a_row == 2
    assert guard.accept(-3.0, 25.0) and guard.in_a_row == 0  # a few times the median is ordinary
    resumed = StepGuard(list(guard.norms))  # the checkpoint's recent norms: the same decisions after a resume
    assert not resumed.accept(1.0, 10.0 * SPIKE_FACTOR * 1.5)
