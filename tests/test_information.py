"""The information limit: Cramér–Rao bound, fit shift and finite-difference Jacobian (training/information.py),
benchmarks/information_limit.py on two shipped held-out stars, and the σ / bound column of `training evaluate`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.information import (
    central_jacobian,
    covariance,
    cramer_rao_bound,
    fisher_information,
    fit_shift,
    nuisance_bound,
)

ROOT = Path(__file__).resolve().parents[1]


def _linear_model(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (P=300, D=4) design whose columns differ in scale by 10⁴ (kelvin vs dex) and are correlated (so that
    marginal and conditional bounds differ), and per-pixel σ of Eq. 1's kind (varying over the pixels)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((300, 4))
    base[:, 1] += 0.8 * base[:, 0]  # correlated labels: marginalising matters
    a = base * np.array([1e-4, 0.3, 1.0, 2.0])
    sigma = 0.05 * rng.uniform(0.5, 1.5, 300)
    return a, sigma


def test_nuisance_bound_equals_the_dense_formula_and_the_plain_bound_without_nuisance():
    """Free parameters appended and marginalised, correlated noise by Woodbury: the same as inverting the dense
    (P x P) covariance; with neither, the plain bound; an extra noise along a label's own signature widens it by
    exactly sqrt(1 + a^2 |j|^2 / sigma^2)-type factors the dense formula gives."""
    a, sigma = _linear_model(3)
    rng = np.random.default_rng(4)
    free = rng.standard_normal((300, 3)) * 0.02
    u = rng.standard_normal((300, 5)) * 0.03
    u[:, 0] = 0.5 * a[:, 2]  # a residual that looks like a change of label 2
    np.testing.assert_allclose(nuisance_bound(a, sigma), cramer_rao_bound(a, sigma)[0], rtol=1e-10)
    full = np.concatenate([a, free], axis=1)
    noise = np.diag(sigma**2) + u @ u.T
    dense = np.sqrt(np.diag(np.linalg.inv(full.T @ np.linalg.solve(noise, full)))[:4])
    np.testing.assert_allclose(nuisance_bound(a, sigma, free=free, correlated=u), dense, rtol=1e-7)
    only_free = np.sqrt(np.diag(np.linalg.inv(full.T @ np.diag(sigma**-2) @ full))[:4])
    np.testing.assert_allclose(nuisance_bound(a, sigma, free=free), only_free, rtol=1e-8)
    plain = cramer_rao_bound(a, sigma)[0]
    widened = nuisance_bound(a, sigma, correlated=u)
    assert np.all(widened >= plain * (1 - 1e-12)) and widened[2] > 1.5 * plain[2]
    # several S/N at once: the pixel noise scales as 1/(S/N), the extra noise does not
    many = nuisance_bound(a, sigma, free=free, correlated=u, snr=[1.0, 4.0])
    at4 = np.linalg.inv(full.T @ np.linalg.solve(np.diag((sigma / 4.0) ** 2) + u @ u.T, full))
    np.testing.assert_allclose(many[0], dense, rtol=1e-7)
    np.testing.assert_allclose(many[1], np.sqrt(np.diag(at4)[:4]), rtol=1e-7)
    np.testing.assert_allclose(nuisance_bound(a, sigma, snr=[4.0])[0], plain / 4.0, rtol=1e-8)


def test_linear_gaussian_model_jacobian_bound_and_monte_carlo():
    a, sigma = _linear_model()
    theta0 = np.array([5000.0, 3.0, -0.5, 0.1])
    jac = central_jacobian(lambda t: t @ a.T, theta0, np.array([10.0, 0.02, 0.02, 0.02]))
    np.testing.assert_allclose(jac, a, rtol=1e-6, atol=1e-12)

    bound, fisher = cramer_rao_bound(jac, sigma)
    expected_fisher = a.T @ np.diag(sigma**-2) @ a
    np.testing.assert_allclose(fisher, expected_fisher, rtol=1e-10)
    np.testing.assert_allclose(bound, np.sqrt(np.diag(np.linalg.inv(expected_fisher))), rtol=1e-8)
    np.testing.assert_allclose(covariance(jac, sigma), np.linalg.inv(expected_fisher), rtol=1e-7, atol=1e-20)
    assert np.all(bound[:2] > 1.2 / np.sqrt(np.diag(expected_fisher))[:2]), "marginal, not conditional, bounds"

    # Weighted least squares is efficient for a linear-Gaussian model: its scatter over noise draws is the bound.
    rng = np.random.default_rng(1)
    w = 1.0 / sigma
    estimates = np.array([np.linalg.lstsq(a * w[:, None], (a @ theta0 + sigma * rng.standard_normal(300)) * w,
                                          rcond=None)[0] for _ in range(2000)])
    np.testing.assert_allclose(estimates.std(axis=0), bound, rtol=0.10)
    assert np.all(np.abs(estimates.mean(axis=0) - theta0) < 4 * bound / np.sqrt(2000))  # unbiased


def test_bound_scales_with_noise_and_uninformative_labels_are_infinite():
    a, sigma = _linear_model(2)
    bound, _ = cramer_rao_bound(a, sigma)
    np.testing.assert_allclose(cramer_rao_bound(a, sigma / 5.0)[0], bound / 5.0, rtol=1e-10)  # 1/(S/N)
    padded = np.column_stack([a[:, :2], np.zeros(300), a[:, 2:]])  # a label the spectrum does not depend on
    b2, _ = cramer_rao_bound(padded, sigma)
    assert np.isinf(b2[2])
    np.testing.assert_allclose(b2[[0, 1, 3, 4]], bound, rtol=1e-10)
    twin = np.column_stack([a, 2.0 * a[:, 3]])  # two labels with indistinguishable effects
    b3, _ = cramer_rao_bound(twin, sigma)
    assert np.isinf(b3[3]) and np.isinf(b3[4]) and np.all(np.isfinite(b3[:3]))


def test_central_differences_are_central():
    """f(θ) = θ² has central difference exactly 2θ; a one-sided difference would be off by h."""
    theta = np.array([1.0, -2.0, 3.0])
    jac = central_jacobian(lambda t: t**2, theta, 0.5)
    np.testing.assert_allclose(jac, np.diag(2 * theta), atol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        central_jacobian(lambda t: t, theta, np.array([0.1, 0.0, 0.1]))


def test_fit_shift_recovers_a_linear_offset_at_any_snr():
    a, sigma = _linear_model(3)
    delta = np.array([30.0, -0.1, 0.05, 0.02])
    np.testing.assert_allclose(fit_shift(a, sigma, a @ delta), delta, rtol=1e-8)
    np.testing.assert_allclose(fit_shift(a, 7.0 * sigma, a @ delta), delta, rtol=1e-8)  # independent of S/N
    # A residual orthogonal (in the σ⁻² metric) to the model's directions moves nothing.
    w = sigma**-2
    r = np.random.default_rng(4).standard_normal(300)
    r_perp = r - a @ np.linalg.solve(a.T @ (w[:, None] * a), a.T @ (w * r))
    np.testing.assert_allclose(fit_shift(a, sigma, r_perp), 0.0, atol=1e-9)
    # Masked pixels (σ = 0 or NaN residual) take no part.
    r_bad = a @ delta
    r_bad[:5] = np.nan
    np.testing.assert_allclose(fit_shift(a, sigma, r_bad), delta, rtol=1e-8)
    np.testing.assert_allclose(fisher_information(a, np.where(np.arange(300) < 5, 0.0, sigma)),
                               a[5:].T @ (a[5:] / sigma[5:, None] ** 2), rtol=1e-10)


def _bound_file(path: Path) -> Path:
    per = {"teff": {"rms": 10.0, "median": 7.0}, "logg": {"rms": 0.05, "median": 0.02}}
    path.write_text(json.dumps({"meta": {"n_stars": 3, "emulator": "x"}, "parameters": ["teff", "logg"],
                                "bound": {"250": per, "50": {k: {"rms": 5 * v["rms"]} for k, v in per.items()}},
                                "floor": {}}))
    return path


def test_evaluate_report_has_sigma_over_bound(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("FrEIA")
    from training.evaluate import _render, efficiency, load_bound

    bound = load_bound(_bound_file(tmp_path / "bound.json"))

    def params(bias: float, sigma: float) -> dict:
        return {"bias": bias, "sigma": sigma, "rmse": float(np.hypot(bias, sigma)), "nrmse": 0.1,
                "coverage68": 0.68, "coverage95": 0.95, "median_width68": 1.0, "sbc_hist": [1] * 10}

    per_snr = {key: {"n": 10, "mean_f_reject": 0.0, "params": {"teff": params(30.0, 40.0), "logg": params(0, 0.1)}}
               for key in ("250", "20")}
    ratios = efficiency(per_snr, bound)
    assert ratios["250"]["teff"] == pytest.approx(50.0 / 10.0)  # rms(MAP - truth) = hypot(bias, sigma)
    assert ratios["250"]["logg"] == pytest.approx(0.1 / 0.05)
    assert ratios["20"] == {"teff": None, "logg": None}  # S/N 20 is not in the bound file
    for key, per in ratios.items():
        for name, value in per.items():
            per_snr[key]["params"][name]["sigma_over_bound"] = value
    metrics = {"run": "runs/x", "config": "tiny", "epoch": 1, "split": "test", "grid": "g.h5", "n_spectra": 10,
               "n_samples": 16, "spectra_per_second": 1.0, "parameters": ["teff", "logg"], "per_snr": per_snr,
               "bound": {"file": "bound.json", "snr": ["250", "50"], "n_stars": 3}}
    report = _render(metrics, {"teff": "K", "logg": "dex"})
    section = report.split("## σ / bound")[1].split("\n\n")[2].splitlines()  # the table
    assert section[2] == "| 250 | 5.00 | 2.00 |"
    assert section[3] == "| 20 | n/a | n/a |"
    del metrics["bound"]
    # optional: reports without a bound file stay as they were
    assert "σ / bound" not in _render(metrics, {"teff": "K", "logg": "dex"})
    with pytest.raises(ValueError, match="not a bound file"):
        load_bound(_write(tmp_path / "other.json", {"per_snr": {}}))


def _write(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_information_limit_script_on_two_shipped_stars(tmp_path):
    """The script runs on the shipped bundle and held-out shards, and evaluate reads what it writes."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    pytest.importorskip("FrEIA")
    from training.evaluate import efficiency, load_bound

    shards = sorted((ROOT / "training" / "grids").glob("test-sun-s9001-*.h5"))
    if not shards or not (ROOT / "runtime" / "default_bundle" / "emulator.onnx").is_file():
        pytest.skip("shipped held-out shards or bundle emulator not in this checkout")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "information_limit.py"), "--stars", "2", "--snr",
                    "50,250", "--out", str(tmp_path), "--quiet"], check=True, cwd=ROOT, capture_output=True)
    bound = load_bound(tmp_path / "bound.json")
    assert list(bound["bound"]) == ["50", "250"] and bound["meta"]["n_stars"] == 2
    teff50, teff250 = bound["bound"]["50"]["teff"]["rms"], bound["bound"]["250"]["teff"]["rms"]
    assert teff50 == pytest.approx(5.0 * teff250) and 1.0 < teff250 < 100.0
    assert np.isfinite(bound["floor"]["fe_h"]["rms"])
    per_snr = {"250": {"params": {"teff": {"bias": 0.0, "sigma": teff250}}}}
    assert efficiency(per_snr, bound)["250"]["teff"] == pytest.approx(1.0)
    # the normalised input (pseudo-continuum free, input mask left out) holds less than Eq. 1 says
    setup = bound["setup_bound"]["normalised"]
    for key in ("50", "250"):
        for name in ("teff", "logg", "fe_h"):
            assert setup[key][name]["rms"] > bound["bound"][key][name]["rms"]
    ratio = efficiency(per_snr, bound, "normalised")["250"]["teff"]
    assert ratio == pytest.approx(teff250 / setup["250"]["teff"]["rms"])
    report = (tmp_path / "report.md").read_text()
    assert "## Headline parameters" in report and "| 250 | normalised |" in report


