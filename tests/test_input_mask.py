"""The input mask (issue 20, tellurics): the telluric O₂ band and the Hα core never reach the network, in training and
in inference (API and ``runtime process`` alike), are recorded in the bundle's manifest, checked on load, and left out
of the re-simulation chi2; bundles and runs made before the mask existed behave as before."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_emulator import _grid  # noqa: E402

from catalog.writers import read_table  # noqa: E402
from runtime.bundle import BundleError, load_bundle  # noqa: E402
from spectra.contracts.masks import (  # noqa: E402
    INPUT_MASKS,
    LSF_REACH,
    TELLURIC_PAD,
    TELLURIC_VELOCITY_KMS,
    band_mask,
    input_mask,
    mask_from_record,
    mask_sha256,
)
from spectra.wavegrid import hr_grid  # noqa: E402

from conftest import labelled_grid, rehash_bundle  # noqa: E402

C_KMS = 299_792.458
SAMPLES = 64


def _garbage(flux: np.ndarray, mask: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Copies of ``flux`` whose masked pixels hold telluric-like absorption, or NaN-free junk of any sign and size."""
    rng = np.random.default_rng(seed)
    telluric, junk = flux.copy(), flux.copy()
    telluric[:, mask] *= 1.0 - 0.8 * rng.random((flux.shape[0], int(mask.sum())))
    junk[:, mask] = rng.uniform(-5.0, 20.0, (flux.shape[0], int(mask.sum())))
    return {"telluric": telluric.astype(flux.dtype), "junk": junk.astype(flux.dtype)}


# --- the contract --------------------------------------------------------------------------------------------------


def test_the_mask_covers_the_o2_band_and_the_halpha_core_shifted_to_rest_and_nothing_far_from_them():
    wave = hr_grid().wave
    mask, record = input_mask(wave)
    assert record["n_masked"] == int(mask.sum()) == 1128 and record["n_pixels"] == wave.size
    # the O2 gamma band wherever a star's velocity (|v_topo| <= 150 km/s) puts it in the rest frame, plus the LSF
    for v in (-TELLURIC_VELOCITY_KMS, 0.0, TELLURIC_VELOCITY_KMS):
        lo, hi = 6276.0 / (1 + v / C_KMS) - LSF_REACH, 6320.0 / (1 + v / C_KMS) + LSF_REACH
        assert mask[(wave >= lo) & (wave <= hi)].all(), v
    assert mask[(wave >= 6561.8 - LSF_REACH) & (wave <= 6563.8 + LSF_REACH)].all()  # the H-alpha core (at rest)
    near = ((wave > 6276.0 - TELLURIC_PAD - 0.01) & (wave < 6320.0 + TELLURIC_PAD + 0.01)) | (
        (wave > 6561.8 - LSF_REACH - 0.01) & (wave < 6563.8 + LSF_REACH + 0.01))
    assert not mask[~near].any()  # nothing else: not the H-alpha wings, not the green window
    assert not mask[(wave > 6555.0) & (wave < 6559.0)].any() and not mask[wave < 6100.0].any()
    assert TELLURIC_PAD == 4.2 and TELLURIC_PAD >= 6320.0 * TELLURIC_VELOCITY_KMS / C_KMS + LSF_REACH
    assert record["fill"] == {"rule": "constant", "value": 1.0} and record["sha256"] == mask_sha256(mask)
    assert [b["kind"] for b in record["bands"]] == ["telluric", "chromospheric"]
    assert "H2O" in record["description"]  # says what is not masked
    again, fill = mask_from_record(json.loads(json.dumps(record)), wave)  # JSON-able and recomputable
    np.testing.assert_array_equal(again, mask)
    assert fill == 1.0 and set(INPUT_MASKS) == {"model-invalid", "telluric"}
    telluric_only, _ = input_mask(wave, "telluric")  # the O2 band alone: the same band, not the H-alpha core
    halpha = (wave >= 6561.8 - LSF_REACH) & (wave <= 6563.8 + LSF_REACH)
    np.testing.assert_array_equal(telluric_only, mask & ~halpha)


