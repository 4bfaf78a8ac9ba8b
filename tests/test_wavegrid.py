import hashlib

import numpy as np
import pytest

from spectra.wavegrid import air_to_vacuum, hr_grid, vacuum_to_air, working_grid

#: the 4MOST HR pixel grid, stated here independently of spectra.wavegrid: (window, first pixel centre, pixels);
#: 0.05 Å pixels centred at start + (i + 1/2) * 0.05. Grid files and every model bundle record its hash (below).
HR_DEFINITION = (("green", 5160.025, 11_400), ("red", 6100.025, 13_800))
HR_STEP = 0.05
HR_SHA256 = "399946c04f43509e93373720f52fd7d4672f19344abd129cec03f264a0f6a2b4"  # the default bundle's pixel_grid


def test_hr_grid_definition():
    """hr_grid() equals the grid written out here as literals, pixel for pixel, and hashes to the recorded value:
    any change of window, step, centring or count (which would orphan every grid and bundle) fails."""
    grid = hr_grid()
    assert grid.size == 11_400 + 13_800  # document: paper quotes 25 197 from the 4FS ETC
    expected = np.concatenate([first + HR_STEP * np.arange(n) for _, first, n in HR_DEFINITION])
    np.testing.assert_allclose(grid.wave, expected, rtol=0, atol=1e-9)
    for name, first, n in HR_DEFINITION:
        window = grid.wave[grid.window(name)]
        assert window.size == n and np.isclose(window[0], first), name
        assert np.isclose(window[-1], first + (n - 1) * HR_STEP) and np.allclose(np.diff(window), HR_STEP), name
    assert [s.stop - s.start for s in grid.segments] == [n for *_, n in HR_DEFINITION]
    assert grid.sha256() == HR_SHA256
    digest = hashlib.sha256(np.round(expected, 6).astype("<f8").tobytes()).hexdigest()
    assert digest == HR_SHA256  # the literal grid hashes to the recorded value too: the hash rule did not move


def test_working_grid_covers_the_hr_windows_with_padding():
    work, hr = working_grid(), hr_grid()
    assert np.allclose(np.diff(work.wave[work.segments[0]]), 0.025)
    for s_work, s_hr in zip(work.segments, hr.segments, strict=True):
        assert work.wave[s_work][0] <= hr.wave[s_hr][0] - 5.0 + 0.03
        assert work.wave[s_work][-1] >= hr.wave[s_hr][-1] + 4.9


def test_air_vacuum_standard_values_and_round_trip():
    # H alpha: 6564.61 A in vacuum is 6562.80 A in air (NIST)
    assert abs(vacuum_to_air(6564.61) - 6562.80) < 0.01
    # Na D2: 5891.58 vacuum, 5889.95 air
    assert abs(air_to_vacuum(5889.95) - 5891.58) < 0.01
    wave = np.linspace(3000, 10000, 1000)
    assert np.max(np.abs(air_to_vacuum(vacuum_to_air(wave)) - wave)) < 1e-5


def test_margin_grid_extends_each_window_and_contains_the_hr_pixels():
    """Grids synthesised with a margin hold the HR pixels exactly (rotation later needs spectrum beyond the edges)."""
    from spectra.wavegrid import GRID_MARGIN, hr_grid_of, hr_pixels

    hr, wide = hr_grid(), hr_grid(GRID_MARGIN)
    pad = round(GRID_MARGIN / HR_STEP)
    assert wide.size == hr.size + 2 * pad * len(HR_DEFINITION)
    for (name, first, n), s in zip(HR_DEFINITION, wide.segments, strict=True):
        window = wide.wave[s]
        assert window.size == n + 2 * pad and np.isclose(window[0], first - GRID_MARGIN), name
        assert np.allclose(np.diff(window), HR_STEP), name
    index = hr_pixels(wide)
    np.testing.assert_allclose(wide.wave[index], hr.wave, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(hr_pixels(hr), np.arange(hr.size))
    assert hr_grid_of(wide.wave).name == wide.name and hr_grid_of(hr.wave).sha256() == HR_SHA256
    for bad in (hr.wave[1:], wide.wave + 0.01, working_grid().wave):
        with pytest.raises(ValueError, match="not the 4MOST HR grid"):
            hr_grid_of(bad)
    with pytest.raises(ValueError, match="multiple of"):
        hr_grid(0.03)
