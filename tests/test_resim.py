"""Re-simulation at the MAP: the bundle's emulator, chi2_resim / resim_rms, and the calibrated POOR_FIT flag."""

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
from runtime.resim import Resimulator, reduced_chi2
from spectra import schema
from spectra.contracts.flags import Flag
from spectra.forward.degrade import add_noise
from spectra.prior import draw_labels
from spectra.stores.survey import make_survey, parse_snr
from training.emulator import EMULATOR_INPUTS, EmulatorConfig, fit_emulator

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


def test_chi2_is_one_on_noisy_emulated_spectra_at_their_own_parameters(resim_bundle):
    """Spectra made by the bundle's own model (emulator + rotation) with the training noise model: chi2_resim at
    the true parameters is 1 within its statistical scatter, at every S/N; a wrong model is far above."""
    bundle_path, _, _ = resim_bundle
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
    np.testing.assert_allclose(chi2, [1.0, 1.0])
    np.testing.assert_allclose(rms, [0.1, 0.1])


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
