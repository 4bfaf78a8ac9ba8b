"""Independent random streams (``spectra.contracts.streams``): survey noise and posterior latent draws of the same
(seed, source_id) must not be the same numbers shifted; the scheme is recorded in bundles and catalogues."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime import sampler
from runtime.sampler import latent_draws
from spectra.contracts.streams import (
    LATENT,
    LEGACY_SCHEME,
    NOISE,
    ROW,
    SCHEME_VERSION,
    STREAMS,
    check_seed,
    scheme,
    stream_rng,
)
from spectra.forward.degrade import noise_sigma
from spectra.stores import simulated
from spectra.stores.simulated import write_simulated_survey

MAX_LAG = 64
N_NORMALS = 4096
#: |correlation| any lag of two independent 4096-draw sequences stays below: the largest of 129 lags of a
#: N(0, 1/4096) variable is ~0.055 (3.5 sigma); a shifted copy gives ~1 at its lag
THRESHOLD = 0.1


def max_lagged_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = MAX_LAG) -> float:
    """max over lags -max_lag..max_lag of |corr(a[i + lag], b[i])|: catches b being a shifted (by up to max_lag
    elements) copy of a, however the two generators were positioned."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = min(a.size, b.size)
    best = 0.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:n], b[:n - lag]) if lag >= 0 else (a[:n + lag], b[-lag:n])
        best = max(best, abs(float(np.corrcoef(x, y)[0, 1])))
    return best


