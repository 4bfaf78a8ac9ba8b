"""Re-simulation at the MAP: the bundle's emulator, chi2_resim / resim_rms, and the calibrated POOR_FIT flag."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_emulator import _grid

from catalog.writers import CatalogueStore
from runtime.bundle import BundleError, load_bundle
from runtime.pipeline import ProcessOptions, process_survey
from runtime.resim import RESIM_DV, Resimulator, _grid_of, _rotator_for, continuum_factor, match_continuum, reduced_chi2
from spectra import schema
from spectra.contracts.flags import Flag
from spectra.forward.degrade import add_noise
from spectra.forward.rotation import PixelRotator, Rotator, hr_pixel_rotator, hr_rotator
from spectra.prior import draw_labels
from spectra.stores.survey import make_survey, parse_snr
from spectra.wavegrid import GRID_MARGIN, hr_grid
from training.emulator import EMULATOR_INPUTS, EmulatorConfig, fit_emulator

from conftest import rehash_bundle

OPTIONS = ProcessOptions(samples=256, seed=5, device="cpu")


@pytest.fixture(scope="module")
def resim_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the trained test bundle carrying a small emulator trained on a learnable unrotated grid."""
    from export.emulator import export_emulator
    from export.resim import attach_emulator

    _, grid, _, bundle = tiny_bundle
    tmp = tmp_path_factory.mktemp("resim")
    fit_emulator([_grid(tmp / "train.h5", 48, seed=3)], tmp / "emu",
                 EmulatorConfig(hidden=(32, 32), steps=200, log_every=100), progress=False)
    exported = export_emulator(tmp / "emu", tmp / "emu_onnx")
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    entry = attach_emulator(copy, exported)
    survey = make_survey(grid, parse_snr("50,250"), tmp / "survey.zarr", seed=4, chunk=16, progress=False)
    return copy, survey, entry


@pytest.fixture(scope="module")
def margin_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the trained test bundle (HR pixels) carrying a small emulator trained on an unrotated grid stored
    with the 2 Å margin, as synthesised grids are: (bundle, exported emulator folder, manifest entry)."""
    from export.emulator import export_emulator
    from export.resim import attach_emulator

    _, _, _, bundle = tiny_bundle
    tmp = tmp_path_factory.mktemp("resim_margin")
    fit_emulator([_grid(tmp / "train.h5", 48, seed=3, margin=GRID_MARGIN)], tmp / "emu",
                 EmulatorConfig(hidden=(32, 32), steps=200, log_every=100), progress=False)
    exported = export_emulator(tmp / "emu", tmp / "emu_onnx")
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    entry = attach_emulator(copy, exported)
    return copy, exported, entry


@pytest.mark.parametrize("which", ["resim_bundle", "margin_bundle"])
def test_chi2_is_one_on_noisy_emulated_spectra_at_their_own_parameters(which, request):
    """Spectra made by the bundle's own model (emulator + rotation) with the training noise model: chi2_resim at
    the true parameters is 1 within its statistical scatter, at every S/N; a wrong model is far above. With an
    emulator whose output has a margin as with one on the bundle's own pixels."""
    bundle_path = request.getfixturevalue(which)[0]
    bundle = load_bundle(bundle_path)
    resim = Resimulator(bundle)
    resim.model_error = 0.0  # the model is exact here
    names = schema.label_names()
    labels = draw_labels(24, seed=11)
    params = labels[:, [names.index(n) for n in bundle.manifest.names]]
    model = resim.model_flux(params)
    rng = np.random.default_rng(0)
    pixel = bundle.manifest.raw["pixel_grid"]["pixel_width"]
    for snr in (20.0, 100.0, 400.0):
        noisy = add_noise(model, np.full(len(model), snr), pixel, rng)
        chi2, rms = resim.check(noisy, np.full(len(model), snr), params)
        assert abs(np.mean(chi2) - 1.0) < 0.02 and np.all(np.abs(chi2 - 1) < 0.05), (snr, chi2)
        assert np.all(rms > 0)
    featureless = add_noise(np.ones_like(model), np.full(len(model), 400.0), pixel, rng)  # not a star of the model
    wrong, _ = resim.check(featureless, np.full(len(model), 400.0), params)
    assert np.min(wrong) > 2.0


