"""The accelerator-ready sampler: device-side summary graph, IO binding, verified int8/fp16/bf16 variants."""

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import onnxruntime as ort

from catalog.writers import CatalogueStore
from runtime.binding import BoundFlow
from runtime.bundle import VARIANT_TOLERANCE, BundleError, load_bundle, write_manifest
from runtime.pipeline import ProcessOptions, process_survey
from runtime.posterior import summarize
from runtime.precision import (
    choose_precision,
    describe_check,
    posterior_differences,
    variant_check,
    within_tolerance,
)
from runtime.sampler import OnnxPosterior, latent_draws
from spectra.contracts.quantiles import QUANTILE_LEVELS
from spectra.stores.survey import make_survey, parse_snr

OPTIONS = ProcessOptions(samples=512, seed=7, device="cpu")


@pytest.fixture(scope="module")
def variants(tiny_bundle, tmp_path_factory):
    """A copy of the trained test bundle with int8, fp16 and bf16 variants, and a survey of its grid."""
    from export.variants import quantize_bundle

    _, grid, _, bundle = tiny_bundle
    tmp = tmp_path_factory.mktemp("precision")
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    quantize_bundle(copy, ["int8", "fp16", "bf16"], grid=grid, n_spectra=8, log=lambda *_: None)
    survey = make_survey(grid, parse_snr("50,250"), tmp / "survey.zarr", seed=2, chunk=16, progress=False)
    return copy, survey


def _reference_summary(manifest, x, log_det, z):
    phys = manifest.to_physical(x)
    d = x.shape[2]
    logp = -0.5 * np.sum(z.astype(np.float64) ** 2, axis=2) - 0.5 * d * np.log(2 * np.pi) - log_det
    return summarize(phys, logp, manifest.lower, manifest.upper)