def test_a_record_that_does_not_describe_the_pixels_is_refused_in_one_line():
    wave = hr_grid().wave
    _, record = input_mask(wave)
    cases = {
        "n_pixels": lambda r: r.update(n_pixels=100),
        "sha256": lambda r: r.update(sha256="0" * 64),
        "n_masked": lambda r: r.update(n_masked=5),
        "fill": lambda r: r.update(fill={"rule": "model", "value": 1.0}),
        "bands": lambda r: r["bands"][0].update(pad=-1.0),
    }
    for field, change in cases.items():
        bad = json.loads(json.dumps(record))
        change(bad)
        with pytest.raises(ValueError, match=rf"input_mask\.{field}") as exc:
            mask_from_record(bad, wave)
        assert "\n" not in str(exc.value)
    bad = json.loads(json.dumps(record))  # the bands changed and the count made to fit: the sha256 still tells
    bad["bands"][0]["pad"] = 3.0
    bad["n_masked"] = int((band_mask(wave, ((6276.0, 6320.0),), 3.0) | band_mask(wave, ((6561.8, 6563.8),))).sum())
    with pytest.raises(ValueError, match=r"input_mask\.sha256"):
        mask_from_record(bad, wave)


# --- training ------------------------------------------------------------------------------------------------------


def test_configs_mask_by_default_and_runs_saved_before_the_field_load_without_a_mask(tmp_path):
    from training.config import CONFIGS, Config, load_config
    from training.fit import load_run, save_untrained_run

    assert all(c.input_mask == "model-invalid" for c in CONFIGS.values())
    with pytest.raises(ValueError, match="input_mask 'ozone' is not defined"):
        load_config("tiny", input_mask="ozone")
    config = replace(CONFIGS["tiny"], feature_layers=(8,), n_blocks=1, subnet_width=8)
    _, run = save_untrained_run(replace(config, input_mask=None), 25_200, 13, tmp_path / "old")
    state = torch.load(run / "best.pt", weights_only=False)
    del state["config"]["input_mask"]  # a run saved before the field existed
    torch.save(state, run / "best.pt")
    loaded, loaded_config, _ = load_run(run)
    assert loaded_config.input_mask is None and not hasattr(loaded, "input_mask")
    assert Config(name="x").input_mask == "model-invalid"


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """The `tiny` cINN trained for 2 epochs on the labelled grid with the default input mask, exported, with a small
    emulator attached: (grid, run, bundle)."""
    from export.emulator import export_emulator
    from export.onnx import export_bundle
    from export.resim import attach_emulator
    from training.config import CONFIGS
    from training.emulator import EmulatorConfig, fit_emulator
    from training.fit import fit

    tmp = tmp_path_factory.mktemp("masked")
    grid = labelled_grid.__wrapped__(tmp)
    fit(grid, replace(CONFIGS["tiny"], epochs=2), tmp / "run", device="cpu", progress=False)
    bundle = export_bundle(tmp / "run", tmp / "bundle")
    fit_emulator([_grid(tmp / "emu.h5", 24, seed=3)], tmp / "emu", EmulatorConfig(hidden=(16, 16), steps=30,
                                                                                  log_every=10), progress=False)
    attach_emulator(bundle, export_emulator(tmp / "emu", tmp / "emu_onnx"))
    return grid, tmp / "run", bundle


