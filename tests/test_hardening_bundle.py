"""Issue 21, defects 1 and 8 (bundle side): a bundle identity that covers every byte a graph can load, and a
manifest that cannot crash the reader. Each test fails on the code before these guards existed."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from runtime import cli as runtime_cli  # noqa: E402
from runtime.bundle import (  # noqa: E402
    MAX_MANIFEST_BYTES,
    MAX_MANIFEST_DEPTH,
    BundleError,
    Manifest,
    _validate,
    load_bundle,
)
from runtime.sessions import engine_cache_dir  # noqa: E402
from spectra.stores.survey import make_survey, parse_snr  # noqa: E402

from conftest import rehash_bundle  # noqa: E402

DEFAULT_MANIFEST = Path(__file__).resolve().parents[1] / "runtime" / "default_bundle" / "manifest.json"


@pytest.fixture(scope="module")
def bundle_and_survey(tiny_bundle, tmp_path_factory):
    _, grid, _, bundle = tiny_bundle
    survey = make_survey(grid, parse_snr("100"), tmp_path_factory.mktemp("h1") / "survey.zarr", seed=1, chunk=20,
                         progress=False)
    return bundle, survey


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _externalise(bundle: Path, graph: str, location: str) -> Path:
    """Move a graph's weights into an external-data file ``location`` (the attack of issue 21 defect 1) and
    record the graph's new hash, as a crafted bundle would: only the .onnx file is listed."""
    model = onnx.load(str(bundle / graph))
    (bundle / graph).unlink()
    if "/" in location:
        (bundle / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(bundle / graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    rehash_bundle(bundle)
    return bundle


def _run(survey: Path, bundle: Path, out: Path, *extra: str) -> int:
    return runtime_cli.main(["process", "--survey", str(survey), "--bundle", str(bundle), "--out", str(out),
                             "--samples", "64", "--device", "cpu", "--quiet", *extra])


@pytest.mark.parametrize("location", ["weights", "weights.xyz", "sub/w.bin"])
def test_external_weights_not_covered_by_the_identity_are_refused(bundle_and_survey, tmp_path, location, capsys):
    bundle, survey = bundle_and_survey
    crafted = _externalise(_copy(bundle, tmp_path / "b"), "hoisted_flow.onnx", location)
    with pytest.raises(BundleError, match=r"not listed in manifest.json|a folder in a model bundle"):
        load_bundle(crafted)
    assert _run(survey, crafted, tmp_path / "cat.zarr") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and not (tmp_path / "cat.zarr").exists()


def test_resume_cannot_mix_models_through_unhashed_weights(bundle_and_survey, tmp_path):
    """The probe: weights moved out of the graph, a catalogue half made, the weights changed, then --resume."""
    bundle, survey = bundle_and_survey
    out = tmp_path / "cat.zarr"
    assert _run(survey, bundle, out) == 0
    crafted = _externalise(_copy(bundle, tmp_path / "b"), "hoisted_flow.onnx", "weights")
    assert _run(survey, crafted, out, "--resume") == 2


def test_symlinks_and_special_files_in_a_bundle_are_refused(bundle_and_survey, tmp_path):
    bundle, _ = bundle_and_survey
    linked = _copy(bundle, tmp_path / "linked")
    outside = tmp_path / "outside.onnx"
    shutil.move(linked / "hoisted_flow.onnx", outside)
    (linked / "hoisted_flow.onnx").symlink_to(outside)  # same bytes, so the hash alone would pass
    with pytest.raises(BundleError, match=r"hoisted_flow.onnx: a symlink in a model bundle"):
        load_bundle(linked)
    fifo = _copy(bundle, tmp_path / "fifo")
    os.mkfifo(fifo / "pipe")
    with pytest.raises(BundleError, match=r"pipe: not a regular file"):
        load_bundle(fifo)
    note = _copy(bundle, tmp_path / "note")
    (note / "README.md").write_text("notes")
    with pytest.raises(BundleError, match=r"README.md not listed in manifest.json"):
        load_bundle(note)


def test_engine_caches_live_outside_the_bundle_keyed_by_identity(monkeypatch, tmp_path):
    monkeypatch.setenv("CINN4MOST_CACHE", str(tmp_path / "cache"))
    a, b = engine_cache_dir("a" * 64), engine_cache_dir("b" * 64)
    assert a != b and Path(a).is_relative_to(tmp_path / "cache")


def _manifest_case(raw: dict, case: str):
    if case == "graph entry a string":
        raw["graphs"]["inverse_flow"] = "inverse_flow.onnx"
    elif case == "graph inputs a number":
        raw["graphs"]["feature_extractor"]["inputs"] = 7
    elif case == "provenance a string":
        raw["provenance"] = "trained somewhere"
    elif case == "unit a number":
        raw["parameters"][0]["unit"] = 5
    elif case == "pixel width text":
        raw["pixel_grid"]["pixel_width"] = "0.05"
    return raw


MANIFEST_CASES = {
    "graph entry a string": r"graph inverse_flow must be inverse_flow.onnx",
    "graph inputs a number": r"graph feature_extractor must be feature_extractor.onnx",
    "provenance a string": r"provenance must be an object",
    "unit a number": r"parameter teff: unit must be text",
    "pixel width text": r"pixel_grid.pixel_width must be a positive number",
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_wrongly_typed_manifest_fields_give_one_line(bundle_and_survey, tmp_path, case, capsys):
    bundle, survey = bundle_and_survey
    broken = _copy(bundle, tmp_path / "b")
    raw = _manifest_case(json.loads((broken / "manifest.json").read_text()), case)
    (broken / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=MANIFEST_CASES[case]):
        load_bundle(broken)
    assert _run(survey, broken, tmp_path / "c.zarr") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and not (tmp_path / "c.zarr").exists()


def test_oversized_and_deeply_nested_manifests_are_refused_before_parsing(bundle_and_survey, tmp_path):
    bundle, survey = bundle_and_survey
    deep = _copy(bundle, tmp_path / "deep")
    (deep / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match=rf"nested deeper than {MAX_MANIFEST_DEPTH} levels"):
        load_bundle(deep)
    shallow_but_deep = _copy(bundle, tmp_path / "deep2")
    raw = json.loads((shallow_but_deep / "manifest.json").read_text())
    node = raw["provenance"]
    for _ in range(MAX_MANIFEST_DEPTH + 2):
        node["x"] = {}
        node = node["x"]
    (shallow_but_deep / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"nested deeper"):
        load_bundle(shallow_but_deep)
    big = _copy(bundle, tmp_path / "big")
    raw = json.loads((big / "manifest.json").read_text())
    raw["provenance"]["padding"] = "x" * MAX_MANIFEST_BYTES
    (big / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=rf"a manifest is at most {MAX_MANIFEST_BYTES} bytes"):
        load_bundle(big)
    assert _run(survey, big, tmp_path / "c.zarr") == 2 and not (tmp_path / "c.zarr").exists()


def _field_paths(value, prefix=()):
    """Every key path of a manifest (lists: their first two entries), skipping free-form provenance."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            if (*prefix, key) != ("provenance",):
                yield from _field_paths(child, (*prefix, key))
    elif isinstance(value, list) and len(value) <= 32:
        for i, child in enumerate(value[:2]):
            yield (*prefix, i)
            yield from _field_paths(child, (*prefix, i))


def test_every_manifest_field_of_any_type_is_validated_or_harmless():
    """Replace each field of the shipped manifest by a value of each JSON type: the reader either accepts it or
    raises a BundleError, never a TypeError/KeyError/AttributeError (a traceback for the user)."""
    original = json.loads(DEFAULT_MANIFEST.read_text())
    crashes = []
    for path in _field_paths(original):
        for bad in ("x", 7, None, [], {}, True, -1.5, float("nan"), [1, 2]):
            raw = copy.deepcopy(original)
            node = raw
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = bad
            try:
                _validate(raw, Path("manifest.json"))
                m = Manifest(raw)
                m.to_physical(np.zeros((1, m.n_params)))
                _ = (m.snr_range, m.precisions, m.continuum, m.n_pixels, m.bias_correction, m.random_streams)
            except BundleError:
                continue
            except Exception as exc:  # what the test looks for
                crashes.append(f"{'.'.join(map(str, path))} = {bad!r}: {type(exc).__name__}")
    assert not crashes, crashes[:10]
