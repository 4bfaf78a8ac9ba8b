"""The spectral emulator: trains on unrotated grids only, learns a learnable grid, exports to ONNX with parity."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from spectra import schema  # noqa: E402
from spectra.prior import draw_labels  # noqa: E402
from spectra.stores.gridstore import GridWriter  # noqa: E402
from spectra.wavegrid import hr_grid  # noqa: E402
from training.emulator import EMULATOR_INPUTS, EmulatorConfig, evaluate_emulator, fit_emulator  # noqa: E402

from conftest import line_spectrum  # noqa: E402


def _grid(path, n, seed, rotation="none", margin=0.0):
    """Line depths that depend smoothly on T_eff, log g and [Fe/H]: learnable without synthesis; on the HR grid
    with ``margin`` Å beyond each window edge, as synthesised grids are stored."""
    grid = hr_grid(margin)
    labels = draw_labels(n, seed=seed)
    names = schema.label_names()
    base = 1.0 - line_spectrum(grid.wave, seed=10, n_lines=300)
    attrs = {"seed": seed, "prior": "test", "engine": "fake", "engine_version": "0", "linelist_sha256": "none",
             "rotation": rotation}
    with GridWriter(path, n, grid, attrs) as writer:
        for i, row in enumerate(labels):
            depth = 0.3 + 0.2 * (row[names.index("fe_h")] + 5) / 5.5 - 0.1 * (row[names.index("teff")] - 5500) / 1500
            writer.write_row(i, np.clip(1.0 - depth * base, 0.05, 1.0), row, "interpolated", 0.0)
    return path


def test_emulator_learns_refuses_rotated_grids_and_exports_with_parity(tmp_path):
    from export.emulator import export_emulator, onnx_parity

    train = _grid(tmp_path / "train.h5", 48, seed=3)
    test = _grid(tmp_path / "test.h5", 12, seed=4)
    with pytest.raises(ValueError, match="learns unrotated spectra"):
        fit_emulator([_grid(tmp_path / "rotated.h5", 4, seed=5, rotation="applied")], tmp_path / "x")
    record = fit_emulator([train], tmp_path / "emu", EmulatorConfig(hidden=(32, 32), steps=300, log_every=100),
                          progress=False)
    assert record["inputs"] == list(EMULATOR_INPUTS) and "vbroad" not in record["inputs"]
    table = evaluate_emulator(tmp_path / "emu", [test], tmp_path / "report")
    mean_only = np.sqrt(np.mean((1.0 - line_spectrum(hr_grid().wave, seed=10, n_lines=300)) ** 2)) * 0.1
    assert table["rms_median"] < mean_only  # learned the label dependence, not just the mean spectrum
    assert (tmp_path / "report" / "emulator_errors.md").is_file()
    out = export_emulator(tmp_path / "emu", tmp_path / "onnx", errors=tmp_path / "report" / "emulator_errors.json")
    manifest = json.loads((out / "emulator.json").read_text())
    assert [p["name"] for p in manifest["inputs"]] == list(EMULATOR_INPUTS) and len(manifest["files"]) == 2
    assert manifest["output"]["margin"] == 0.0  # on the HR pixels: nothing beyond them
    assert manifest["output"]["hr_pixel_grid_sha256"] == manifest["output"]["pixel_grid_sha256"] == hr_grid().sha256()
    labels = draw_labels(8, seed=9)[:, [schema.label_names().index(n) for n in EMULATOR_INPUTS]]
    assert onnx_parity(tmp_path / "emu", out, labels) < 1e-5
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_emulator(tmp_path / "emu", tmp_path / "onnx")


def test_pca_basis_emulator_learns_round_trips_and_exports_with_parity(tmp_path):
    """``basis`` > 0: the output is the mean plus coefficients times the training spectra's principal components
    (orthogonal, equal norms); trained on the coefficients, it learns as well as the per-pixel head, reloads to the
    same output and exports with parity (the basis travels as an fp16 initializer when asked)."""
    from export.emulator import export_emulator, onnx_parity
    from training.emulator import load_emulator, pca_basis

    flux = np.random.default_rng(0).normal(size=(20, 50))
    basis = pca_basis(flux, flux.mean(axis=0), 5)
    gram = basis.astype(float) @ basis.T.astype(float)
    assert np.allclose(gram, gram[0, 0] * np.eye(5), atol=1e-4 * gram[0, 0])
    with pytest.raises(ValueError, match="at most 20"):
        pca_basis(flux, flux.mean(axis=0), 21)

    train = _grid(tmp_path / "train.h5", 48, seed=3)
    test = _grid(tmp_path / "test.h5", 12, seed=4)
    config = EmulatorConfig(hidden=(32, 32), steps=300, log_every=100, basis=8, schedule="onecycle",
                            weight_decay=1e-5, clip_factor=5.0)
    record = fit_emulator([train], tmp_path / "emu", config, progress=False)
    assert record["config"]["clip_factor"] == 5.0 and "clipped_steps" in record["history"][-1]  # the guard ran
    table = evaluate_emulator(tmp_path / "emu", [test], tmp_path / "report")
    mean_only = np.sqrt(np.mean((1.0 - line_spectrum(hr_grid().wave, seed=10, n_lines=300)) ** 2)) * 0.1
    assert table["rms_median"] < mean_only
    model, record, _ = load_emulator(tmp_path / "emu")
    assert record["config"]["basis"] == 8 and tuple(model.basis.shape) == (8, hr_grid().wave.size)
    assert float(model.basis.abs().max()) > 0  # the basis was saved and reloaded, not left at zeros
    labels = draw_labels(8, seed=9)[:, [schema.label_names().index(n) for n in EMULATOR_INPUTS]]
    assert onnx_parity(tmp_path / "emu", export_emulator(tmp_path / "emu", tmp_path / "onnx"), labels) < 1e-5
    half = export_emulator(tmp_path / "emu", tmp_path / "onnx16", weights="fp16")
    assert onnx_parity(tmp_path / "emu", half, labels) < 1e-3


def test_ensemble_averages_its_members_reloads_exports_and_reads_one_network_emulators(tmp_path):
    """``members`` > 1: independently trained networks on one split and basis, whose average is the output; the
    first member is the one-network emulator of the same seed (same initialisation and batches); an emulator saved
    before ensembles existed (one MLP as ``body`` and ``head``) still loads."""
    from export.emulator import export_emulator, onnx_parity
    from training.emulator import Emulator, load_emulator

    train = _grid(tmp_path / "train.h5", 48, seed=3)
    config = EmulatorConfig(hidden=(16, 16), steps=120, log_every=60, basis=6, schedule="onecycle")
    single = fit_emulator([train], tmp_path / "one", config, progress=False)
    record = fit_emulator([train], tmp_path / "ens", EmulatorConfig(**{**config.__dict__, "members": 3}),
                          progress=False)
    assert len(record["member_val_rms_median"]) == 3 and record["n_val"] == single["n_val"]
    assert record["member_val_rms_median"][0] == pytest.approx(single["val_rms_median"], rel=1e-6)
    assert len(set(record["member_val_rms_median"])) == 3  # the members differ
    model, _, _ = load_emulator(tmp_path / "ens")
    labels = torch.from_numpy(draw_labels(5, seed=9)[:, [schema.label_names().index(n) for n in EMULATOR_INPUTS]])
    labels = labels.float()
    with torch.no_grad():
        members = torch.stack([model.mean_flux + model.coefficients(labels, k) @ model.basis for k in range(3)])
        assert torch.equal(model(labels, 1), model.mean_flux + model.coefficients(labels, 1) @ model.basis)
        assert torch.allclose(model(labels), members.mean(dim=0), atol=1e-6)
    assert onnx_parity(tmp_path / "ens", export_emulator(tmp_path / "ens", tmp_path / "onnx"), labels.numpy()) < 1e-5

    one, _, _ = load_emulator(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "old")
    state = torch.load(tmp_path / "old" / "emulator.pt", weights_only=False)
    state["model"] = {k.replace("nets.0.0.", "body.").replace("nets.0.1.", "head."): v
                      for k, v in state["model"].items()}
    state["config"].pop("members")
    torch.save(state, tmp_path / "old" / "emulator.pt")
    reread, _, _ = load_emulator(tmp_path / "old")
    with torch.no_grad():
        assert torch.equal(reread(labels), one(labels))
    with pytest.raises(ValueError, match="at least one network"):
        Emulator(10, (4,), members=0)


def test_spike_guard_clips_a_rare_huge_gradient_and_leaves_ordinary_steps_alone():
    """``clip_factor``: a step whose gradient norm is far above the recent median is clipped to factor x median;
    ordinary steps and the first CLIP_WARMUP are untouched, a spike does not raise the level that judges the next
    one, and a gradient that is not finite is not taken."""
    from training.emulator import CLIP_WARMUP, CLIP_WINDOW, SpikeGuard

    weight = torch.nn.Parameter(torch.zeros(4))
    guard = SpikeGuard(5.0)
    weight.grad = torch.full((4,), 0.13)  # a huge first step: nothing to judge it by yet
    assert guard([weight]) and guard.clipped == 0 and float(weight.grad[0]) == pytest.approx(0.13)
    guard.norms.clear()
    rng = np.random.default_rng(0)
    for _ in range(CLIP_WINDOW):
        weight.grad = torch.as_tensor(rng.normal(1e-3, 1e-4, 4), dtype=torch.float32)
        before = weight.grad.clone()
        assert guard([weight])
        assert torch.equal(weight.grad, before)  # ordinary steps pass unchanged
    level = 5.0 * float(np.median(guard.norms))
    weight.grad = torch.full((4,), 0.13)  # norm 0.26, ~130x the usual, as measured on the cool giants' batches
    assert guard([weight])
    assert guard.clipped == 1 and float(weight.grad.norm()) == pytest.approx(level, rel=1e-3)
    assert guard.norms[-1] == pytest.approx(level, rel=1e-6)
    weight.grad = torch.full((4,), float("nan"))
    assert not guard([weight]) and guard.skipped == 1 and np.isfinite(guard.norms).all()
    assert CLIP_WARMUP < CLIP_WINDOW
    off = SpikeGuard(0.0)
    for _ in range(CLIP_WINDOW):
        weight.grad = torch.full((4,), 0.13)
        off([weight])
    assert off.clipped == 0 and float(weight.grad[0]) == pytest.approx(0.13)
    for bad in (-1.0, 0.5, 1.0):
        with pytest.raises(ValueError, match="clip-factor"):
            EmulatorConfig(clip_factor=bad)