def _legacy_rng(seed: int, source_id: int, stream: int) -> np.random.Generator:
    """Scheme version 1: one untagged stream per spectrum, whatever the use (what this issue removed)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(source_id)]))


def _simulated_noise_and_latent(grid: Path, out: Path, seed: int, source_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The standard normals behind one simulated survey row's noise (recovered from its flux) and the first latent
    normals the posterior draws for the same (seed, source_id), in generation order."""
    description = write_simulated_survey(grid, 16, "paper", out, seed=seed, overwrite=True)
    survey = simulated.SimulatedSurvey(description, json.loads(description.read_text()))
    base, snr, flux = survey.draw(source_id)
    clean = survey.flux[base]
    sigma = noise_sigma(clean, snr, survey.pixel).astype(np.float32)
    noise = (flux.astype(np.float64) - clean) / sigma
    d = 13
    latent = latent_draws(seed, source_id, -(-N_NORMALS // d), d).ravel()
    return noise[:N_NORMALS], latent[:N_NORMALS]


@pytest.mark.parametrize("source_id", [0, 1, 7])
def test_simulated_noise_and_latent_draws_are_not_shifted_copies(fake_grid, tmp_path, monkeypatch, source_id):
    noise, latent = _simulated_noise_and_latent(fake_grid, tmp_path / "sim.json", 0, source_id)
    assert abs(noise.std() - 1) < 0.05 and abs(latent.std() - 1) < 0.05  # both really are standard normals
    assert max_lagged_correlation(noise, latent) < THRESHOLD

    # the same check on the old scheme (one untagged stream) must fail: the check can see the defect
    monkeypatch.setattr(simulated, "stream_rng", _legacy_rng)
    monkeypatch.setattr(sampler, "stream_rng", _legacy_rng)
    old_noise, old_latent = _simulated_noise_and_latent(fake_grid, tmp_path / "old.json", 0, source_id)
    assert max_lagged_correlation(old_noise, old_latent) > 0.9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_pair_of_streams_is_uncorrelated(dtype):
    for seed, source_id in ((0, 0), (0, 3), (5, 2**40 + 3)):
        draws = {name: stream_rng(seed, source_id, tag).standard_normal(N_NORMALS, dtype=dtype)
                 for name, tag in STREAMS.items()}
        names = sorted(draws)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert max_lagged_correlation(draws[a], draws[b]) < THRESHOLD, (seed, source_id, a, b)
    legacy = _legacy_rng(0, 3, NOISE)
    legacy.integers(10)  # the old simulated row: a base-spectrum pick, then the noise from the same generator
    assert max_lagged_correlation(legacy.standard_normal(N_NORMALS, dtype=np.float32),
                                  _legacy_rng(0, 3, LATENT).standard_normal(N_NORMALS, dtype=np.float32)) > 0.9


def test_streams_are_deterministic_and_distinct():
    def first(seed, source_id, stream, n=64):
        return stream_rng(seed, source_id, stream).standard_normal(n)

    for stream in (NOISE, LATENT, ROW):
        np.testing.assert_array_equal(first(0, 5, stream), first(np.int64(0), np.int64(5), stream))
    assert len(set(STREAMS.values())) == len(STREAMS) and 0 not in STREAMS.values()
    draws = [first(0, 5, s) for s in (NOISE, LATENT, ROW)]
    draws += [first(0, 6, NOISE), first(1, 5, NOISE), _legacy_rng(0, 5, NOISE).standard_normal(64)]
    for i, a in enumerate(draws):
        for b in draws[i + 1:]:
            assert not np.array_equal(a, b)
    # why no tag may be 0: SeedSequence pads with zeros, so [seed, id, 0] is the old untagged stream
    np.testing.assert_array_equal(np.random.default_rng(np.random.SeedSequence([0, 5, 0])).standard_normal(64),
                                  _legacy_rng(0, 5, NOISE).standard_normal(64))
    # runtime latent draws are the latent stream, exactly
    np.testing.assert_array_equal(latent_draws(3, 11, 40, 13),
                                  stream_rng(3, 11, LATENT).standard_normal((40, 13), dtype=np.float32))
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            check_seed(bad)
    with pytest.raises(ValueError, match="source_id"):
        stream_rng(0, -1, NOISE)
    with pytest.raises(ValueError, match="tag"):
        stream_rng(0, 1, 0)


def test_spectra_survey_noise_is_the_noise_stream(fake_grid, tmp_path):
    """``spectra survey`` draws its noise from the noise stream (so never from the latent one) and records it."""
    import zarr

    from spectra.stores.survey import make_survey, parse_snr

    out = make_survey(fake_grid, parse_snr("100"), tmp_path / "s.zarr", seed=2, chunk=4, progress=False)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["random_streams"] == scheme()
    wave = root["wavelength"][:]
    pixel = float(np.median(np.diff(wave)))
    from spectra.stores.gridstore import GridReader

    with GridReader(fake_grid) as grid:
        sid, base = int(root["source_id"][1]), int(root["base_index"][1])
        clean = grid.flux[base, :].astype(float)
    noise = (root["flux"][1].astype(float) - clean) / noise_sigma(clean, 100.0, pixel)
    expected = stream_rng(2, sid, NOISE).standard_normal(clean.size)
    assert np.abs(noise - expected).max() < 1e-3  # the float32 flux rounds the draws a little
    assert max_lagged_correlation(noise[:N_NORMALS], latent_draws(2, sid, 316, 13).ravel()[:N_NORMALS]) < THRESHOLD
    with pytest.raises(ValueError, match="--seed"):
        make_survey(fake_grid, parse_snr("100"), tmp_path / "t.zarr", seed=-3, progress=False)


def test_simulated_description_records_the_scheme_and_old_ones_are_refused(fake_grid, tmp_path):
    from spectra.stores.survey_reader import open_survey

    path = write_simulated_survey(fake_grid, 8, "paper", tmp_path / "sim.json", seed=1)
    spec = json.loads(path.read_text())
    assert spec["random_streams"] == scheme()
    assert open_survey(path).read_rows(0, 2).flux.shape[0] == 2
    del spec["random_streams"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="spectra simulate"):
        open_survey(old)


def test_default_bundle_without_the_field_still_loads_and_a_bad_one_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    from runtime.bundle import BundleError, _validate, load_bundle
    from runtime.packaged import default_bundle

    bundle = load_bundle(default_bundle(), check_graphs=False)
    assert bundle.manifest.random_streams == scheme()  # the model shipped since session 5 records it
    raw = {k: v for k, v in bundle.manifest.raw.items() if k != "random_streams"}
    _validate(raw, tmp_path / "manifest.json")  # a bundle exported before the field existed still loads
    _validate({**raw, "random_streams": scheme()}, tmp_path / "manifest.json")
    for bad in ("v2", {"version": 0, "scheme": "x"}, {"version": 2}, {"version": True, "scheme": "x"}):
        with pytest.raises(BundleError, match="random_streams"):
            _validate({**raw, "random_streams": bad}, tmp_path / "manifest.json")


@pytest.fixture(scope="module")
def catalogue(tiny_bundle, tmp_path_factory):
    from runtime.pipeline import ProcessOptions, process_survey
    from spectra.stores.survey import make_survey, parse_snr

    _, grid, _, bundle = tiny_bundle
    here = tmp_path_factory.mktemp("streams")
    survey = make_survey(grid, parse_snr("100"), here / "survey.zarr", seed=0, chunk=20, progress=False)
    options = ProcessOptions(samples=32, seed=0, device="cpu", precision="fp32")
    process_survey(survey, bundle, here / "c.zarr", options, chunk=20, progress=False)
    return bundle, survey, here / "c.zarr", options


def test_export_and_catalogue_record_the_scheme(catalogue):
    from catalog.writers import CatalogueStore
    from runtime.bundle import load_bundle

    bundle, _, out, _ = catalogue
    assert load_bundle(bundle, check_graphs=False).manifest.random_streams == scheme()
    attrs = CatalogueStore.open(out).attrs
    assert attrs["random_streams"] == scheme() and attrs["random_streams"]["version"] == SCHEME_VERSION


def test_resume_refuses_a_catalogue_of_the_old_scheme_in_one_line(catalogue, tmp_path, capsys):
    import zarr

    from runtime import cli
    from runtime.pipeline import process_survey

    bundle, survey, made, options = catalogue
    out = tmp_path / "old.zarr"
    shutil.copytree(made, out)
    root = zarr.open_group(str(out), mode="r+")
    del root.attrs["random_streams"]  # as written before the scheme was recorded
    root["_done"][1] = False  # interrupted
    with pytest.raises(ValueError, match=r"random-stream scheme version 1 .*--overwrite"):
        process_survey(survey, bundle, out, options, resume=True, progress=False)
    status = cli.main(["process", "--survey", str(survey), "--bundle", str(bundle), "--out", str(out), "--samples",
                       "32", "--seed", "0", "--device", "cpu", "--precision", "fp32", "--resume", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "random-stream scheme version 1" in err, err
    assert "Traceback" not in err
    assert LEGACY_SCHEME["version"] == 1
    # the same catalogue with the scheme recorded resumes and completes
    root.attrs["random_streams"] = scheme()
    report = process_survey(survey, bundle, out, options, resume=True, progress=False)
    assert report.chunks_run == 1