def test_estimator_study_reads_each_rows_own_bound(tmp_path):
    """The median star's σ / own bound needs each survey row's bound: ``per_star.json`` rows are grid rows, the
    survey's ``base_index`` says which grid row a row is (three S/N per star, any order); a row without a bound
    gives no such figure rather than someone else's bound."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from estimator_study import MEDIAN_ABS_NORMAL, _star_bounds

    (tmp_path / "bound.json").write_text("{}")
    (tmp_path / "per_star.json").write_text(json.dumps(
        {"rows": [4, 7], "parameters": ["teff", "logg"], "bound_at_snr1": [[1000.0, 2.0], [3000.0, 5.0]]}))
    got = _star_bounds(tmp_path / "bound.json", np.array([7, 7, 4, 7]))
    np.testing.assert_array_equal(got["teff"], [3000.0, 3000.0, 1000.0, 3000.0])
    np.testing.assert_array_equal(got["logg"], [5.0, 5.0, 2.0, 5.0])
    assert _star_bounds(tmp_path / "bound.json", np.array([4, 5])) is None
    assert _star_bounds(tmp_path / "missing" / "bound.json", np.array([4])) is None
    # a normal error at each star's own bound has median |error| / bound = 0.6745: the figure is then 1
    rng = np.random.default_rng(0)
    bounds = rng.uniform(1.0, 100.0, 200_000)
    assert np.median(np.abs(rng.standard_normal(bounds.size) * bounds) / bounds) / MEDIAN_ABS_NORMAL \
        == pytest.approx(1.0, abs=0.01)


def _coverage_module(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "coverage.py")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # for its `_common` import
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coverage_against_bound_splits_sigma_by_metallicity_and_caps_each_bin_at_its_limit(tmp_path, monkeypatch):
    """benchmarks/coverage.py --bound: rows (two S/N interleaved, as in a survey) are matched to their stars in a
    per-star file with its own parameter order and an extra parameter; σ per [Fe/H] bin is the rms over draws and
    stars, the limit is bound ⊕ floor, the shares add up to one, only a bin above its limit is capped, and a row
    without a MAP is left out and counted."""
    module = _coverage_module(monkeypatch)
    names = ["teff", "logg", "fe_h", "mg_fe", "ca_fe"]  # the catalogue's order
    order = ["fe_h", "vmic", "teff", "ca_fe", "logg", "mg_fe"]  # the per-star file's order, one extra parameter
    stars = {"A": {"teff": 5000.0, "logg": 2.0, "fe_h": -4.0}, "B": {"teff": 5800.0, "logg": 4.4, "fe_h": 0.0},
             "C": {"teff": 6200.0, "logg": 4.0, "fe_h": -0.5}}
    bound = {"A": {"teff": 8000.0, "logg": 20.0}, "B": {"teff": 1000.0, "logg": 2.0},
             "C": {"teff": 2000.0, "logg": 6.0}}
    floor = {"A": {"teff": 0.0}, "B": {"teff": 30.0}, "C": {"teff": 0.0}}

    def row(table, star, fill):
        return [table[star].get(p, fill) for p in order]

    keys = ["C", "A", "B"]  # another star order than the rows
    per_star = tmp_path / "per_star.json"
    per_star.write_text(json.dumps({"parameters": order, "labels": [row(stars, k, 0.1) for k in keys],
                                    "bound_at_snr1": [row(bound, k, 7.0) for k in keys],
                                    "floor": [row(floor, k, 0.0) for k in keys]}))
    survey = ["A", "A", "B", "B", "C", "C"]
    snr = np.array([20.0, 250.0] * 3)
    truth = np.array([[stars[k].get(p, 0.1) for p in names] for k in survey])
    errors = np.zeros((2, 6, 5))
    errors[:, 0, 0] = [300.0, -300.0]  # A at S/N 20: below its limit (400 K)
    errors[:, 2, 0] = [100.0, 100.0]  # B: above its limit (√(50² + 30²) K)
    errors[:, 4, 0] = [150.0, -150.0]  # C: above its limit (100 K), so the rich bin is above its summed limit too
    errors[:, 1, 0], errors[:, 3, 0], errors[:, 5, 0] = 10.0, 4.0, np.nan  # S/N 250; C has no MAP in any draw
    result = module.against_bound(names, truth, errors, snr, per_star)["per_snr"]
    low, high = result["20"]["teff"], result["250"]["teff"]
    assert low["sigma"] == pytest.approx(np.sqrt((300.0**2 + 100.0**2 + 150.0**2) / 3))
    assert low["rms_bound"] == pytest.approx(np.sqrt((400.0**2 + 50.0**2 + 100.0**2) / 3))
    assert low["rms_floor"] == pytest.approx(np.sqrt(30.0**2 / 3))
    rich_limit = 50.0**2 + 30.0**2 + 100.0**2
    assert low["sigma_at_limit"] == pytest.approx(np.sqrt((300.0**2 + rich_limit) / 3))
    poor, rich = low["bins"][0], low["bins"][3]
    assert (poor["stars"], rich["stars"]) == (1, 2)
    assert low["bins"][1] == {"stars": 0, "sigma": None, "rms_bound": None, "rms_limit": None, "share_of_ms": 0.0}
    assert poor["sigma"] == pytest.approx(300.0) and poor["rms_limit"] == pytest.approx(400.0)
    assert rich["rms_limit"] == pytest.approx(np.sqrt(rich_limit / 2))
    assert sum(b["share_of_ms"] for b in low["bins"]) == pytest.approx(1.0)
    assert result["20"]["logg"]["rms_bound"] == pytest.approx(np.sqrt((1.0**2 + 0.1**2 + 0.3**2) / 3))
    assert high["rows_without_map"] == 1 and low["rows_without_map"] == 0
    assert high["sigma"] == pytest.approx(np.sqrt((10.0**2 + 4.0**2) / 2))
    assert high["rms_bound"] == pytest.approx(np.sqrt(((8000 / 250) ** 2 + 4.0**2 + 8.0**2) / 3))
    assert sum(b["share_of_ms"] for b in high["bins"]) == pytest.approx(1.0)
    truth[2, 0] += 100.0  # a row of no star
    with pytest.raises(SystemExit, match="not the stars of this survey"):
        module.against_bound(names, truth, errors, snr, per_star)


def test_coverage_against_bound_refuses_a_file_that_is_not_a_per_star_file(tmp_path, monkeypatch):
    module = _coverage_module(monkeypatch)
    names, truth, errors, snr = ["teff", "logg", "fe_h", "mg_fe", "ca_fe"], np.zeros((1, 5)), np.zeros((1, 1, 5)), \
        np.array([20.0])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SystemExit, match=r"broken\.json: cannot read"):
        module.against_bound(names, truth, errors, snr, broken)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"parameters": names, "labels": [[0.0] * 5], "bound_at_snr1": [[1.0] * 5]}))
    with pytest.raises(SystemExit, match=r"old\.json: not a per_star\.json .*missing floor"):
        module.against_bound(names, truth, errors, snr, old)
    with pytest.raises(SystemExit, match=r"missing\.json: cannot read"):
        module.against_bound(names, truth, errors, snr, tmp_path / "missing.json")
