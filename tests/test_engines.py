"""The second CPU engine (OpenVINO): same posteriors, same determinism, verified bf16, chosen by the machine."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from catalog.writers import CatalogueStore
from runtime import engines, precision
from runtime.bundle import VARIANT_TOLERANCE, VARIANT_WORST_TOLERANCE, BundleError, load_bundle, write_manifest
from runtime.pipeline import ProcessOptions, process_survey
from runtime.precision import choose_engine, describe_check, posterior_differences, variant_check, within_tolerance
from runtime.sampler import OnnxPosterior
from spectra.stores.survey import make_survey, parse_snr

from conftest import rehash_bundle

OPTIONS = ProcessOptions(samples=512, seed=7, device="cpu", engine="openvino")


@pytest.fixture(scope="module")
def verified(tiny_bundle, tmp_path_factory):
    """A copy of the trained test bundle with OpenVINO bf16 verified (and an int8 variant), and a survey."""
    from export.variants import quantize_bundle, quantize_engine

    _, grid, _, bundle = tiny_bundle
    tmp = tmp_path_factory.mktemp("engines")
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    quantize_bundle(copy, ["int8"], grid=grid, n_spectra=6, log=lambda *_: None)
    quantize_engine(copy, "openvino", ["bf16"], grid=grid, n_spectra=6, log=lambda *_: None)
    survey = make_survey(grid, parse_snr("50,250"), tmp / "survey.zarr", seed=2, chunk=16, progress=False)
    return copy, survey, grid


def _flux(grid, n=6):
    from spectra.stores.gridstore import GridReader

    with GridReader(grid) as reader:
        return reader.flux[:n, :].astype(np.float32)


def test_openvino_fp32_posterior_equals_onnxruntime(tiny_bundle):
    _, grid, _, bundle_path = tiny_bundle
    bundle = load_bundle(bundle_path)
    flux = _flux(grid)
    snr, ids = np.full(len(flux), 100.0), np.arange(len(flux)) + 3
    ort = OnnxPosterior(bundle, threads=1, summary="host").posterior(flux, snr, ids, 5, 1024)
    ov = OnnxPosterior(bundle, threads=1, summary="host", engine="openvino").posterior(flux, snr, ids, 5, 1024)
    half = 0.5 * (ort.quantiles[:, 3] - ort.quantiles[:, 1])
    assert np.all(ort.n_valid == ov.n_valid)
    assert np.nanmax(np.abs(ov.quantiles - ort.quantiles) / half[:, None, :]) < 1e-3
    assert np.nanmax(np.abs(ov.map - ort.map) / half) < 1e-3


def test_bf16_verification_recorded_and_within_tolerance(verified):
    bundle_path, _, _ = verified
    bundle = load_bundle(bundle_path)
    entry = bundle.manifest.engine_precisions["openvino"]["bf16"]
    check = entry["verification"]
    assert check["passed"] and within_tolerance(check) and check["nonfinite"] == 0
    assert 0 < check["quantile_error_p99"] <= VARIANT_TOLERANCE and check["quantile_error"] <= VARIANT_WORST_TOLERANCE
    assert check["provider"] == "OpenVINO CPU (bf16)"
    assert entry["verified_on"]["openvino"] == engines.engine_version("openvino")
    assert entry["verified_on"]["arithmetic"].startswith("hardware" if engines.bf16_hardware() else "emulated")
    assert not [f for f in bundle.manifest.raw["files"] if "openvino" in f]  # a hint, not a file


def test_bf16_map_is_chosen_on_exact_densities(verified):
    """The MAP of a bf16 run is the fp32 MAP (its candidates are recomputed in fp32), quantiles within tolerance."""
    bundle_path, _, grid = verified
    bundle = load_bundle(bundle_path)
    flux = _flux(grid)
    snr, ids = np.full(len(flux), 250.0), np.arange(len(flux)) + 1
    ref = OnnxPosterior(bundle, threads=1, summary="host").posterior(flux, snr, ids, 1, 4096)
    bf16 = OnnxPosterior(bundle, threads=1, summary="host", engine="openvino", precision="bf16")
    got = bf16.posterior(flux, snr, ids, 1, 4096)
    half = 0.5 * (ref.quantiles[:, 3] - ref.quantiles[:, 1])
    assert np.nanmax(np.abs(got.map - ref.map) / half) < 1e-3
    assert np.all(got.n_valid == ref.n_valid)  # acceptance decided on exact values near the bounds
    check = variant_check(*posterior_differences(ref.quantiles, ref.map, got.quantiles, got.map))
    assert check["quantile_error"] > 0  # bf16 really ran (not bit-equal to fp32)
    assert within_tolerance(check), describe_check(check)


def test_determinism_over_chunks_batches_and_workers(verified, tmp_path):
    bundle, survey, _ = verified
    options = replace(OPTIONS, precision="bf16", batch=5)
    process_survey(survey, bundle, tmp_path / "a.zarr", options, chunk=16, progress=False)
    process_survey(survey, bundle, tmp_path / "b.zarr", replace(options, batch=3), chunk=40, progress=False)
    process_survey(survey, bundle, tmp_path / "c.zarr", options, workers=2, progress=False)
    a, b, c = (CatalogueStore.open(tmp_path / f"{k}.zarr") for k in "abc")
    assert (a.attrs["engine"], a.attrs["precision"]) == ("openvino", "bf16")
    for name in a.columns:
        np.testing.assert_array_equal(a.column(name), b.column(name), err_msg=f"{name} a-b")
        np.testing.assert_array_equal(a.column(name), c.column(name), err_msg=f"{name} a-c")


def test_openvino_features_do_not_depend_on_block_mates_or_position(verified):
    """Under OpenVINO the once-per-spectrum graphs run in fixed blocks of OPENVINO_BLOCK spectra: a spectrum's
    features are the same bits alone (a block of copies of itself), at any place in a block, and beside others."""
    from runtime.sampler import OPENVINO_BLOCK

    bundle, _, grid = verified
    n = OPENVINO_BLOCK + 3
    flux = np.resize(_flux(grid), (n, 25_200))
    flux[6:] *= np.linspace(0.97, 1.0, n - 6, dtype=np.float32)[:, None]  # other spectra, not repeats
    snr = np.linspace(30.0, 300.0, n)
    posterior = OnnxPosterior(load_bundle(bundle), threads=1, summary="host", engine="openvino", precision="bf16")
    together = posterior.features(flux, snr)
    shifted = posterior.features(flux[3:], snr[3:])
    np.testing.assert_array_equal(shifted, together[3:])
    for i in (0, 5, n - 1):
        np.testing.assert_array_equal(posterior.features(flux[i:i + 1], snr[i:i + 1])[0], together[i])
    projected = posterior.projection(together)
    np.testing.assert_array_equal(posterior.projection(together[2:3])[0], projected[2])


def test_catalogue_records_engine_and_resume_insists_on_it(verified, tmp_path):
    bundle, survey, _ = verified
    out = tmp_path / "c.zarr"
    report = process_survey(survey, bundle, out, replace(OPTIONS, precision="bf16"), chunk=16, progress=False)
    assert (report.engine, report.precision) == ("openvino", "bf16")
    attrs = CatalogueStore.open(out).attrs
    assert attrs["engine_version"] == f"openvino {engines.engine_version('openvino')}"
    assert attrs["cpu_features"] == list(engines.cpu_features())
    assert attrs["precision_verification"]["provider"] == "OpenVINO CPU (bf16)"
    with pytest.raises(ValueError, match=r"made with (engine|precision) = .*give --engine openvino --precision bf16"):
        process_survey(survey, bundle, out, replace(OPTIONS, engine="onnxruntime", precision="fp32"), resume=True,
                       progress=False)
    with pytest.raises(ValueError, match="precision"):
        process_survey(survey, bundle, out, replace(OPTIONS, precision="fp32"), resume=True, progress=False)


def test_bf16_above_tolerance_or_unverified_is_refused_unless_forced(verified, tiny_bundle, tmp_path):
    bundle, survey, _ = verified
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["engine_precisions"]["openvino"]["bf16"]["verification"]["quantile_error"] = 0.2
    write_manifest(copy, raw)
    with pytest.raises(BundleError, match=r"refusing openvino bf16.*0\.200.*--force-precision"):
        process_survey(survey, copy, tmp_path / "x.zarr", replace(OPTIONS, precision="bf16"), progress=False)
    assert not (tmp_path / "x.zarr").exists()
    forced = process_survey(survey, copy, tmp_path / "f.zarr", replace(OPTIONS, precision="bf16",
                                                                        force_precision=True), progress=False)
    assert forced.precision == "bf16" and CatalogueStore.open(tmp_path / "f.zarr").attrs["precision_forced"]
    _, _, _, plain = tiny_bundle
    with pytest.raises(BundleError, match=r"no verification recorded.*export quantize.*--engine openvino"):
        process_survey(survey, plain, tmp_path / "y.zarr", replace(OPTIONS, precision="bf16"), progress=False)
    with pytest.raises(BundleError, match="int8 and fp16 run on --engine onnxruntime"):
        process_survey(survey, plain, tmp_path / "z.zarr", replace(OPTIONS, precision="int8"), progress=False)


def test_auto_picks_openvino_bf16_only_where_it_is_the_fastest(verified, monkeypatch, tmp_path):
    """AMX: openvino bf16; AVX-512 BF16 alone: ONNX Runtime int8 when verified, else openvino bf16; no bf16
    units: ONNX Runtime's auto (what ran before engines)."""
    bundle = load_bundle(verified[0])
    monkeypatch.setattr(precision, "bf16_hardware", lambda: True)
    monkeypatch.setattr(precision, "amx_hardware", lambda: False)  # Zen 4: AVX-512 BF16, no AMX
    assert choose_engine(bundle, "auto", "auto", "cpu") == ("onnxruntime", "int8")
    assert choose_engine(bundle, "auto", "bf16", "cpu") == ("openvino", "bf16")
    copy = tmp_path / "no_int8"
    shutil.copytree(verified[0], copy)
    raw = json.loads((copy / "manifest.json").read_text())
    (copy / raw["precisions"].pop("int8")["files"]["hoisted_flow"]).unlink()
    (copy / "manifest.json").write_text(json.dumps(raw))
    rehash_bundle(copy)
    without_int8 = load_bundle(copy)
    assert choose_engine(without_int8, "auto", "auto", "cpu") == ("openvino", "bf16")  # beats ONNX Runtime fp32
    monkeypatch.setattr(precision, "amx_hardware", lambda: True)
    assert choose_engine(bundle, "auto", "auto", "cpu") == ("openvino", "bf16")
    assert choose_engine(bundle, "openvino", "auto", "cpu") == ("openvino", "bf16")
    assert choose_engine(bundle, "onnxruntime", "auto", "cpu") == ("onnxruntime", "int8")
    assert choose_engine(bundle, "auto", "fp32", "cpu") == ("onnxruntime", "fp32")
    assert choose_engine(bundle, "auto", "auto", "cuda") == ("onnxruntime", "fp32")  # no fp16 variant here
    monkeypatch.setattr(precision, "openvino_available", lambda: False)
    assert choose_engine(bundle, "auto", "auto", "cpu") == ("onnxruntime", "int8")
    monkeypatch.setattr(precision, "openvino_available", lambda: True)
    monkeypatch.setattr(precision, "bf16_hardware", lambda: False)  # bf16 emulated in software: ~20x slower
    assert choose_engine(bundle, "auto", "auto", "cpu") == ("onnxruntime", "int8")  # what ran before engines
    assert choose_engine(bundle, "openvino", "auto", "cpu") == ("openvino", "fp32")
    with pytest.raises(ValueError, match="--engine openvino runs on the CPU"):
        choose_engine(bundle, "openvino", "auto", "cuda")