def test_summary_graph_equals_numpy_reference(tiny_bundle):
    """Rejection, MAP (same sample) and quantiles of the ONNX summary equal numpy's, incl. a row with no valid
    sample and rows with few valid samples (interpolation at small n)."""
    _, _, _, bundle_path = tiny_bundle
    bundle = load_bundle(bundle_path)
    session = ort.InferenceSession(str(bundle_path / "posterior_summary.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    b, s, d = 6, 1000, bundle.manifest.n_params
    x = (rng.standard_normal((b, s, d)) * np.array([0.5, 2.0, 3.0, 0.5, 3.0, 2.5])[:, None, None]).astype(np.float32)
    x[2] = 40.0  # nothing inside the bounds
    z = rng.standard_normal((b, s, d)).astype(np.float32)
    log_det = rng.standard_normal((b, s)).astype(np.float32)
    log_det[0, :10] = np.inf  # non-finite densities are invalid
    map_, quantiles, n_valid = session.run(None, {"x": x, "log_jac_det": log_det, "z": z})
    ref = _reference_summary(bundle.manifest, x, log_det, z)
    np.testing.assert_array_equal(n_valid, ref.n_valid)
    assert n_valid[2] == 0 and 0 < n_valid.min(initial=10**9, where=n_valid > 0) < s
    np.testing.assert_array_equal(np.isnan(map_), np.isnan(ref.map))
    np.testing.assert_allclose(map_, ref.map, rtol=1e-12, equal_nan=True)  # the same sample
    np.testing.assert_allclose(quantiles, ref.quantiles, rtol=1e-6, equal_nan=True)


def test_device_summary_path_equals_host_path(tiny_bundle):
    """The IO-bound flow + summary graph chain gives the numpy pipeline's summaries for the same spectra."""
    _, grid, _, bundle_path = tiny_bundle
    bundle = load_bundle(bundle_path)
    from spectra.stores.gridstore import GridReader

    with GridReader(grid) as reader:
        flux = reader.flux[:5, :].astype(np.float32)
    snr, ids = np.full(5, 100.0), np.arange(5) + 11
    host = OnnxPosterior(bundle, summary="host").posterior(flux, snr, ids, 1, 700)
    device = OnnxPosterior(bundle, summary="device", max_rows=2 * 700).posterior(flux, snr, ids, 1, 700)
    np.testing.assert_array_equal(device.n_valid, host.n_valid)
    np.testing.assert_allclose(device.map, host.map, rtol=1e-12)
    np.testing.assert_allclose(device.quantiles, host.quantiles, rtol=1e-6)


def test_fixed_batch_binding_pads_without_changing_results(tiny_bundle):
    """CUDA graphs need one shape: padded calls give the unpadded results for the real spectra."""
    _, _, _, bundle_path = tiny_bundle
    post = OnnxPosterior(load_bundle(bundle_path), summary="device")
    d = post.manifest.n_params
    proj = post.projection(np.random.default_rng(0).standard_normal((3, post.manifest.n_features)).astype(np.float32))
    z = np.stack([latent_draws(0, i, 300, d) for i in range(3)])
    free = BoundFlow(post.hoisted_session, post.summary_session, d, proj.shape[1], 5)
    fixed = BoundFlow(post.hoisted_session, post.summary_session, d, proj.shape[1], 5, fixed_batch=8)
    for a, b in zip(free.summary(z, proj), fixed.summary(z, proj), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="fixed at 8"):
        fixed.summary(np.concatenate([z] * 3), np.concatenate([proj] * 3))


def test_variants_recorded_with_error_and_hash(variants):
    bundle_path, _ = variants
    bundle = load_bundle(bundle_path)
    for name in ("int8", "fp16", "bf16"):
        entry = bundle.manifest.precisions[name]
        check = entry["verification"]
        assert check["tolerance"] == VARIANT_TOLERANCE and check["passed"] and within_tolerance(check)
        assert check["nonfinite"] == 0 and 0 < check["quantile_error_p99"] <= VARIANT_TOLERANCE
        # the scale recorded beside the differences: fp32's own sampling moves quantiles more than the variant
        assert check["fp32_seed_scatter_p99"] > check["quantile_error_p99"]
        file = entry["files"]["hoisted_flow"]
        assert file == f"hoisted_flow.{name}.onnx" and len(bundle.manifest.raw["files"][file]) == 64
    assert "emulat" in bundle.manifest.precisions["bf16"]["verified_by"]
    assert choose_precision(bundle, "auto", "cpu") == "int8"
    assert choose_precision(bundle, "auto", "cuda") == "fp16"


def test_variants_of_one_bundle_share_onefp32_reference(tiny_bundle, tmp_path, monkeypatch):
    """Verifying several variants computes the fp32 posteriors (and their latent-stream scatter) once; a bundle whose
    fp32 files changed gets a new reference."""
    import export.variants as variants_module

    _, grid, _, bundle = tiny_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    made = []
    original = variants_module._test_spectra
    monkeypatch.setattr(variants_module, "_test_spectra", lambda *a, **k: made.append(1) or original(*a, **k))
    monkeypatch.setattr(variants_module, "_REFERENCES", {})
    entries = variants_module.quantize_bundle(copy, ["int8", "bf16"], grid=grid, n_spectra=4, log=lambda *_: None)
    assert len(made) == 1
    scatter = {name: entries[name]["verification"]["fp32_seed_scatter_p99"] for name in ("int8", "bf16")}
    assert scatter["int8"] == scatter["bf16"] > 0
    raw = load_bundle(copy).manifest.raw
    raw["files"]["feature_extractor.onnx"] = "0" * 64  # as if the fp32 graphs had changed
    key = variants_module._reference_key(SimpleNamespace(manifest=SimpleNamespace(raw=raw), path=copy),
                                         Path(grid), 4, (250.0, 50.0, 20.0), 4096, 0)
    assert key not in variants_module._REFERENCES and len(variants_module._REFERENCES) == 1


def test_int8_catalogue_within_tolerance_of_fp32(variants, tmp_path):
    bundle, survey = variants
    # 4096 samples as in production (at 512 neighbouring order statistics of the tails differ by ~0.05 half-widths)
    options = replace(OPTIONS, samples=4096)
    process_survey(survey, bundle, tmp_path / "fp32.zarr", replace(options, precision="fp32"), progress=False)
    process_survey(survey, bundle, tmp_path / "int8.zarr", replace(options, precision="int8"), progress=False)
    fp32, int8 = CatalogueStore.open(tmp_path / "fp32.zarr"), CatalogueStore.open(tmp_path / "int8.zarr")
    assert fp32.attrs["precision"] == "fp32" and int8.attrs["precision"] == "int8"
    assert int8.attrs["precision_graph"] == "hoisted_flow.int8.onnx" and int8.attrs["precision_verification"]
    names = ("teff", "logg", "fe_h")
    suffixes = [q.suffix for q in QUANTILE_LEVELS]  # the catalogue's quantile columns, in level order

    def table(store):  # (N, 5, 3) quantiles and (N, 3) MAPs (the parameter's own column)
        return (np.stack([np.stack([store.column(n + s) for n in names], axis=-1) for s in suffixes], axis=1),
                np.stack([store.column(n) for n in names], axis=-1))

    check = variant_check(*posterior_differences(*table(fp32), *table(int8)))
    assert check["quantile_error"] > 0  # int8 really ran (not bit-equal)
    assert within_tolerance(check), describe_check(check)  # and passes the rule it was verified by


def _on_cuda(precision: str):
    """A (precision, "cuda") case, skipped unless ONNX Runtime here has the CUDA provider (onnxruntime-gpu and a GPU):
    bf16 runs on ONNX Runtime's CUDA provider only, its CPU provider has no bf16 MatMul."""
    missing = "CUDAExecutionProvider" not in ort.get_available_providers()
    return pytest.param(precision, "cuda", id=f"{precision}-cuda",
                        marks=pytest.mark.skipif(missing, reason="ONNX Runtime has no CUDAExecutionProvider here"))


@pytest.mark.parametrize(("precision", "device"), [pytest.param("int8", "cpu", id="int8"),
                                                   pytest.param("fp16", "cpu", id="fp16"),
                                                   _on_cuda("fp16"), _on_cuda("bf16")])
def test_determinism_holds_for_every_precision(variants, tmp_path, precision, device):
    """A spectrum's result depends on (seed, source_id) only, for every precision of ONNX Runtime: workers and
    chunking do not matter (int8 runs one spectrum per call: its activation scales are per call). The GPU variants
    on the CUDA provider too, where there is one (OpenVINO's bf16: ``tests/test_engines.py``)."""
    bundle, survey = variants
    options = replace(OPTIONS, precision=precision, batch=5, device=device)
    process_survey(survey, bundle, tmp_path / "a.zarr", options, chunk=16, progress=False)
    process_survey(survey, bundle, tmp_path / "b.zarr", replace(options, batch=3), chunk=40, progress=False)
    process_survey(survey, bundle, tmp_path / "c.zarr", options, workers=2, progress=False)
    a, b, c = (CatalogueStore.open(tmp_path / f"{k}.zarr") for k in "abc")
    assert (a.attrs["precision"], a.attrs["device"]) == (precision, device)
    for name in a.columns:
        np.testing.assert_array_equal(a.column(name), b.column(name), err_msg=name)
        np.testing.assert_array_equal(a.column(name), c.column(name), err_msg=name)


def test_variant_above_tolerance_refused_unless_forced(variants, tmp_path):
    bundle, survey = variants
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["precisions"]["int8"]["verification"]["quantile_error"] = 0.2
    write_manifest(copy, raw)
    with pytest.raises(BundleError, match=r"refusing the int8 variant.*0\.200.*--force-precision"):
        process_survey(survey, copy, tmp_path / "c.zarr", replace(OPTIONS, precision="int8"), progress=False)
    assert not (tmp_path / "c.zarr").exists()
    assert load_bundle(copy).manifest.precisions["int8"]  # still listed; auto now avoids it:
    report = process_survey(survey, copy, tmp_path / "auto.zarr", OPTIONS, progress=False)
    assert report.precision == "fp32"
    process_survey(survey, copy, tmp_path / "forced.zarr", replace(OPTIONS, precision="int8", force_precision=True),
                   progress=False)
    store = CatalogueStore.open(tmp_path / "forced.zarr")
    assert store.attrs["precision"] == "int8" and store.attrs["precision_forced"] is True
    raw["precisions"]["int8"]["verification"].update(quantile_error=0.01, quantile_error_p99=0.02)  # p99 above max
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"quantile_error_p99"):
        load_bundle(copy)


def test_missing_variant_and_resume_with_other_precision_are_clear_errors(tiny_bundle, variants, tmp_path):
    _, _, _, plain = tiny_bundle
    bundle, survey = variants
    with pytest.raises(BundleError, match=r"no int8 variant.*export quantize"):
        process_survey(survey, plain, tmp_path / "x.zarr", replace(OPTIONS, precision="int8"), progress=False)
    process_survey(survey, bundle, tmp_path / "c.zarr", replace(OPTIONS, precision="fp32"), chunk=16, progress=False)
    with pytest.raises(ValueError, match="precision"):
        process_survey(survey, bundle, tmp_path / "c.zarr", replace(OPTIONS, precision="int8"), resume=True,
                       progress=False)


def test_changed_variant_file_is_refused(variants, tmp_path):
    bundle, _ = variants
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with open(copy / "hoisted_flow.int8.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"hoisted_flow\.int8\.onnx: sha256"):
        load_bundle(copy)


def test_gpu_providers_are_never_silently_replaced(tiny_bundle, monkeypatch):
    """Asking for CUDA or TensorRT where ONNX Runtime lacks them is an error naming what is available, and a session
    that silently fell back to the CPU is refused. Both cases are simulated, so the test asserts the same on a machine
    with a GPU (where the old version of this test skipped everything) as without one."""
    from runtime.sessions import resolve_providers

    cpu_only = ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: cpu_only)
    for device in ("cuda", "tensorrt"):
        with pytest.raises(ValueError, match=rf"--device {device}: ONNX Runtime here offers \['CPUExecution"):
            resolve_providers(device)
    assert resolve_providers("auto") == ("cpu", cpu_only)  # auto may choose the CPU: it was not asked for a GPU

    # a GPU provider that is listed but does not load: ONNX Runtime then gives a CPU session without an error
    _, _, _, bundle_path = tiny_bundle
    bundle = load_bundle(bundle_path)  # (loading checks the graphs in CPU sessions of its own)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *cpu_only])
    real_session = ort.InferenceSession
    asked = []

    def falls_back(path, options=None, providers=None, **kw):
        asked.append(providers[0][0] if isinstance(providers[0], tuple) else providers[0])
        return real_session(path, providers=cpu_only)

    monkeypatch.setattr(ort, "InferenceSession", falls_back)
    with pytest.raises(RuntimeError, match=r"ONNX Runtime gave \['CPUExecutionProvider'\] instead of "
                                           r"CUDAExecutionProvider"):
        OnnxPosterior(bundle, device="cuda", summary="host")
    assert asked and set(asked) == {"CUDAExecutionProvider"}  # CUDA was asked for, the CPU was what came back
    assert OnnxPosterior(bundle, device="cpu").providers == cpu_only  # the check passes a session that got its wish


def test_variant_rule_judges_percentiles_and_caps_the_worst():
    """The rule of runtime.precision: the 99th percentile of the quantile differences and the 95th of the MAP
    differences within VARIANT_TOLERANCE, no quantile beyond VARIANT_WORST_TOLERANCE; a record cannot loosen it."""
    from runtime.bundle import VARIANT_WORST_TOLERANCE

    rng = np.random.default_rng(0)
    typical = rng.uniform(0, 0.02, 10_000)  # an int8 flow's differences: small almost everywhere
    check = variant_check(typical, typical[:500])
    assert check["quantile_error_p99"] == pytest.approx(np.percentile(typical, 99))
    assert check["map_error"] == pytest.approx(np.percentile(typical[:500], 95))
    assert check["quantile_error"] == pytest.approx(typical.max()) and within_tolerance(check)
    one_tail = typical.copy()
    one_tail[7] = 0.08  # one order statistic of a tail lands elsewhere: within the worst-case cap
    assert within_tolerance(variant_check(one_tail, typical[:500]))
    one_tail[7] = VARIANT_WORST_TOLERANCE * 1.5  # a real failure in one posterior is not averaged away
    assert not within_tolerance(variant_check(one_tail, typical[:500]))
    shifted = typical + 0.04  # a systematic shift of every quantile
    assert not within_tolerance(variant_check(shifted, typical[:500]))
    assert not within_tolerance(variant_check(typical, typical[:500] + 0.06))  # MAPs moved
    loose = dict(variant_check(shifted, typical[:500]), tolerance=1.0, worst_tolerance=1.0)
    assert not within_tolerance(loose)  # the software's tolerances, not the record's
    one_tail[7] = 0.15
    assert not within_tolerance(dict(variant_check(one_tail, typical[:500]), worst_tolerance=1.0))
    # a record made before the percentile existed is judged by the old rule: its largest difference, against this
    # software's tolerance whatever it names
    assert within_tolerance({"quantile_error": 0.049, "map_error": 0.01, "tolerance": 0.05})
    assert not within_tolerance({"quantile_error": 0.06, "map_error": 0.01, "tolerance": 0.05})
    assert not within_tolerance({"quantile_error": 0.06, "map_error": 0.01, "tolerance": 0.1})
    with pytest.raises(ValueError, match="no finite difference"):
        variant_check([np.nan], [np.nan])
    assert variant_check([typical[:10], typical[:7]], typical[:3])["quantile_error"] == typical[:10].max()  # ragged


def test_posterior_differences_count_a_variants_non_finite_values_as_failures():
    """NaN where fp32 has no posterior to compare against (left out); a variant's NaN or inf where fp32 has one is
    +inf (counted in ``nonfinite``, and the variant fails however small the other differences)."""
    rng = np.random.default_rng(1)
    n, d = 6, 3
    ref = np.sort(rng.normal(size=(n, 5, d)), axis=1)  # five increasing quantiles per parameter
    ref_map = ref[:, 2]
    other = ref + 1e-4
    dq, dmap = posterior_differences(ref, ref_map, other, ref_map)
    assert np.all(np.isfinite(dq)) and within_tolerance(variant_check(dq, dmap))
    ref[0] = np.nan  # no fp32 posterior for spectrum 0: nothing to compare
    other[0] = np.nan
    other[3, 1, 2] = np.nan  # the variant fails one value where fp32 has a posterior
    broken_map = ref_map.copy()
    broken_map[4, 0] = np.inf
    dq, dmap = posterior_differences(ref, ref[:, 2], other, broken_map)
    assert np.all(np.isnan(dq[0])) and dq[3, 1, 2] == np.inf and dmap[4, 0] == np.inf
    check = variant_check(dq, dmap)
    assert check["nonfinite"] == 2 and check["quantile_error_p99"] < 1e-2
    assert not within_tolerance(check) and "2 values not finite" in describe_check(check)
