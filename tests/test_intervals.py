"""Interval calibration (runtime.intervals, export calibrate-intervals): the fit recovers a known miscalibration,
the catalogue and the Python API report the same rescaled quantiles, and bad manifest entries are refused."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from runtime.intervals import COVERAGE, IntervalCalibration, fit_scales, side_ratio, smooth_in_log_snr
from spectra.contracts.quantiles import QUANTILES, index


def _gaussian_rows(rng, n, snr, true_sigma, reported_sigma):
    """n rows at one S/N: truth = estimate + N(0, true_sigma); quantiles of N(estimate, reported_sigma)."""
    from scipy.stats import norm

    centre = rng.normal(size=(n, 2))
    truth = centre + rng.normal(size=(n, 2)) * true_sigma
    z = norm.ppf(QUANTILES)
    quantiles = centre[:, None, :] + z[None, :, None] * reported_sigma
    return truth, quantiles, np.full(n, float(snr))


def test_fit_recovers_a_known_width_error_per_snr_and_parameter():
    rng = np.random.default_rng(0)
    sigma = np.array([1.0, 2.0])
    parts = [_gaussian_rows(rng, 20000, 20, sigma, sigma / 1.3), _gaussian_rows(rng, 20000, 250, sigma, sigma * 1.25)]
    truth, quantiles, snr = (np.concatenate(p) for p in zip(*parts, strict=True))
    scales = fit_scales(truth, quantiles, snr, [20, 250])
    np.testing.assert_allclose(scales, [[1.3, 1.3], [0.8, 0.8]], rtol=0.03)
    calibration = IntervalCalibration(np.array([20.0, 250.0]), scales, ("a", "b"))
    inside = side_ratio(truth, calibration.apply(quantiles, snr)) <= 1
    for value in (20, 250):
        np.testing.assert_allclose(inside[snr == value].mean(axis=0), COVERAGE, atol=2e-3)
    # refitting quantiles that already carry the calibration gives the same factors, not their square
    again = fit_scales(truth, calibration.apply(quantiles, snr), snr, [20, 250], current=calibration)
    np.testing.assert_allclose(again, scales, rtol=1e-3)


def test_factors_are_linear_in_log_snr_and_constant_beyond_the_nodes():
    calibration = IntervalCalibration(np.array([20.0, 200.0]), np.array([[1.2, 0.9], [0.8, 1.1]]), ("a", "b"))
    f = calibration.factors(np.array([5.0, 20.0, np.sqrt(20 * 200), 200.0, 1000.0]))
    np.testing.assert_allclose(f, [[1.2, 0.9], [1.2, 0.9], [1.0, 1.0], [0.8, 1.1], [0.8, 1.1]])
    q = np.array([[[-2.0, -1, 0, 1, 2]]]).transpose(0, 2, 1).repeat(2, axis=2)
    q[0, :, 1] += 10
    out = calibration.apply(q, np.array([20.0]))
    np.testing.assert_allclose(out[0, :, 0], [-2.4, -1.2, 0, 1.2, 2.4])
    np.testing.assert_allclose(out[0, :, 1], 10 + 0.9 * np.array([-2.0, -1, 0, 1, 2]))
    np.testing.assert_allclose(calibration.undo(out, np.array([20.0])), q)  # the flow's own quantiles back
    assert np.isnan(calibration.apply(np.full((1, 5, 2), np.nan), np.array([50.0]))).all()
    # widened intervals stop at the training bounds, where the samples do
    clipped = calibration.apply(q, np.array([20.0]), lower=np.array([-2.2, 0.0]), upper=np.array([2.2, 20.0]))
    np.testing.assert_allclose(clipped[0, :, 0], [-2.2, -1.2, 0, 1.2, 2.2])


def test_smoothing_keeps_a_quadratic_in_log_snr_and_averages_out_scatter():
    nodes = np.array([10.0, 20, 50, 100, 250, 500, 1000])
    x = np.log(nodes)
    smooth = np.stack([1.3 - 0.08 * x, 1.0 + 0.01 * (x - 4) ** 2], axis=1)
    np.testing.assert_allclose(smooth_in_log_snr(nodes, smooth), smooth, atol=1e-12)
    noisy = smooth + np.random.default_rng(0).normal(scale=0.03, size=smooth.shape)
    assert np.abs(smooth_in_log_snr(nodes, noisy) - smooth).max() < np.abs(noisy - smooth).max()
    few = np.array([[1.1, 0.9], [1.0, 1.0], [0.9, 1.2]])
    np.testing.assert_array_equal(smooth_in_log_snr(nodes[:3], few), few)  # too few nodes for a quadratic


def test_fit_refuses_rows_off_the_nodes_and_too_few_rows():
    rng = np.random.default_rng(1)
    truth, quantiles, snr = _gaussian_rows(rng, 200, 20, np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="not among the fitting nodes"):
        fit_scales(truth, quantiles, snr, [50])
    with pytest.raises(ValueError, match="usable rows"):
        fit_scales(truth[:10], quantiles[:10], snr[:10], [20])


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle, a survey with truth, its catalogue before, the fit and the catalogue after."""
    pytest.importorskip("torch")
    from export.intervals import calibrate_intervals
    from runtime.pipeline import ProcessOptions, process_survey
    from spectra.stores.survey import make_survey, parse_snr

    _, grid, _, bundle = tiny_bundle
    tmp = tmp_path_factory.mktemp("intervals")
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    survey = make_survey(grid, parse_snr("30,300"), tmp / "survey.zarr", seed=5, chunk=32, progress=False)
    options = ProcessOptions(samples=256, seed=2, device="cpu")
    process_survey(survey, copy, tmp / "before.zarr", options, progress=False)
    entry = calibrate_intervals(copy, [tmp / "before.zarr"], [survey])
    process_survey(survey, copy, tmp / "after.zarr", options, progress=False)
    return copy, survey, tmp / "before.zarr", entry, tmp / "after.zarr", options


