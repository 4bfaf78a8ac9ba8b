"""Model bundle: export, parity with PyTorch, a torch-free consumer, malformed bundles."""

import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from export.onnx import export_bundle  # noqa: E402
from export.verify import FP32_TOLERANCE, verify_bundle  # noqa: E402
from runtime.bundle import BundleError, hash_files, load_bundle  # noqa: E402
from runtime.precision import within_tolerance  # noqa: E402
from spectra.contracts.manifest import FORMAT_VERSION  # noqa: E402
from training.config import CONFIGS  # noqa: E402
from training.fit import save_untrained_run  # noqa: E402


@pytest.fixture(scope="module")
def trained(tiny_bundle):
    """A tiny model trained on a learnable fake grid, and its bundle."""
    _, grid, run, bundle = tiny_bundle
    return grid, run, bundle


def test_bundle_contents_and_manifest(trained):
    _, _, bundle_path = trained
    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    assert m.names[:3] == ["teff", "logg", "fe_h"] and m.n_params == 13 and m.n_pixels == 25_200
    assert m.transforms[0] == "log10" and m.transforms[4] == "log10"
    assert m.raw["snr_convention"]["unit"] == "per Angstrom"
    assert m.raw["pixel_grid"]["medium"] == "air" and len(m.raw["pixel_grid"]["sha256"]) == 64
    assert m.bias_correction["coefficients"]["teff"] == {"a": -0.096, "b": 492.389}
    assert m.bias_correction["applied_by_default"] is False
    assert m.raw["provenance"]["software"]["torch"].startswith("2.13")
    assert len(bundle.sha256) == 64


def test_verify_passes_in_fp32(trained):
    _, run, bundle = trained
    report = verify_bundle(bundle, run, n_samples=512)
    assert report.ok, report.lines()
    assert report.worst <= FP32_TOLERANCE
    assert set(report.errors) >= {"features [random]", "inverse flow x [random]", "posterior MAP [grid spectra]"}


def test_torch_free_consumer_reproduces_pytorch_maps(trained, tmp_path):
    """A program that cannot import torch or FrEIA samples the bundle; its MAPs equal PyTorch's."""
    grid, run, bundle = trained
    from export.verify import torch_posterior
    from spectra.stores.gridstore import GridReader
    from training.fit import load_run

    with GridReader(grid) as reader:
        flux = reader.flux[:4, :].astype(np.float32)
    snr = np.array([[250.0], [50.0], [100.0], [1000.0]], dtype=np.float32)
    ids = np.array([11, 12, 13, 14])
    np.save(tmp_path / "flux.npy", flux)
    np.save(tmp_path / "snr.npy", snr)
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                # the deployment side may import the contracts and the common helpers at the bottom of spectra/
                # and the survey reader (numpy + zarr), nothing else of it
                if name.split(".")[0] in ("torch", "FrEIA", "training", "export") or (
                        name.startswith("spectra.") and name != "spectra.stores" and not name.startswith(
                            ("spectra.contracts", "spectra.common", "spectra.stores.survey_reader"))):
                    raise ImportError(f"{{name}} is not allowed on a deployment machine")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from runtime.bundle import load_bundle
        from runtime.sampler import OnnxPosterior
        import runtime.pipeline, catalog.check, catalog.report, catalog.writers  # the whole deployment side
        post = OnnxPosterior(load_bundle({str(bundle)!r}))
        s = post.posterior(np.load({str(tmp_path / 'flux.npy')!r}), np.load({str(tmp_path / 'snr.npy')!r}),
                           np.array({ids.tolist()}), seed=5, n_samples=4096)
        assert "torch" not in sys.modules
        np.save({str(tmp_path / 'map.npy')!r}, s.map)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    onnx_map = np.load(tmp_path / "map.npy")

    model, _, _ = load_run(run)
    torch_map = torch_posterior(model, load_bundle(bundle).manifest, flux, snr, ids, 5, 4096).map
    ok = np.isfinite(torch_map)
    np.testing.assert_array_equal(np.isfinite(onnx_map), ok)
    rel = np.abs(onnx_map[ok] - torch_map[ok]) / np.maximum(np.abs(torch_map[ok]), 1.0)
    assert rel.max() <= 1e-4


