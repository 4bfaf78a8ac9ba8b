import numpy as np

from spectra.wavegrid import air_to_vacuum, hr_grid, vacuum_to_air, working_grid


def test_hr_grid_definition():
    grid = hr_grid()
    assert grid.size == 11_400 + 13_800  # document: paper quotes 25 197 from the 4FS ETC
    green, red = grid.wave[grid.window("green")], grid.wave[grid.window("red")]
    assert np.isclose(green[0], 5160.025) and np.isclose(green[-1], 5729.975)
    assert np.isclose(red[0], 6100.025) and np.isclose(red[-1], 6789.975)
    assert np.allclose(np.diff(green), 0.05) and np.allclose(np.diff(red), 0.05)
    assert grid.sha256() == hr_grid().sha256()


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
