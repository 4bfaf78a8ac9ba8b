"""The fresh emulated training stream: deterministic per (seed, epoch, batch), workers change nothing, no star
repeats across batches, the compressed model's pixel path equals the workers' projection, and a stream run
trains, resumes and exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("FrEIA")

from test_emulator import _grid  # noqa: E402

from training.config import load_config  # noqa: E402
from training.emulator import EmulatorConfig, fit_emulator  # noqa: E402
from training.fit import fit, load_run  # noqa: E402
from training.stream import EmulatedData, StreamSpec, pca_basis  # noqa: E402


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    train = _grid(tmp / "train.h5", 24, seed=1)
    fit_emulator([train], tmp / "emu", EmulatorConfig(hidden=(16, 16), steps=30, log_every=10), progress=False)
    return tmp / "emu"


def _config(**overrides):
    base = dict(name="stream-test", data="stream", compression=8, pca_stars=32, feature_layers=(16, 8), n_blocks=2,
                subnet_width=16, batch_size=12, stream_stars=4, stream_copies=3, batches_per_epoch=2, epochs=2,
                lr_schedule="onecycle", patience=100, val_batches=1, split=(1.0, 0.0, 0.0))
    base.update(overrides)
    return load_config("tiny", **base)


def test_batches_depend_on_their_seed_only_and_workers_change_nothing(emulator):
    spec = StreamSpec(str(emulator), stars=4, copies=3, seed=7)
    one = EmulatedData(spec, workers=1)
    a = list(one.batches([[0, 0], [0, 1]]))
    b = list(one.batches([[0, 1]]))
    one.close()
    two = EmulatedData(spec, workers=2)
    c = list(two.batches([[0, 0], [0, 1]]))
    two.close()
    for x, y in zip(a[1], b[0], strict=True):
        np.testing.assert_array_equal(x, y)
    for batch_a, batch_c in zip(a, c, strict=True):
        for x, y in zip(batch_a, batch_c, strict=True):
            np.testing.assert_array_equal(x, y)
    # new stars every batch: no target row of batch 0 appears in batch 1; each star has `copies` noisy copies
    t0, t1 = a[0][2], a[1][2]
    assert not any(np.allclose(r, s) for r in t0 for s in t1)
    assert np.unique(t0.round(6), axis=0).shape[0] == spec.stars
    flux, snr = a[0][0], a[0][1][:, 0]
    assert flux.shape == (12, one.n_pixels) and np.all((snr >= 10) & (snr <= 1000))
    assert not np.array_equal(flux[0], flux[1])  # copies of one star differ by their noise


def test_reused_stars_serve_consecutive_batches_with_fresh_noise(emulator):
    """``reuse`` = r: batches [e, b] with the same b // r share their stars and differ in S/N and noise; the next
    group has stars of its own; a batch is the same whether asked alone, with its group or by two workers."""
    spec = StreamSpec(str(emulator), stars=4, copies=3, seed=7, reuse=2)
    one = EmulatedData(spec, workers=1)
    a = list(one.batches([[0, 0], [0, 1], [0, 2], [0, 3]]))
    alone = next(one.batches([[0, 1]]))
    mixed = list(one.batches([[0, 1], [0, 2], [0, 0]]))  # asked out of order: given back in the order asked
    one.close()
    for got, want in zip(mixed, (a[1], a[2], a[0]), strict=True):
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, y)
    two = EmulatedData(spec, workers=2)
    b = list(two.batches([[0, 0], [0, 1], [0, 2], [0, 3]]))
    two.close()
    for batch_a, batch_b in zip(a, b, strict=True):
        for x, y in zip(batch_a, batch_b, strict=True):
            np.testing.assert_array_equal(x, y)
    for x, y in zip(a[1], alone, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[0][2], a[1][2])  # the same stars in both batches of a group ...
    assert not np.array_equal(a[0][1], a[1][1]) and not np.allclose(a[0][0], a[1][0])  # ... with new S/N and noise
    assert not any(np.allclose(r, s) for r in a[1][2] for s in a[2][2])  # the next group: new stars
    plain = EmulatedData(StreamSpec(str(emulator), stars=4, copies=3, seed=7), workers=1)
    assert not np.array_equal(next(plain.batches([[0, 0]]))[2], a[0][2])  # not the stars of an unshared batch
    plain.close()


def test_stream_reuse_must_divide_the_epoch(emulator, tmp_path):
    with pytest.raises(ValueError, match="stream_reuse"):
        fit(emulator, _config(stream_reuse=3), tmp_path / "bad", device="cpu", progress=False)


def test_compressed_model_projects_pixels_like_the_workers(emulator):
    spec = StreamSpec(str(emulator), stars=4, copies=3)
    mean, basis, _ = pca_basis(spec, 32, 8, progress=False)
    np.testing.assert_array_equal(basis.astype(np.float16).astype(basis.dtype), basis)  # float16 values (export)
    np.testing.assert_allclose(basis @ basis.T, np.eye(8), atol=1e-4)  # orthonormal up to that rounding
    raw = EmulatedData(spec)
    flux, snr, _ = next(raw.batches([[3, 0]]))
    raw.close()
    projected = EmulatedData(spec, (mean, basis))
    coefficients, snr2, _ = next(projected.batches([[3, 0]]))
    projected.close()
    np.testing.assert_array_equal(snr, snr2)
    from training.model import CINN

    model = CINN(_config(), flux.shape[1], 13)
    model.set_compression(mean, basis)
    with torch.no_grad():
        from_pixels = model.features(torch.from_numpy(flux), torch.from_numpy(snr))
        from_workers = model.features_from_coefficients(torch.from_numpy(coefficients), torch.from_numpy(snr))
    np.testing.assert_allclose(from_pixels.numpy(), from_workers.numpy(), rtol=1e-4, atol=1e-4)


def test_stream_run_trains_resumes_identically_and_exports(emulator, tmp_path):
    config = _config()
    whole = fit(emulator, config, tmp_path / "whole", device="cpu", progress=False)
    fit(emulator, config, tmp_path / "split", device="cpu", progress=False, stop_after_epochs=1)
    fit(emulator, config, tmp_path / "split", device="cpu", progress=False)
    a = json.loads((tmp_path / "whole" / "history.json").read_text())
    b = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [h["val_loss"] for h in a] == pytest.approx([h["val_loss"] for h in b], rel=1e-5)
    assert whole.epochs_done == 2 and np.isfinite(whole.best_val)
    model, loaded, meta = load_run(tmp_path / "whole")
    assert loaded.compression == 8 and meta["stream"]["copies"] == 3
    assert model.pca_basis.shape == (8, model.n_pixels)
    pytest.importorskip("onnxruntime")
    from export.onnx import export_bundle

    export_bundle(tmp_path / "whole", tmp_path / "bundle")
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(tmp_path / "bundle" / "feature_extractor.onnx")).graph
    halved = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert [tuple(i.dims) for i in halved] in ([(model.n_pixels, 8)], [(8, model.n_pixels)])  # the basis, stored
    session = ort.InferenceSession(str(tmp_path / "bundle" / "feature_extractor.onnx"))  # in half the bytes
    flux = np.ones((2, model.n_pixels), dtype=np.float32)
    snr = np.full((2, 1), 50.0, dtype=np.float32)
    with torch.no_grad():
        expected = model.features(torch.from_numpy(flux), torch.from_numpy(snr)).numpy()
    got = session.run(None, {session.get_inputs()[0].name: flux, session.get_inputs()[1].name: snr})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_stream_config_needs_matching_batch_size(emulator, tmp_path):
    with pytest.raises(ValueError, match="stream_stars x stream_copies"):
        fit(emulator, _config(batch_size=10), tmp_path / "bad", device="cpu", progress=False)


def test_model_error_adds_the_emulators_held_out_residuals(emulator, tmp_path):
    """Model-error augmentation: each star gets one of the emulator's validation-star residuals (PySME − emulator on
    stars it never fitted), so the same seed gives different spectra with and without it, and the labels stay."""
    from training.emulator import validation_residuals

    residuals = validation_residuals(emulator)
    record = json.loads((emulator / "emulator.json").read_text())
    assert residuals.shape == (record["n_val"], 25_200) and np.all(np.isfinite(residuals))
    assert np.sqrt(np.mean(residuals**2)) > 0
    np.save(tmp_path / "error.npy", residuals)
    plain = EmulatedData(StreamSpec(str(emulator), stars=4, copies=3))
    with_error = EmulatedData(StreamSpec(str(emulator), stars=4, copies=3, model_error=str(tmp_path / "error.npy")))
    a, b = next(plain.batches([[5, 0]])), next(with_error.batches([[5, 0]]))
    plain.close()
    with_error.close()
    np.testing.assert_array_equal(a[2], b[2])  # same stars
    assert not np.allclose(a[0], b[0])  # different spectra


def test_model_error_neighbours_draw_residuals_from_similar_stars(emulator, tmp_path):
    """``model_error_neighbours`` = k: a star's residual comes from one of the k validation stars nearest to it in
    T_eff, log g, [Fe/H]; with k = 1 a star placed on a validation star gets that star's own residual."""
    from spectra import schema
    from spectra.prior import draw_labels
    from training.emulator import EMULATOR_INPUTS, validation_stars
    from training.stream import _Generator

    labels, residuals = validation_stars(emulator)
    np.save(tmp_path / "model_error.npy", residuals)
    np.save(tmp_path / "model_error_labels.npy", labels)
    names = schema.label_names()
    stars = draw_labels(labels.shape[0], seed=4)
    for name in ("teff", "logg", "fe_h"):
        stars[:, names.index(name)] = labels[:, list(EMULATOR_INPUTS).index(name)]
    rng = np.random.default_rng(0)
    nearest = _Generator(StreamSpec(str(emulator), model_error=str(tmp_path / "model_error.npy"),
                                    model_error_neighbours=1), None)
    np.testing.assert_allclose(np.abs(nearest._model_errors(stars, rng)), np.abs(residuals))
    anyone = _Generator(StreamSpec(str(emulator), model_error=str(tmp_path / "model_error.npy")), None)
    assert anyone.error_position is None  # the default: any validation star, as before
    with pytest.raises(ValueError, match="validation stars"):
        _Generator(StreamSpec(str(emulator), model_error=str(tmp_path / "model_error.npy"),
                              model_error_neighbours=labels.shape[0] + 1), None)

    # model_error_amplitude_neighbours = 1: the pattern of any validation star, shrunk to the size of the star's
    # nearest one where that is smaller
    sized = _Generator(StreamSpec(str(emulator), model_error=str(tmp_path / "model_error.npy"),
                                  model_error_amplitude_neighbours=1), None)
    errors = sized._model_errors(stars, np.random.default_rng(1))
    drawn = anyone._model_errors(stars, np.random.default_rng(1))  # same draws: same patterns, other sizes
    own, drawn_rms = np.sqrt(np.mean(residuals**2, axis=1)), np.sqrt(np.mean(drawn**2, axis=1))
    np.testing.assert_allclose(np.sqrt(np.mean(errors**2, axis=1)), np.minimum(own, drawn_rms), rtol=1e-6)
    cosine = np.sum(errors * drawn, axis=1) / np.sqrt(np.sum(errors**2, axis=1) * np.sum(drawn**2, axis=1))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)
