"""The Python API (``runtime.api``): one code path with ``runtime process``, posteriors, clear errors, the README
example."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from catalog.schema import PROVENANCE_COLUMNS
from catalog.writers import read_table
from runtime.cli import main as runtime_main
from runtime.packaged import unpack_examples

from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 256


@pytest.fixture(scope="module")
def model():
    from runtime import load_model

    return load_model()


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """The packaged observed example (UVES/HARPS Sun, 38 Vir) and its catalogue from `runtime process --seed 7`."""
    folder = tmp_path_factory.mktemp("api")
    survey = next(p for p in unpack_examples(folder) if p.name == "observed.zarr")
    catalogue = folder / "observed_catalog.zarr"
    assert runtime_main(["process", "--survey", str(survey), "--out", str(catalogue), "--samples", str(SAMPLES),
                         "--seed", "7", "--quiet"]) == 0
    return survey, catalogue


def _survey_inputs(survey: Path) -> dict:
    import zarr

    root = zarr.open_group(str(survey), mode="r")
    carried = [c.name for c in PROVENANCE_COLUMNS if c.name in root]
    return {"flux": root["flux"][:], "snr": root["snr"][:], "source_id": root["source_id"][:],
            "ingest_flags": root["ingest_flags"][:], "provenance": {n: root[n][:] for n in carried},
            "continuum": root.attrs["continuum_kind"]}


def test_api_and_runtime_process_give_identical_rows(model, observed):
    survey, catalogue = observed
    inputs = _survey_inputs(survey)
    table = model.infer(inputs["flux"], inputs["snr"], inputs["source_id"], seed=7, samples=SAMPLES,
                        ingest_flags=inputs["ingest_flags"], provenance=inputs["provenance"],
                        continuum=inputs["continuum"])
    expected = read_table(catalogue)
    assert table.colnames == expected.colnames
    for name in expected.colnames:
        np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(expected[name]), err_msg=name)
        assert str(table[name].unit) == str(expected[name].unit), name
        assert table[name].description == expected[name].description, name
    assert np.isfinite(np.asarray(table["teff"])).all() and np.isfinite(np.asarray(table["chi2_resim"])).all()
    other_seed = model.infer(inputs["flux"], inputs["snr"], inputs["source_id"], seed=8, samples=SAMPLES)
    assert not np.array_equal(np.asarray(other_seed["teff_p50"]), np.asarray(expected["teff_p50"]))


def test_a_row_depends_on_seed_and_source_id_only(model, observed):
    """The same spectrum gives the same row alone or among others, at any position: the draws are keyed by
    (seed, source_id)."""
    inputs = _survey_inputs(observed[0])
    together = model.infer(inputs["flux"], inputs["snr"], inputs["source_id"], samples=SAMPLES)
    alone = model.infer(inputs["flux"][2], inputs["snr"][2], [inputs["source_id"][2]], samples=SAMPLES)
    for name in ("teff", "logg_p16", "fe_h_p84", "e_mg_fe", "chi2_resim", "flags"):
        assert np.asarray(alone[name])[0] == np.asarray(together[name])[2], name


def test_posterior_is_what_infer_summarises(model, observed):
    from runtime.bundle import load_bundle

    inputs = _survey_inputs(observed[0])
    sid = int(inputs["source_id"][1])
    post = model.posterior(inputs["flux"][1], inputs["snr"][1], sid, seed=3, samples=SAMPLES)
    manifest = load_bundle(model.bundle.path).manifest
    assert post.samples.shape == (SAMPLES, manifest.n_params) and post.log_density.shape == (SAMPLES,)
    assert np.isfinite(post.samples).all() and np.isfinite(post.log_density).all()
    # the HARPS Sun at its own S/N 2329 (above the trained 10-1000) rejects most samples; enough stay for quantiles
    assert post.valid.sum() >= 16
    inside = post.samples[post.valid]
    assert np.all(inside >= manifest.lower) and np.all(inside <= manifest.upper)
    row = model.infer(inputs["flux"][1], inputs["snr"][1], [sid], seed=3, samples=SAMPLES)
    assert row["n_valid"][0] == post.valid.sum()
    np.testing.assert_allclose(row["f_reject"][0], 1 - post.valid.mean(), rtol=1e-6)
    np.testing.assert_array_equal(post.map.astype(np.float32), np.array([row[n][0] for n in post.names]))
    quantiles = post.quantiles((0.16, 0.84))
    np.testing.assert_allclose(quantiles[0], [row[n + "_p16"][0] for n in post.names], rtol=1e-6)
    samples = post.table()
    assert samples.colnames[:2] == ["teff", "logg"] and str(samples["teff"].unit) == "K"


def test_bad_input_is_one_clear_error(model, observed):
    inputs = _survey_inputs(observed[0])
    flux, snr = inputs["flux"], inputs["snr"]
    with pytest.raises(ValueError, match=r"flux: 25100 pixels per spectrum, expected 25200 pixels"):
        model.infer(flux[:, :25100], snr, samples=SAMPLES)
    with pytest.raises(ValueError, match=r"snr: 2 value\(s\) of shape \(2,\), expected one or 3"):
        model.infer(flux, snr[:2], samples=SAMPLES)
    with pytest.raises(ValueError, match="snr: nan, expected a finite S/N per Angstrom > 0"):
        model.posterior(flux[0], float("nan"), samples=SAMPLES)
    with pytest.raises(ValueError, match="snr: missing"):
        model.infer(flux, samples=SAMPLES)
    with pytest.raises(ValueError, match="source_id: repeated values"):
        model.infer(flux, snr, [5, 5, 6], samples=SAMPLES)
    with pytest.raises(ValueError, match=r"source_id must be an integer in \[0, 2\*\*63\)|source_id.*\[0, 2\*\*63\)"):
        model.infer(flux, snr, [-1, 0, 1], samples=SAMPLES)
    with pytest.raises(ValueError, match="samples must be >= 32, got 3"):
        model.infer(flux, snr, samples=3)
    with pytest.raises(ValueError, match="flux: NaN/inf pixels"):
        model.posterior(np.full(flux.shape[1], np.nan), 50.0, samples=SAMPLES)
    with pytest.raises(ValueError, match="provenance: unknown column"):
        model.infer(flux, snr, samples=SAMPLES, provenance={"colour": [1, 2, 3]})
    # in a batch, a bad row is flagged (as in a survey run), never a reason to stop the others
    from spectra.contracts.flags import Flag

    table = model.infer(flux, [float("nan"), snr[1], snr[2]], samples=SAMPLES)
    assert int(table["flags"][0]) & int(Flag.INVALID_SNR) and bool(table["flag_bad"][0])
    assert np.isnan(table["teff"][0]) and np.isfinite(table["teff"][1])


def test_arrays_prepare_names_what_is_missing():
    from runtime import prepare

    wave = np.linspace(5100.0, 6850.0, 20_000)
    with pytest.raises(ValueError, match="resolving power unknown"):
        prepare((wave, np.ones_like(wave) + 0.01 * np.sin(wave)))
    with pytest.raises(ValueError, match="medium: 'water', expected 'air' or 'vacuum'"):
        prepare((wave, np.ones_like(wave)), medium="water")
    with pytest.raises(ValueError, match="20000 wavelengths but 10 flux values"):
        prepare((wave, np.ones(10)), resolution=40_000)


def test_the_api_is_exported_lazily():
    """``import runtime.bundle`` (what workers and the CLI import) does not load the API; ``runtime.load_model``
    does, on first use."""
    code = ("import sys, runtime.bundle; assert 'runtime.api' not in sys.modules; import runtime; "
            "assert set(runtime.__all__) <= set(dir(runtime)); f = runtime.load_model; "
            "assert 'runtime.api' in sys.modules and f is sys.modules['runtime.api'].load_model; "
            "import runtime.pipeline")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import runtime

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        runtime.nothing  # noqa: B018


def _readme_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)
    assert len(section) == 2, "README.md has no '## Python API' section"
    match = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert match, "the README's Python API section has no ```python block"
    return match.group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch):
    """The README's notebook example, from a FITS file to a corner plot, run as it is written (from a folder
    beside ../shared like the repository's own)."""
    code = _readme_api_example()
    if "../shared/data" in code and not (SHARED / "spectra" / "fasma_Sun_HARPS.fits").is_file():
        pytest.skip(f"shared data {SHARED} not available")
    import matplotlib

    matplotlib.use("Agg")
    (tmp_path / "shared").symlink_to(SHARED.parent, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    exec(compile(code, "README.md: Python API", "exec"), {"__name__": "readme_example"})
    images = list(work.glob("*.png"))
    assert images and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in images)
