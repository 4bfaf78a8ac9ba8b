import numpy as np
import pytest

from spectra.synth.atmospheres import AtmosphereCoverageError, AtmosphereGrid, default_grid, read_marcs

from conftest import shared_file


def test_read_marcs_solar_model():
    sun = read_marcs(shared_file("atmospheres", "korg_test", "sun.mod"))
    assert sun.teff == 5777 and abs(sun.logg - 4.44) < 0.01 and sun.geometry == "plane"
    assert sun.data.shape == (56, 7) and sun.lgtaur[0] == -5.0
    assert abs(sun.abund[25] - 7.45) < 1e-6  # Fe, H = 12


def test_corrupt_model_file_gives_a_clear_error(tmp_path):
    text = shared_file("atmospheres", "korg_test", "sun.mod").read_text().splitlines()
    bad = tmp_path / "broken.mod"
    bad.write_text("\n".join(text[:40]))
    with pytest.raises(ValueError, match=r"broken.mod: not a readable MARCS .mod file"):
        read_marcs(bad)


def test_grid_points_are_reproduced_exactly():
    grid = default_grid()
    i = int(np.flatnonzero((grid.geometry == "plane") & (grid.params[:, 2] == 0.0))[5])
    teff, logg, monh = grid.params[i]
    atm = grid.atmosphere(teff, logg, monh)
    assert atm.method == "interpolated"
    np.testing.assert_allclose(atm.data, grid.data[i], rtol=1e-6)


def test_interpolated_sun_matches_the_solar_model():
    sun = read_marcs(shared_file("atmospheres", "korg_test", "sun.mod"))
    atm = default_grid().atmosphere(5777, 4.44, 0.0)
    assert atm.method == "interpolated"
    assert np.max(np.abs(atm.quantity("T") / sun.data[:, 0] - 1)) < 0.005
    assert np.max(np.abs(atm.quantity("Pg") / sun.data[:, 3] - 1)) < 0.02


@pytest.mark.parametrize(("teff", "logg", "monh", "method"), [
    (5500, 4.0, -2.2, "interpolated"),
    (5500, 4.0, -1.0, "interpolated_wide"),       # the -2 ... 0 gap of the public grid
    (4500, 2.0, -1.0, "metallicity_transfer"),    # no metal-rich models below 5000 K
    (6800, 4.2, 0.3, "metallicity_transfer"),     # nor above 6500 K
])
def test_methods_are_recorded(teff, logg, monh, method):
    atm = default_grid().atmosphere(teff, logg, monh)
    assert atm.method == method
    assert np.all(np.isfinite(atm.data)) and np.all(np.diff(atm.quantity("Pg")) > 0)


def test_structure_is_continuous_across_the_coverage_edge():
    grid = default_grid()
    inside = grid.atmosphere(5000.0, 4.0, -1.0)      # bracketed (wide)
    outside = grid.atmosphere(4999.9, 4.0, -1.0)     # transferred
    assert outside.method == "metallicity_transfer"
    np.testing.assert_allclose(outside.quantity("T"), inside.quantity("T"), rtol=2e-3)
    np.testing.assert_allclose(outside.quantity("Pg"), inside.quantity("Pg"), rtol=5e-3)


def test_uncovered_point_and_missing_folder_errors(tmp_path):
    with pytest.raises(AtmosphereCoverageError, match=r"no sphere MARCS models bracket T_eff = 7400 K, log g = 0.5"):
        default_grid().atmosphere(7400, 0.5, 0.0)
    with pytest.raises(FileNotFoundError, match=r"atmosphere source .*nowhere does not exist"):
        AtmosphereGrid.from_path(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no MARCS .mod files"):
        AtmosphereGrid.from_path(tmp_path / "empty")


def test_packed_grid_matches_the_shared_tarball():
    tar = shared_file("atmospheres", "marcs_asap_lib", "marcs_standard_plane_sphere_asaplib.tar.gz")
    fresh = AtmosphereGrid.from_path(tar)
    packed = default_grid()
    assert len(fresh) == len(packed) == 1168
    np.testing.assert_allclose(fresh.data, packed.data, rtol=1e-6)