def test_inputs_the_cinn_does_not_infer_are_filled_from_the_prior_trend(resim_bundle):
    bundle_path, _, entry = resim_bundle
    bundle = load_bundle(bundle_path)
    assert set(entry["fill"]) == set(EMULATOR_INPUTS) - set(bundle.manifest.names)
    resim = Resimulator(bundle)
    params = np.tile([5500.0, 4.0, -1.5, 1.0, 5.0] + [0.0] * (bundle.manifest.n_params - 5), (1, 1))
    labels = resim.labels(params)
    if "o_fe" in entry["fill"]:
        assert labels[0, EMULATOR_INPUTS.index("o_fe")] == pytest.approx(0.4)  # alpha-enhanced at [Fe/H] = -1.5
    assert labels[0, EMULATOR_INPUTS.index("teff")] == 5500.0


def test_reduced_chi2_counts_only_finite_pixels():
    model = np.ones((2, 100))
    flux = model + 0.1
    flux[1, :50] = np.nan
    chi2, rms = reduced_chi2(flux, model, np.array([10.0, 10.0]))
    np.testing.assert_allclose(chi2, [1.0, 1.0], rtol=1e-6)  # float32 residuals (reduced_chi2)
    np.testing.assert_allclose(rms, [0.1, 0.1], rtol=1e-6)


def test_runtime_writes_chi2_and_flags_poor_fits_after_calibration(resim_bundle, tmp_path):
    from export.resim import calibrate_poor_fit

    bundle, survey, _ = resim_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    process_survey(survey, copy, tmp_path / "held_out.zarr", OPTIONS, progress=False)
    store = CatalogueStore.open(tmp_path / "held_out.zarr")
    chi2 = store.column("chi2_resim")
    assert np.isfinite(chi2).all() and (chi2 > 0).all() and np.isfinite(store.column("resim_rms")).all()
    assert store.attrs["poor_fit_chi2"] is None and "emulator" in store.attrs["resim"]
    assert not (store.column("flags") & Flag.POOR_FIT).any()  # no threshold yet: never flagged
    entry = calibrate_poor_fit(copy, tmp_path / "held_out.zarr", percentile=90)
    assert entry["poor_fit_chi2"] == pytest.approx(np.percentile(chi2, 90))
    with pytest.raises(ValueError, match="another bundle"):
        calibrate_poor_fit(copy, tmp_path / "held_out.zarr")  # the calibration changed the bundle's identity
    process_survey(survey, copy, tmp_path / "again.zarr", replace(OPTIONS, seed=6), progress=False)
    again = CatalogueStore.open(tmp_path / "again.zarr")
    poor = (again.column("flags") & Flag.POOR_FIT) != 0
    np.testing.assert_array_equal(poor, again.column("chi2_resim") > entry["poor_fit_chi2"])
    assert 0 < poor.sum() < poor.size