def rehash(bundle) -> None:
    """Record the current file hashes in a bundle's manifest (a consistent, re-exported-looking bundle)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = hash_files(bundle, manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_malformed_bundles_give_clear_errors(trained, tmp_path):
    _, _, bundle = trained
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    (broken / "inverse_flow.onnx").unlink()
    with pytest.raises(BundleError, match=r"inverse_flow.onnx \(inverse_flow graph\) is missing"):
        load_bundle(broken)

    other = tmp_path / "v"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["format_version"] = "cinn4most-bundle/0"
    (other / "manifest.json").write_text(json.dumps(manifest))
    expected = f"format_version is 'cinn4most-bundle/0'; this software reads '{FORMAT_VERSION}'"
    with pytest.raises(BundleError, match=re.escape(expected)):
        load_bundle(other)

    renamed = tmp_path / "r"
    shutil.copytree(bundle, renamed)
    import onnx

    graph = onnx.load(str(renamed / "feature_extractor.onnx"))
    for node in graph.graph.node:
        node.input[:] = ["spectrum" if i == "flux" else i for i in node.input]
    graph.graph.input[0].name = "spectrum"
    onnx.save(graph, str(renamed / "feature_extractor.onnx"))
    rehash(renamed)  # as if exported so: the hashes agree, the signature does not
    with pytest.raises(BundleError, match=r"inputs \('spectrum', 'snr'\).*expected \('flux', 'snr'\)"):
        load_bundle(renamed)

    with pytest.raises(BundleError, match=r"is not a folder"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"manifest.json is missing"):
        load_bundle(tmp_path / "empty")


def test_wavelength_mismatch_is_named(trained):
    bundle = load_bundle(trained[2])
    with pytest.raises(BundleError, match=r"flux has 100 pixels; the model in .* expects 25200"):
        bundle.check_wavelength(np.arange(100.0), "survey.zarr")
    with pytest.raises(BundleError, match=r"differs from the model's by up to 0\.5"):
        bundle.check_wavelength(bundle.wavelength + 0.5, "survey.zarr")


@pytest.mark.slow
def test_paper_config_exports_and_verifies(tmp_path):
    """Untrained paper-size model: parity holds for the full architecture (67.3 M parameters)."""
    _, run = save_untrained_run(CONFIGS["paper"], 25_200, 13, tmp_path / "paper_run", perturb=0.02)
    bundle = export_bundle(run, tmp_path / "paper_bundle")
    report = verify_bundle(bundle, run, n_samples=1024)
    assert report.ok, report.lines()
    assert report.graph_bytes["feature_extractor"] > 200e6


def test_precision_variants_are_exported_and_verified_on_posteriors(trained, tmp_path):
    """`export onnx --precision` adds verified variants; `export verify` re-measures them in half-widths."""
    pytest.importorskip("onnxconverter_common")
    _, run, _ = trained
    bundle = export_bundle(run, tmp_path / "b16", precisions=("fp16", "int8"), log=lambda *_: None)
    variants = load_bundle(bundle).manifest.precisions
    assert (bundle / variants["fp16"]["files"]["hoisted_flow"]).exists()
    report = verify_bundle(bundle, run, n_samples=512)
    assert report.worst <= FP32_TOLERANCE, "\n".join(report.lines())  # the fp32 graphs and the summary graph
    assert "summary graph quantiles" in report.errors
    # each variant is re-measured on posteriors of grid spectra (deterministic: equal to what export recorded) and
    # judged by runtime.precision's rule; on this 2-epoch model fp16 lies near its limits (largest difference
    # 0.03-0.08 depending on the draws), so the verdict is checked for consistency, not assumed
    for name in ("fp16", "int8"):
        measured, recorded = report.variants[name], variants[name]["verification"]
        assert 0 < measured["quantile_error"] < 0.2
        assert measured["quantile_error"] == pytest.approx(recorded["quantile_error"], rel=1e-6)
        assert measured["passed"] == within_tolerance(measured)
    assert report.variants["int8"]["passed"]
    assert report.ok == all(v["passed"] for v in report.variants.values())
