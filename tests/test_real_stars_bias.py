"""The leave-one-star-out Eq. B.1 bias correction of benchmarks/real_stars.py on hand-made stars whose answer is known:
residuals exactly linear in T_eff are removed exactly from every held-out star, the Sun's two spectra leave together,
and a literature value without an error gets the assumed one."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from spectra.contracts.flags import Flag


@pytest.fixture
def real_stars(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # for its `_common` import
    return importlib.import_module("real_stars")


def _star(name: str, teff: float, residual: dict[str, float], error: float | None = 1.0, flags: int = 0,
          half68: float = 0.5) -> dict:
    """A star dict as real_stars.main builds it: literature 0 (so MAP = residual, except T_eff: MAP = teff)."""
    literature = {"teff": (teff - residual["teff"], error), "logg": (0.0, error), "fe_h": (0.0, error)}
    maps = {"teff": teff, "logg": residual["logg"], "fe_h": residual["fe_h"]}
    s250 = {p: {"map": m, "p16": m - half68, "p84": m + half68} for p, m in maps.items()}
    return {"star": name, "literature": literature, "s250": {**s250, "flags": flags}}


def _linear(teff: float) -> dict[str, float]:
    return {"teff": -0.1 * teff + 500.0, "logg": 2e-4 * teff - 1.0, "fe_h": -5e-5 * teff + 0.2}


def test_exactly_linear_residuals_are_removed_from_every_held_out_star(real_stars):
    names = ["UVES Sun", "HARPS Sun (Ganymede)", "A", "B", "C", "D"]
    teffs = [5700.0, 5800.0, 6500.0, 6200.0, 4800.0, 4500.0]
    stars = [_star(n, t, _linear(t), error=None if n in ("C", "D") else 1.0) for n, t in zip(names, teffs, strict=True)]
    b = real_stars.bias_correction(stars)
    assert b["rows"] == 6 and b["stars"] == 5
    sun = b["held_out"][0]
    assert sun["star"] == "Sun" and [r["spectrum"] for r in sun["rows"]] == names[:2] and sun["fit_rows"] == 4
    for e in b["held_out"]:
        for p, c in e["coefficients"].items():
            assert c["n"] == e["fit_rows"]
            np.testing.assert_allclose([c["a"], c["b"]], [{"teff": -0.1, "logg": 2e-4, "fe_h": -5e-5}[p],
                                                          {"teff": 500.0, "logg": -1.0, "fe_h": 0.2}[p]], atol=1e-9)
        for r in e["rows"]:
            np.testing.assert_allclose(list(r["after"].values()), 0.0, atol=1e-8)
    for p in ("teff", "logg", "fe_h"):
        assert b["rms"][p]["rows"] == 6 and b["rms"][p]["before"] > 0 and b["rms"][p]["after"] < 1e-8
        assert b["in_sample"][p]["n"] == 6


def test_an_unseen_offset_is_not_removed_and_the_assumed_error_weighs(real_stars):
    stars = [_star(n, t, _linear(t)) for n, t in (("A", 5000.0), ("B", 5500.0), ("C", 6000.0))]
    odd = _linear(6500.0)
    odd["fe_h"] += 0.3  # a bias only this star has: a fit that never saw it cannot know it
    stars.append(_star("D", 6500.0, odd, error=None))
    b = real_stars.bias_correction(stars)
    d = next(e for e in b["held_out"] if e["star"] == "D")
    assert d["rows"][0]["after"]["fe_h"] == pytest.approx(0.3, abs=1e-9)
    rows = real_stars.bias_rows(stars)
    assert rows[3]["sigma"]["teff"] == pytest.approx(np.hypot(100.0, 0.5))  # ASSUMED_ERROR for None
    assert rows[0]["sigma"]["fe_h"] == pytest.approx(np.hypot(1.0, 0.5))


def test_too_few_rows_and_bad_rows(real_stars):
    stars = [_star(n, t, _linear(t)) for n, t in (("A", 5000.0), ("B", 5500.0), ("C", 6000.0))]
    stars.append(_star("E", 6100.0, _linear(6100.0), flags=int(Flag.ALL_REJECTED)))
    b = real_stars.bias_correction(stars)
    assert b["rows"] == 3  # the BAD row is no row of the fit
    assert all(e["coefficients"] is None and e["rows"][0]["after"] is None for e in b["held_out"])  # 2 rows left
    assert b["rms"]["teff"]["rows"] == 0 and np.isnan(b["rms"]["teff"]["after"])
    assert b["in_sample"]["teff"]["n"] == 3
    assert "Bias correction" in "\n".join(real_stars.render_bias(b))


def test_a_star_without_a_map_is_reported_not_a_crash(real_stars):
    """A spectrum whose every posterior sample fell outside the bounds has no MAP: the report says so in the
    re-simulation table and still lists the star everywhere else (it once ended the benchmark)."""
    params = real_stars.SHOWN

    def variant(value: float) -> dict:
        return {**{p: {"map": value, "p16": value, "p84": value} for p in params}, "flags": 0, "f_reject": 0.0}

    def star(name: str, value: float, resimulation: dict | None) -> dict:
        return {"star": name, "file": f"{name}.fits", "reference": "test", "rv": 0.0, "rv_error": 0.1,
                "rv_template": "sun", "snr": 300.0, "snr_source": "DER_SNR", "coverage": 1.0,
                "input_resolution": 50000.0, "ingest_flags": [],
                "literature": {"teff": (5000.0, 50.0), "logg": (4.0, 0.1), "fe_h": (0.0, 0.1)},
                "own": {**variant(value), "chi2_resim": 2.0, "resim_rms": 0.01}, "s250": variant(value),
                "resimulation": resimulation, "plot": None if resimulation is None else f"{name}.png"}

    empty = star("Empty", float("nan"), None)
    empty["own"]["f_reject"] = 1.0
    good = star("Good", 5000.0, {"median_abs_dev_percent": 0.3, "rms_percent": 1.0, "pixels": 100})
    text = real_stars.render({"bundle": "B", "name_option": "", "machine": "M", "samples": 64, "ingest_seconds": 1.0,
                              "stars": [good, empty]})
    assert "| Empty | no MAP (f_reject 1.00: every sample outside the bounds) |" in text
    assert "| Good | 0.30 % | 1.00 % | 100 |" in text and "![Good](Good.png)" in text