def _noisy(grid, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    from spectra.forward.degrade import add_noise
    from spectra.stores.gridstore import GridReader

    with GridReader(grid) as reader:
        clean = reader.hr_flux(np.arange(n)).astype(float)
    snr = np.array([250.0, 50.0, 100.0, 20.0, 500.0, 80.0])[:n]
    return add_noise(clean, snr, 0.05, np.random.default_rng(1)).astype(np.float32), snr


def test_the_run_records_the_mask_and_the_model_gives_masked_pixels_no_weight(masked):
    from training.fit import load_run

    grid, run, _ = masked
    model, config, meta = load_run(run)
    mask, record = input_mask(hr_grid().wave)
    assert config.input_mask == "model-invalid" and meta["input_mask"] == record
    np.testing.assert_array_equal(model.input_mask.numpy(), mask)
    flux, snr = _noisy(grid, 4)
    snr = snr.reshape(-1, 1).astype(np.float32)
    with torch.no_grad():
        expected = model.features(torch.from_numpy(flux), torch.from_numpy(snr))
        for garbage in _garbage(flux, mask, 2).values():
            torch.testing.assert_close(model.features(torch.from_numpy(garbage), torch.from_numpy(snr)), expected,
                                       rtol=0, atol=0)
    f = torch.from_numpy(flux).requires_grad_(True)
    model.features(f, torch.from_numpy(snr)).sum().backward()
    assert (f.grad[:, mask] == 0).all() and (f.grad[:, ~mask] != 0).any()
    # standardised from masked draws: a masked pixel enters the feature extractor as exactly 0
    assert torch.all(model.flux_mean[mask] == 1.0)


def test_the_stream_workers_fill_masked_pixels_before_the_network_and_the_principal_components(tmp_path):
    from training.emulator import EmulatorConfig, fit_emulator
    from training.stream import EmulatedData, StreamSpec, pca_basis

    fit_emulator([_grid(tmp_path / "train.h5", 24, seed=1)], tmp_path / "emu",
                 EmulatorConfig(hidden=(16, 16), steps=30, log_every=10), progress=False)
    mask, _ = input_mask(hr_grid().wave)
    plain_spec = StreamSpec(str(tmp_path / "emu"), stars=2, copies=2)
    spec = replace(plain_spec, input_mask="model-invalid")
    plain, masked_stream = EmulatedData(plain_spec), EmulatedData(spec)
    a, b = next(plain.batches([[0, 0]])), next(masked_stream.batches([[0, 0]]))
    plain.close()
    masked_stream.close()
    assert (b[0][:, mask] == 1.0).all() and not (a[0][:, mask] == 1.0).all()
    np.testing.assert_array_equal(a[0][:, ~mask], b[0][:, ~mask])  # same stars, same noise elsewhere
    mean, basis, _ = pca_basis(spec, 16, 4, progress=False)
    assert np.all(mean[mask] == 1.0) and np.abs(basis[:, mask]).max() < 1e-6


# --- the bundle ----------------------------------------------------------------------------------------------------


def test_export_records_the_mask_and_verify_passes(masked):
    from export.verify import FP32_TOLERANCE, verify_bundle

    _, run, bundle_path = masked
    raw = json.loads((bundle_path / "manifest.json").read_text())
    _, record = input_mask(hr_grid().wave)
    assert raw["input_mask"] == record and raw["provenance"]["config"]["input_mask"] == "model-invalid"
    bundle = load_bundle(bundle_path)
    np.testing.assert_array_equal(bundle.input_mask, input_mask(bundle.wavelength)[0])
    assert bundle.input_fill == 1.0
    report = verify_bundle(bundle_path, run, n_samples=256)  # torch (mask in the model) = ONNX (graph + runtime)
    assert report.worst <= FP32_TOLERANCE, "\n".join(report.lines())


def test_export_refuses_a_run_whose_recorded_mask_is_not_the_models(masked, tmp_path):
    from export.onnx import export_bundle

    _, run, _ = masked
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "run.json").read_text())
    meta["input_mask"]["bands"][0]["pad"] = 1.0
    (copy / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="input_mask") as exc:
        export_bundle(copy, tmp_path / "bundle")
    assert "\n" not in str(exc.value) and not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(n_pixels=25_100), "input_mask.n_pixels is 25100; the pixel grid has 25200"),
    (lambda e: e.update(sha256="ab" * 32), "input_mask.sha256 abababab"),
    (lambda e: e["bands"][0].update(pad=2.0), "input_mask.n_masked"),
    (lambda e: e.update(fill={"rule": "constant", "value": "one"}), "input_mask.fill must be"),
    (lambda e: e.update(fill=1.0), "input_mask.fill must be"),
    (lambda e: e.pop("bands"), "input_mask.bands must list"),
])
def test_a_tampered_manifest_entry_is_refused_in_one_line(masked, tmp_path, change, message):
    copy = tmp_path / "bundle"
    shutil.copytree(masked[2], copy)
    raw = json.loads((copy / "manifest.json").read_text())
    change(raw["input_mask"])
    (copy / "manifest.json").write_text(json.dumps(raw))
    rehash_bundle(copy)
    with pytest.raises(BundleError, match="manifest.json: " + message.replace(".", r"\.")) as exc:
        load_bundle(copy)
    assert "\n" not in str(exc.value)