def _columns(path):
    from catalog.writers import CatalogueStore

    store = CatalogueStore.open(path)
    return {name: store.column(name) for name in store.columns}


def test_calibrated_catalogue_rescales_only_the_intervals(calibrated):
    bundle, survey, before, entry, after, _ = calibrated
    from runtime.bundle import load_bundle

    a, b = _columns(before), _columns(after)
    manifest = load_bundle(bundle).manifest
    assert entry["snr"] == [30.0, 300.0] and set(entry["scale"]) == set(manifest.names)
    assert any(abs(v - 1) > 0.05 for values in entry["scale"].values() for v in values)  # a 2-epoch model is off
    factors = manifest.interval_calibration.factors(a["snr"])
    for j, p in enumerate(manifest.names):
        np.testing.assert_array_equal(a[p], b[p])  # MAP
        np.testing.assert_array_equal(a[f"{p}_p50"], b[f"{p}_p50"])
        for q in ("p2_5", "p16", "p84", "p97_5"):
            expected = np.clip(a[f"{p}_p50"] + factors[:, j] * (a[f"{p}_{q}"].astype(float) - a[f"{p}_p50"]),
                               manifest.lower[j], manifest.upper[j])  # widened intervals stop at the bounds
            np.testing.assert_allclose(b[f"{p}_{q}"], expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())
    # on the rows it was fitted on, every parameter's 68 % interval now holds 68 % of the truths at each S/N
    import zarr

    root = zarr.open_group(str(survey), mode="r")
    names = list(root["truth"].attrs["names"])
    truth = root["truth"][:]
    for value in (30, 300):
        rows = np.isclose(b["snr"], value)
        for p in manifest.names:
            t = truth[rows, names.index(p)]
            inside = np.mean((b[f"{p}_p16"][rows] <= t) & (t <= b[f"{p}_p84"][rows]))
            assert abs(inside - COVERAGE) <= 2.5 / rows.sum(), (p, value, inside)
    assert max(entry["coverage68_calibrated"]["30"]) - min(entry["coverage68_calibrated"]["30"]) < 0.05


def test_python_api_reports_the_catalogues_calibrated_quantiles(calibrated):
    import zarr

    from runtime.api import load_model

    bundle, survey, _, _, after, options = calibrated
    b = _columns(after)
    root = zarr.open_group(str(survey), mode="r")
    model = load_model(bundle, precision="fp32", device="cpu")
    row = 3
    post = model.posterior(root["flux"][row], float(root["snr"][row]), int(root["source_id"][row]),
                           seed=options.seed, samples=options.samples)
    q = post.quantiles()
    samples = post.calibrated_samples()
    assert np.all(samples >= post.bounds[0]) and np.all(samples <= post.bounds[1])
    for j, p in enumerate(model.names):
        np.testing.assert_allclose(q[index("p16"), j], b[f"{p}_p16"][row], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(q[index("p97_5"), j], b[f"{p}_p97_5"][row], rtol=1e-5, atol=1e-5)


def test_refit_on_a_calibrated_catalogue_keeps_the_factors_and_needs_the_same_bundle(calibrated, tmp_path):
    from export.intervals import calibrate_intervals
    from runtime.pipeline import process_survey

    bundle, survey, before, entry, _, options = calibrated
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with pytest.raises(ValueError, match="not made with"):
        calibrate_intervals(copy, [before], [survey])  # made before the calibration changed the manifest
    process_survey(survey, copy, tmp_path / "again.zarr", replace(options), progress=False)
    second = calibrate_intervals(copy, [tmp_path / "again.zarr"], [survey])
    for p, values in entry["scale"].items():
        np.testing.assert_allclose(second["scale"][p], values, rtol=0.08, err_msg=p)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(snr=[300.0, 30.0]), "increasing"),
    (lambda e: e["scale"].pop("teff"), "every parameter"),
    (lambda e: e["scale"].update(teff=[1.0, 50.0]), "teff"),
    (lambda e: e["scale"].update(teff=[1.0]), "one per S/N"),
])
def test_bad_calibration_entries_are_refused(calibrated, tmp_path, change, message):
    from runtime.bundle import BundleError, load_bundle

    from conftest import rehash_bundle

    bundle = calibrated[0]
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    change(raw["interval_calibration"])
    (copy / "manifest.json").write_text(json.dumps(raw))
    rehash_bundle(copy)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)