def test_emulator_on_another_pixel_grid_or_tampered_is_refused(resim_bundle, tmp_path):
    from export.resim import attach_emulator

    bundle, _, _ = resim_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with pytest.raises(FileExistsError, match="--overwrite"):
        attach_emulator(copy, bundle.parent / "emu_onnx")
    with open(copy / "emulator.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"emulator\.onnx: sha256"):
        load_bundle(copy)


def test_pseudo_continuum_inputs_are_matched_by_a_smooth_factor(resim_bundle):
    """A pseudo-continuum bundle compares the model with its input after a smooth continuum match (40 A scale):
    an input that is the model times a slow continuum error gives chi2 ~ 1; without the match it is far off."""
    bundle_path, _, _ = resim_bundle
    resim = Resimulator(load_bundle(bundle_path))
    resim.model_error = 0.0
    names = schema.label_names()
    params = draw_labels(6, seed=12)[:, [names.index(n) for n in resim.names]]
    model = resim.model_flux(params)
    wave = resim.wavelength
    slow = 1.0 + 0.04 * np.sin(wave / 150.0) + 0.02 * (wave - wave.mean()) / np.ptp(wave)
    rng = np.random.default_rng(3)
    noisy = add_noise(model * slow, np.full(6, 200.0), load_bundle(bundle_path).manifest.raw["pixel_grid"][
        "pixel_width"], rng)
    resim.pseudo = False
    raw, _ = resim.check(noisy, np.full(6, 200.0), params)
    resim.pseudo = True
    matched, _ = resim.check(noisy, np.full(6, 200.0), params)
    assert np.all(raw > 2) and np.all(np.abs(matched - 1) < 0.05), (raw, matched)


def _reference_factor(flux: np.ndarray, model: np.ndarray, width: int, exclude: np.ndarray) -> np.ndarray:
    """The continuum factor as first written, pixel by pixel: box means by ``uniform_filter1d`` (mode "nearest"),
    twice more without the pixels beyond 3 sigma (1.4826 x the median absolute deviation of every 4th pixel)."""
    from scipy.ndimage import uniform_filter1d

    ratio = flux / model
    weight = (np.isfinite(ratio) & ~exclude).astype(float)
    ratio = np.where(weight > 0, ratio, 0.0)
    for clip in (True, True, False):
        norm = uniform_filter1d(weight, width, axis=1, mode="nearest")
        smooth = uniform_filter1d(ratio * weight, width, axis=1, mode="nearest") / np.maximum(norm, 1e-9)
        if not clip:
            return smooth
        deviation = np.abs(ratio - smooth)
        sample = np.where(weight[:, ::4] > 0, deviation[:, ::4], np.nan)
        weight *= deviation <= 3.0 * 1.4826 * np.nanmedian(sample, axis=1)[:, None]
    raise AssertionError("unreachable")


def test_continuum_factor_equals_the_per_pixel_box_filter():
    """On a known smooth factor times a line spectrum, with noise, a line the model lacks and masked bands (one wider
    than the 800-pixel box): the binned factor is the per-pixel one (the box filter it replaced) to 0.15 of the box
    mean's own noise, 1 / (S/N x sqrt(800)), rms (0.1 measured) and twice that noise at most (0.55 measured), at S/N
    200 and 20 per pixel (the trained range: 2-220), and at S/N 200 it finds the true factor to 1e-3 away from the
    edges."""
    rng = np.random.default_rng(7)
    wave = hr_grid().wave[hr_grid().segments[1]]
    model = np.stack([1.0 - 0.5 * np.exp(-0.5 * ((wave[:, None] - rng.uniform(wave[0], wave[-1], 300)) / 0.1) ** 2
                                         ).max(axis=1) for _ in range(4)])
    true = 1.0 + 0.05 * np.sin(wave / 150.0) + 0.1 * (wave - wave.mean()) / np.ptp(wave)
    exclude = ((wave > 6280.0) & (wave < 6300.0)) | ((wave > 6500.0) & (wave < 6560.0))
    flux = model * true
    flux[:, 5000:5010] *= 0.5  # a line the model gets wrong
    interior = (wave - wave[0] > 40.0) & (wave[-1] - wave > 40.0)
    for low, high in ((6280.0, 6300.0), (6500.0, 6560.0)):  # where the box is all on one side of a band
        interior &= (wave < low - 40.0) | (wave > high + 40.0)
    for snr in (200.0, 20.0):
        noisy = flux * (1.0 + rng.normal(0.0, 1.0 / snr, flux.shape))
        factor = continuum_factor(noisy.astype(np.float32), model.astype(np.float32), 800, exclude)
        relative = (factor / _reference_factor(noisy, model, 800, exclude) - 1)[:, ~exclude]
        box_noise = 1.0 / (snr * np.sqrt(800))
        assert np.sqrt(np.mean(relative**2)) < 0.15 * box_noise and np.abs(relative).max() < 2 * box_noise, snr
        if snr == 200.0:
            assert np.abs(factor / true - 1)[:, interior].max() < 1e-3
    matched = match_continuum(noisy, model, (slice(0, wave.size),), 800, exclude)
    np.testing.assert_allclose(matched, model * factor, rtol=1e-6)


def test_beside_pixels_all_left_out_the_mean_is_that_of_the_pixels_left():
    """Where the box sums at one bin edge hold no weight (a stretch wider than the box masked, or lost to the
    clipping) the mean in the bin beside it is that of the few pixels the box still holds, as per pixel, not a
    blend with the empty edge's 0; elsewhere the means are interpolated."""
    from runtime.resim import CONTINUUM_BIN, _interpolate_mean

    weight = np.array([[0.0, CONTINUUM_BIN, 2 * CONTINUUM_BIN, 2 * CONTINUUM_BIN]])  # the box fills up, then stays
    total = weight * np.array([[1.0, 1.0, 1.0, 1.2]])  # mean 1, then a slope
    mean = _interpolate_mean(total, weight, 3 * CONTINUUM_BIN)[0]
    assert mean[0] == 0.0 and np.allclose(mean[1:2 * CONTINUUM_BIN], 1.0, rtol=1e-6)
    np.testing.assert_allclose(mean[2 * CONTINUUM_BIN:], 1.0 + 0.2 * np.arange(CONTINUUM_BIN) / CONTINUUM_BIN,
                               rtol=1e-6)


@pytest.mark.parametrize("pseudo", [True, False])
def test_a_spectrum_gets_the_same_check_alone_as_in_a_batch(resim_bundle, pseudo):
    """chi2_resim and resim_rms of a spectrum are the same bits alone, in a batch of 16 (the runtime's) and in
    another order: rotation, continuum match and sums are all per spectrum."""
    bundle_path, _, _ = resim_bundle
    resim = Resimulator(load_bundle(bundle_path))
    resim.pseudo = pseudo
    params = draw_labels(16, seed=21)[:, [schema.label_names().index(n) for n in resim.names]]
    params[:4, resim.names.index("vbroad")] = [0.0, 0.5, 3.0, 80.0]  # as is, shifted sums, FFT
    rng = np.random.default_rng(5)
    model = resim.model_flux(params[::-1])  # another star's model: a poor fit for most
    snr = rng.uniform(20.0, 300.0, 16)
    flux = add_noise(model * (1.0 + 0.03 * np.sin(resim.wavelength / 90.0)), snr, 0.05, rng).astype(np.float32)
    chi2, rms = resim.check(flux, snr, params)
    for i in range(16):
        alone = resim.check(flux[i:i + 1], snr[i:i + 1], params[i:i + 1])
        assert alone[0][0] == chi2[i] and alone[1][0] == rms[i], i
    order = rng.permutation(16)
    np.testing.assert_array_equal(resim.check(flux[order], snr[order], params[order]), (chi2[order], rms[order]))


def _emulator_output(bundle_path, labels: np.ndarray) -> np.ndarray:
    """The bundle's emulator graph run directly by ONNX Runtime (float64): what the re-simulation rotates."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle_path / "emulator.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"labels": labels})[0].astype(np.float64)


def test_a_bundle_without_margin_rotates_on_its_own_pixels(resim_bundle):
    """No margin: no ``margin`` key in the entry, and the model is the emulator's output rotated on the bundle's own
    pixels (``PixelRotator`` on the bundle's grid, no crop, float32), within 5e-3 of the ln λ rotation at the old
    check's ``RESIM_DV`` (1 km/s: the two differ by that ln grid's own error, ``tests/test_rotation.py``)."""
    bundle_path, _, entry = resim_bundle
    assert "margin" not in entry
    bundle = load_bundle(bundle_path)
    resim = Resimulator(bundle)
    assert resim.margin == 0.0 and resim.n_output == bundle.wavelength.size
    assert isinstance(resim.rotator, PixelRotator)
    params = draw_labels(5, seed=13)[:, [schema.label_names().index(n) for n in resim.names]]
    raw = _emulator_output(bundle_path, resim.labels(params))
    vbroad = params[:, resim.names.index("vbroad")]
    expected = PixelRotator(_grid_of(bundle.wavelength), dtype=np.float32)(raw, vbroad)
    model = resim.model_flux(params)
    np.testing.assert_array_equal(model, expected)
    ln_grid = Rotator(_grid_of(bundle.wavelength), dv=RESIM_DV, dtype=np.float32)(raw, vbroad)
    assert np.abs(model - ln_grid).max() < 5e-3


def test_a_grid_not_uniform_in_wavelength_is_rotated_through_a_ln_grid():
    """``PixelRotator`` needs windows uniform in λ; a bundle on other pixels gets ``Rotator`` at ``RESIM_DV``."""
    uniform = _grid_of(hr_grid().wave)
    assert isinstance(_rotator_for(uniform), PixelRotator)
    logarithmic = _grid_of(np.geomspace(5000.0, 5600.0, 6000))
    rotator = _rotator_for(logarithmic)
    assert isinstance(rotator, Rotator) and rotator.dv == RESIM_DV and rotator.dtype == np.float32


def test_a_margin_emulator_is_rotated_on_its_margin_and_cropped_to_the_bundle_pixels(margin_bundle):
    """The exported emulator records its margin and HR pixels; attached to a bundle on the HR pixels the entry keeps
    the margin, and the model is the emulator's 25 360-pixel output rotated on the margin grid, then cropped to the
    bundle's 25 200 pixels (``hr_pixel_rotator``)."""
    bundle_path, exported, entry = margin_bundle
    output = json.loads((exported / "emulator.json").read_text())["output"]
    wide = hr_grid(GRID_MARGIN)
    assert output["margin"] == GRID_MARGIN and output["n_pixels"] == wide.size == 25_360
    assert output["pixel_grid_sha256"] == wide.sha256() and output["hr_pixel_grid_sha256"] == hr_grid().sha256()
    bundle = load_bundle(bundle_path)
    assert entry["margin"] == GRID_MARGIN and bundle.emulator["margin"] == GRID_MARGIN
    np.testing.assert_array_equal(bundle.wavelength, hr_grid().wave)
    resim = Resimulator(bundle)
    assert resim.n_output == 25_360
    params = draw_labels(5, seed=13)[:, [schema.label_names().index(n) for n in resim.names]]
    params[0, resim.names.index("vbroad")] = 0.0  # no rotation: the crop alone
    model = resim.model_flux(params)
    raw = _emulator_output(bundle_path, resim.labels(params))
    vbroad = params[:, resim.names.index("vbroad")]
    expected = hr_pixel_rotator(wide.wave, dtype=np.float32)(raw, vbroad)
    assert model.shape == (5, 25_200)
    np.testing.assert_array_equal(model, expected)
    np.testing.assert_allclose(model[0], raw[0, hr_rotator(wide.wave).keep], rtol=0, atol=1e-5)
    assert np.abs(model - hr_rotator(wide.wave, dv=RESIM_DV, dtype=np.float32)(raw, vbroad)).max() < 5e-3


def test_a_margin_bundle_runs_end_to_end_and_calibrates(margin_bundle, resim_bundle, tmp_path):
    """``runtime process`` tries the emulator (its 25 360-pixel output is what it expects) and writes chi2_resim
    for every row; the POOR_FIT calibration keeps the margin in the entry."""
    from export.resim import calibrate_poor_fit

    _, survey, _ = resim_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(margin_bundle[0], copy)
    process_survey(survey, copy, tmp_path / "held_out.zarr", OPTIONS, progress=False)
    chi2 = CatalogueStore.open(tmp_path / "held_out.zarr").column("chi2_resim")
    assert np.isfinite(chi2).all() and (chi2 > 0).all()
    entry = calibrate_poor_fit(copy, tmp_path / "held_out.zarr", percentile=90)
    assert entry["margin"] == GRID_MARGIN and entry["poor_fit_chi2"] == pytest.approx(np.percentile(chi2, 90))
    assert load_bundle(copy).emulator["margin"] == GRID_MARGIN


def _edit_manifest(bundle, change) -> None:
    """Change the bundle's manifest in place and record the new file hashes (a crafted bundle)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rehash_bundle(bundle)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_margin_that_does_not_fit_the_grids_is_refused_with_one_line(margin_bundle, resim_bundle, tiny_bundle,
                                                                       tmp_path):
    from export.resim import attach_emulator

    bundle_path, exported, _ = margin_bundle
    # an emulator.json whose margin contradicts its pixels
    lying = tmp_path / "lying"
    shutil.copytree(exported, lying)
    record = json.loads((lying / "emulator.json").read_text())
    record["output"]["margin"] = 1.0
    (lying / "emulator.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"records a 1\.0 A margin") as exc:
        attach_emulator(bundle_path, lying, overwrite=True)
    _one_line(exc)
    # a bundle whose pixels are not the HR pixels the margin surrounds
    shifted = tmp_path / "shifted"
    shutil.copytree(tiny_bundle[3], shifted)
    np.save(shifted / "wavelength.npy", np.load(shifted / "wavelength.npy") + 0.01)
    rehash_bundle(shifted)
    with pytest.raises(ValueError, match="nor an HR grid with a margin around it") as exc:
        attach_emulator(shifted, exported)
    _one_line(exc)
    shutil.copyfile(bundle_path / "emulator.onnx", shifted / "emulator.onnx")  # crafted: the entry put there by hand
    _edit_manifest(shifted, lambda m: m.update(emulator=load_bundle(bundle_path).emulator))
    with pytest.raises(ValueError, match="not the 4MOST HR grid") as exc:
        Resimulator(load_bundle(shifted))
    _one_line(exc)
    # margins that are no HR grid margin
    for bad in (-2.0, 0.03, True, "2"):
        broken = tmp_path / f"margin{bad!s}"
        shutil.copytree(bundle_path, broken)
        _edit_manifest(broken, lambda m, bad=bad: m["emulator"].update(margin=bad))
        with pytest.raises(BundleError, match=r"emulator\.margin must be a number >= 0") as exc:
            load_bundle(broken)
        _one_line(exc)
    # a valid margin that is not the emulator's: the run stops before the catalogue, naming the shapes
    wrong = tmp_path / "wrong"
    shutil.copytree(bundle_path, wrong)
    _edit_manifest(wrong, lambda m: m["emulator"].update(margin=1.0))
    with pytest.raises(BundleError, match=r"gives spectra of shape \(1, 25360\), expected \(1, 25280\)") as exc:
        process_survey(resim_bundle[1], wrong, tmp_path / "never.zarr", OPTIONS, progress=False)
    _one_line(exc)
    assert not (tmp_path / "never.zarr").exists()


def test_no_data_is_read_from_runs_of_the_fill_value_only():
    """Runs of >= NO_DATA_MIN_RUN exact fill values outside the excluded pixels are no data; a single exact value, a
    noisy spectrum near the continuum and excluded pixels are not."""
    from spectra.contracts.masks import NO_DATA_MIN_RUN, no_data_pixels

    flux = np.array([[0.9, 1.0, 0.8, 1.0, 1.0, 0.7, 1.0, 1.0, 1.0],
                     [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]], dtype=np.float32)
    assert NO_DATA_MIN_RUN == 2
    np.testing.assert_array_equal(no_data_pixels(flux), [[0, 0, 0, 1, 1, 0, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0, 0, 0]])
    exclude = np.zeros(9, dtype=bool)
    exclude[4] = True
    np.testing.assert_array_equal(no_data_pixels(flux, exclude)[0], [0, 0, 0, 0, 0, 0, 1, 1, 1])
    noisy = (1.0 + 0.005 * np.random.default_rng(0).standard_normal((200, 25_200))).astype(np.float32)
    assert not no_data_pixels(noisy).any()


def test_pixels_without_data_are_filled_by_the_model_and_left_out_of_chi2(resim_bundle):
    """Rows with a run of exact 1.0 (``spectra ingest``'s fill for a detector gap) get NO_DATA_FILLED, their last
    posterior is the one drawn from the input with the gap at the model's expectation (``network_input``, what
    ``Model.posterior`` samples), chi2_resim leaves the gap out, and rows without gaps are untouched; every row gets
    the same values alone as in a batch. Without the emulator (resim off) nothing is filled, as before."""
    from runtime.api import load_model
    from runtime.inference import InferenceSettings, network_input

    bundle_path, survey, _ = resim_bundle
    model = load_model(bundle_path, precision="fp32", device="cpu")
    import zarr

    root = zarr.open_group(str(survey), mode="r")
    flux, snr = np.asarray(root["flux"][:6], dtype=np.float32), np.asarray(root["snr"][:6], dtype=float)
    ids = np.arange(6)
    gap = (model.wavelength > 5303) & (model.wavelength < 5338)
    holed = flux.copy()
    holed[[1, 4]] = np.where(gap, np.float32(1.0), flux[[1, 4]])
    table = model.infer(holed, snr, ids, samples=256)
    plain = model.infer(flux, snr, ids, samples=256)
    filled = (np.asarray(table["flags"]) & Flag.NO_DATA_FILLED) != 0
    np.testing.assert_array_equal(filled, [False, True, False, False, True, False])
    for name in ("teff", "logg", "chi2_resim"):
        np.testing.assert_array_equal(np.asarray(table[name])[~filled], np.asarray(plain[name])[~filled])
    resim = model._resimulator()
    sampler = model._posterior(256)
    for row in (1, 4):
        seen = network_input(sampler, resim, holed[row:row + 1], snr[row:row + 1], ids[row:row + 1],
                             InferenceSettings(samples=256))
        assert np.all(seen[0, ~gap] == holed[row, ~gap]) and np.any(seen[0, gap] != 1.0)
        # the catalogue row is that input's posterior (resim off: this small emulator's continuum is exactly 1.0
        # in places, which would read as a gap again)
        again = model.infer(seen, snr[row:row + 1], ids[row:row + 1], samples=256, resim=False)
        assert float(again["teff"][0]) == float(table["teff"][row])
        posterior = model.posterior(holed[row], snr[row], row, samples=256)
        assert posterior.map[model.names.index("teff")] == pytest.approx(float(table["teff"][row]), abs=1e-3)
        params = np.array([[float(table[n][row]) for n in model.names]])
        chi2, _ = resim.check(np.where(gap, np.float32(np.nan), holed[row])[None], snr[row:row + 1], params)
        assert float(table["chi2_resim"][row]) == pytest.approx(float(chi2[0]), rel=1e-5)
        alone = model.infer(holed[row:row + 1], snr[row:row + 1], ids[row:row + 1], samples=256)
        assert float(alone["teff"][0]) == float(table["teff"][row])
    unfilled = model.infer(holed, snr, ids, samples=256, resim=False)
    assert not np.any(np.asarray(unfilled["flags"]) & Flag.NO_DATA_FILLED)
    assert np.any(np.asarray(unfilled["teff"])[filled] != np.asarray(table["teff"])[filled])
