"""Issue 20, the line list: built from every shared list for the whole prior (reproducibly), and calibrated on
the Sun by a bounded fit that recovers known log gf errors. PySME runs (seconds each): marked slow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared_file

pytest.importorskip("pysme")
pytestmark = pytest.mark.slow

from spectra.synth.linecal import _synthesise, calibrate_to_sun, parameter_groups  # noqa: E402
from spectra.synth.linelist_survey import (  # noqa: E402
    PRIOR_CORNERS,
    _is_molecule,
    build_survey_linelist,
    central_depths,
    union_of_sources,
)
from spectra.synth.linelists import default_linelist  # noqa: E402
from spectra.wavegrid import hr_grid, vacuum_to_air  # noqa: E402

#: 3 Å around Li I 6708 (vacuum): Li, CaH, CN, TiO and Fe lines, hyperfine components
LI_REGION = (6708.0, 6711.0)


def test_the_survey_list_is_reproducible_and_keeps_what_matters_somewhere():
    shared = shared_file("linelists").parent
    corners = (PRIOR_CORNERS[0], PRIOR_CORNERS[3])  # a cool metal-rich giant and the Sun
    first = build_survey_linelist(shared, corners=corners, wave_range=LI_REGION, log=lambda m: None)
    again = build_survey_linelist(shared, corners=corners, wave_range=LI_REGION, log=lambda m: None)
    assert first.lines.sha256() == again.lines.sha256() and len(first.lines) > 20
    kept = first.lines.lines
    assert (kept["depth"] >= 0.005).all()  # the selection rule
    assert {"Li 1", "TiO 1", "Fe 1"} <= set(kept["species"])
    assert first.record["n_union"] > first.record["n_kept"]  # lines too weak everywhere are dropped
    weak_in_sun = central_depths(kept, PRIOR_CORNERS[3][:4]) < 0.005
    assert weak_in_sun.sum() > 0.5 * len(kept)  # what a solar extract would have missed


def test_molecules_come_whole_from_one_list():
    union, record = union_of_sources(shared_file("linelists").parent)
    molecules = union[union["species"].map(_is_molecule)]
    assert (molecules["reference"].str.startswith("GALAH")).all()
    assert record["counts"]["vald_added"] > 0 and record["counts"]["fasma_added"] > 0
    assert _is_molecule("TiO 1") and _is_molecule("C2 1") and not _is_molecule("Fe 2")


def test_parameter_groups_never_overlap():
    rng = np.random.default_rng(0)
    wave, radius = np.sort(rng.uniform(5200, 5210, 60)), rng.choice([0.8, 6.0], 60)
    groups = parameter_groups(wave, radius)
    assert sorted(np.concatenate(groups).tolist()) == list(range(60))
    for group in groups:
        order = group[np.argsort(wave[group])]
        assert (wave[order][1:] - radius[order][1:] > wave[order][:-1] + radius[order][:-1]).all()


def test_calibration_recovers_known_log_gf_errors():
    """An 'observed' Sun synthesised with the packaged list in 6 Å; the same lines with three log gf off by
    +0.25 dex; the fit must bring them back within 0.05 dex and the residual down by 5x."""
    lines = default_linelist().lines
    region = lines[lines["wlcent"].between(6150.0, 6156.0)].reset_index(drop=True)
    depth = central_depths(region, (5772.0, 4.44, 0.0, 1.0))
    truth = region[depth >= 0.03].reset_index(drop=True)
    depth = depth[depth >= 0.03]
    assert 3 <= len(truth) <= 30
    off = np.argsort(-depth)[:3]  # the three strongest lines
    wrong = truth.copy()
    wrong.loc[off, "gflog"] += 0.25
    hr = hr_grid()
    observed = _synthesise(truth)
    lo, hi = vacuum_to_air(np.array([6150.0, 6156.0]))
    usable = (hr.wave > lo) & (hr.wave < hi)
    before = np.sqrt(np.mean((_synthesise(wrong) - observed)[usable] ** 2))
    result = calibrate_to_sun(wrong, depth, observed, usable, iterations=2, workers=1, log=lambda m: None)
    after = np.sqrt(np.mean((_synthesise(result.lines) - observed)[usable] ** 2))
    np.testing.assert_allclose(result.lines["gflog"].to_numpy()[off], truth["gflog"].to_numpy()[off], atol=0.05)
    assert after < before / 5, (before, after)
    assert isinstance(result.changes, pd.DataFrame) and set(result.changes["parameter"]) <= {"log_gf", "vdw_dex"}


def test_feature_pass_fixes_far_off_lines_and_adds_missing_ones():
    """After the line-by-line pass: a line 1.2 dex too strong (beyond its 0.5 dex bound) is brought back through
    the wider bound, and a line the list lacks gets a pseudo-line at its place; both features disappear."""
    from spectra.synth.linecal import FEATURE_THRESHOLD, PSEUDO_LINE, refine_features, residual_features

    lines = default_linelist().lines
    region = lines[lines["wlcent"].between(6150.0, 6156.0)].reset_index(drop=True)
    depth = central_depths(region, (5772.0, 4.44, 0.0, 1.0))
    truth = region[depth >= 0.03].reset_index(drop=True)
    depth = depth[depth >= 0.03]
    order = np.argsort(-depth)
    strong, missing = int(order[0]), int(order[1])
    wrong = truth.copy()
    wrong.loc[strong, "gflog"] += 1.2
    wrong = wrong.drop(index=missing).reset_index(drop=True)
    wrong_depth = np.delete(depth, missing)
    strong -= int(missing < strong)
    hr = hr_grid()
    observed = _synthesise(truth)
    lo, hi = vacuum_to_air(np.array([6150.0, 6156.0]))
    usable = (hr.wave > lo) & (hr.wave < hi)
    before = _synthesise(wrong) - observed
    assert len(residual_features(before, usable, hr.wave)) >= 2
    prior = np.zeros(len(wrong))
    prior[strong] = 0.5  # as if the lines pass had already moved it to its bound
    result = refine_features(wrong, wrong_depth, observed, usable, prior, iterations=3, workers=1, log=lambda m: None)
    fitted = result.lines
    assert len(fitted) == len(wrong) + 1 and fitted["reference"].iloc[-1] == PSEUDO_LINE["reference"]
    missing_air = vacuum_to_air(truth["wlcent"].to_numpy()[missing])
    assert abs(vacuum_to_air(fitted["wlcent"].iloc[-1]) - missing_air) < 0.1
    assert abs(fitted["gflog"].iloc[strong] - truth["gflog"].iloc[order[0]]) < 0.15
    after = _synthesise(fitted) - observed
    assert not residual_features(after, usable, hr.wave, FEATURE_THRESHOLD)
    assert np.sqrt(np.mean(after[usable] ** 2)) < np.sqrt(np.mean(before[usable] ** 2)) / 4
    assert set(result.changes["parameter"]) == {"log_gf", "pseudo_line"}
    assert (result.changes["stage"] == "features").all()


def test_residual_features_are_runs_of_one_sign():
    wave = 6000.0 + 0.05 * np.arange(200)
    resid = np.zeros(200)
    resid[20:26] = [0.04, 0.06, 0.09, 0.07, 0.05, 0.035]  # one feature, extremum at pixel 22
    resid[26:30] = -0.05  # adjacent, other sign: a second feature
    resid[100] = 0.2  # outside the usable pixels
    usable = np.ones(200, dtype=bool)
    usable[100] = False
    from spectra.synth.linecal import residual_features

    features = residual_features(resid, usable, wave, 0.03)
    assert [round(w, 2) for w, _ in features] == [round(wave[22], 2), round(wave[26], 2)]
    assert features[0][1] == pytest.approx(0.09) and features[1][1] == pytest.approx(-0.05)