# --- inference -----------------------------------------------------------------------------------------------------


def test_masked_pixels_change_nothing_through_the_api(masked):
    from runtime import load_model

    grid, _, bundle = masked
    model = load_model(bundle, device="cpu", precision="fp32", engine="onnxruntime")
    mask = model.bundle.input_mask
    flux, snr = _noisy(grid)
    expected = model.infer(flux, snr, seed=3, samples=SAMPLES)
    assert np.isfinite(np.asarray(expected["chi2_resim"])).all() and np.isfinite(np.asarray(expected["teff"])).all()
    for label, garbage in _garbage(flux, mask, 4).items():
        table = model.infer(garbage, snr, seed=3, samples=SAMPLES)
        for name in expected.colnames:
            np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(expected[name]),
                                          err_msg=f"{label} {name}")
        post = model.posterior(garbage[0], snr[0], seed=3, samples=SAMPLES)
        np.testing.assert_array_equal(post.samples, model.posterior(flux[0], snr[0], seed=3, samples=SAMPLES).samples)
    blanked = flux.copy()
    blanked[:, mask] = np.nan  # a pipeline that blanks its tellurics: not an invalid spectrum here
    table = model.infer(blanked, snr, seed=3, samples=SAMPLES)
    np.testing.assert_array_equal(np.asarray(table["teff"]), np.asarray(expected["teff"]))
    np.testing.assert_array_equal(np.asarray(table["flags"]), np.asarray(expected["flags"]))
    # the network does see the other pixels
    other = flux.copy()
    other[:, ~mask] = np.clip(other[:, ~mask] * 0.9, 0.0, None)
    assert not np.array_equal(np.asarray(model.infer(other, snr, seed=3, samples=SAMPLES)["teff"]),
                              np.asarray(expected["teff"]))