def test_cpu_features_and_manifest_validation(verified, tmp_path):
    assert set(engines.cpu_features()) <= set(engines.CPU_FEATURES)
    assert engines.bf16_hardware(("amx_bf16",)) and engines.bf16_hardware(("avx512_bf16",))
    assert not engines.bf16_hardware(("avx512_vnni", "avx512f"))
    copy = tmp_path / "bundle"
    shutil.copytree(verified[0], copy)
    raw = json.loads((copy / "manifest.json").read_text())
    for bad, message in ((("tensorflow", "bf16"), "unknown engine"), (("openvino", "int8"), "openvino runs bf16")):
        broken = json.loads(json.dumps(raw))
        broken["engine_precisions"] = {bad[0]: {bad[1]: raw["engine_precisions"]["openvino"]["bf16"]}}
        (copy / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(BundleError, match=message):
            load_bundle(copy)


def test_api_and_resimulation_run_on_openvino(verified):
    from runtime.api import load_model

    bundle_path, _, grid = verified
    flux = _flux(grid, 3)
    ov = load_model(bundle_path, engine="openvino", precision="fp32", device="cpu").infer(flux, 100.0, seed=2,
                                                                                         samples=512)
    ort = load_model(bundle_path, engine="onnxruntime", precision="fp32", device="cpu").infer(flux, 100.0, seed=2,
                                                                                             samples=512)
    assert ov.meta["engine"] == "openvino" and ort.meta["engine"] == "onnxruntime"
    np.testing.assert_allclose(ov["teff_p50"], ort["teff_p50"], rtol=1e-4)
    if "chi2_resim" in ort.colnames:
        np.testing.assert_allclose(ov["chi2_resim"], ort["chi2_resim"], rtol=1e-3)


def test_a_static_session_compiles_once_per_shape_and_agrees_with_the_dynamic_graph(tiny_bundle):
    """``OpenVinoSession(static=True)`` compiles the graph for each new set of input shapes and reuses it; its
    results are those of the dynamic-shape graph to fp32 rounding."""
    from spectra.contracts.manifest import HOISTED

    _, _, _, bundle_path = tiny_bundle
    bundle = load_bundle(bundle_path)
    path = bundle.path / HOISTED["flow"]
    static, dynamic = engines.OpenVinoSession(path, static=True), engines.OpenVinoSession(path)
    width = int(dynamic.compiled.input("cond_proj").get_partial_shape()[1].get_length())
    rng = np.random.default_rng(0)
    feeds = {"z": rng.standard_normal((1, 256, bundle.manifest.n_params)).astype(np.float32),
             "cond_proj": rng.standard_normal((1, width)).astype(np.float32)}
    first = static.run(None, feeds)
    again = static.run(None, {k: v.copy() for k, v in feeds.items()})
    assert len(static._by_shape) == 1
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, dynamic.run(None, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    static.run(None, {"z": feeds["z"][:, :128], "cond_proj": feeds["cond_proj"]})
    assert len(static._by_shape) == 2