def test_runtime_process_ignores_masked_pixels_and_agrees_with_the_api(masked, tmp_path):
    import zarr

    from runtime import load_model
    from runtime.pipeline import ProcessOptions, process_survey
    from spectra.stores.survey import make_survey, parse_snr

    grid, _, bundle = masked
    survey = make_survey(grid, parse_snr("50,250"), tmp_path / "survey.zarr", seed=4, chunk=16, progress=False)
    mask = load_bundle(bundle).input_mask
    options = ProcessOptions(samples=SAMPLES, seed=5, device="cpu", precision="fp32")
    process_survey(survey, bundle, tmp_path / "clean.zarr", options, progress=False)
    expected = read_table(tmp_path / "clean.zarr")
    assert np.isfinite(np.asarray(expected["teff"])).all() and np.isfinite(np.asarray(expected["chi2_resim"])).all()
    source = zarr.open_group(str(survey), mode="r")
    flux, snr, ids = source["flux"][:], source["snr"][:], source["source_id"][:]
    for label, garbage in _garbage(flux, mask, 6).items():
        copy = tmp_path / f"{label}.zarr"
        shutil.copytree(survey, copy)
        zarr.open_group(str(copy), mode="r+")["flux"][:] = garbage
        assert not np.array_equal(zarr.open_group(str(copy), mode="r")["flux"][:], flux)
        process_survey(copy, bundle, tmp_path / f"{label}_cat.zarr", options, progress=False)
        table = read_table(tmp_path / f"{label}_cat.zarr")
        for name in expected.colnames:
            np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(expected[name]),
                                          err_msg=f"{label} {name}")
    model = load_model(bundle, device="cpu", precision="fp32", engine="onnxruntime")
    api = model.infer(_garbage(flux, mask, 7)["junk"], snr, ids, seed=5, samples=SAMPLES,
                      continuum=source.attrs.get("continuum_kind"))
    for name in ("teff", "logg_p16", "fe_h_p84", "chi2_resim", "resim_rms", "flags"):
        np.testing.assert_array_equal(np.asarray(api[name]), np.asarray(expected[name]), err_msg=name)


def test_chi2_resim_leaves_the_masked_pixels_out(masked):
    from runtime.resim import Resimulator, reduced_chi2
    from spectra import schema
    from spectra.forward.degrade import add_noise
    from spectra.prior import draw_labels

    bundle = load_bundle(masked[2])
    resim = Resimulator(bundle)
    mask = resim.exclude
    np.testing.assert_array_equal(mask, bundle.input_mask)
    names = schema.label_names()
    params = draw_labels(4, seed=12)[:, [names.index(n) for n in resim.names]]
    snr = np.full(4, 150.0)
    flux = add_noise(resim.model_flux(params), snr, 0.05, np.random.default_rng(3))
    for pseudo in (True, False):
        resim.pseudo = pseudo
        chi2, rms = resim.check(flux, snr, params)
        for garbage in _garbage(flux, mask, 8).values():
            np.testing.assert_array_equal(resim.check(garbage, snr, params), (chi2, rms))
    # without the mask the same garbage would count, and reduced_chi2 without ``exclude`` is unchanged
    model = resim.model_flux(params)
    junk = _garbage(flux, mask, 8)["junk"]
    assert np.all(reduced_chi2(junk, model, snr * 0.2236)[0] > 10 * reduced_chi2(junk, model, snr * 0.2236,
                                                                                exclude=mask)[0])
    np.testing.assert_array_equal(reduced_chi2(flux, model, snr), reduced_chi2(flux, model, snr, 0.0, None))


# --- bundles without the key ---------------------------------------------------------------------------------------


def test_a_bundle_without_the_key_uses_every_pixel_as_before(tiny_bundle):
    """The shared test bundle (trained with input_mask None) has no entry: no mask, the flux untouched, the masked
    pixels reaching the network and the chi2 as every other pixel. The packaged default model (session 11) records
    the model-invalid mask, which its re-simulation check leaves out as well."""
    from runtime.packaged import default_bundle
    from runtime.resim import Resimulator
    from runtime.sampler import OnnxPosterior

    _, grid, _, path = tiny_bundle
    default = load_bundle(default_bundle(), check_graphs=False)
    assert default.manifest.raw["input_mask"]["name"] == "model-invalid"
    assert default.input_mask is not None and Resimulator(default).exclude is not None
    bundle = load_bundle(path)
    assert "input_mask" not in bundle.manifest.raw and bundle.input_mask is None
    flux, snr = _noisy(grid, 2)
    assert bundle.mask_input(flux) is flux and bundle.used_pixels(flux) is flux
    mask, _ = input_mask(bundle.wavelength)
    posterior = OnnxPosterior(bundle)
    snr = snr.reshape(-1, 1).astype(np.float32)
    assert not np.array_equal(posterior.features(_garbage(flux, mask, 9)["junk"], snr), posterior.features(flux, snr))
