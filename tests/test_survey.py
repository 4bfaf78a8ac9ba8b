import numpy as np
import pytest
import zarr

from spectra.forward.degrade import measure_snr_per_angstrom
from spectra.stores.gridstore import GridReader
from spectra.stores.survey import PAPER_SNR, make_survey, parse_snr


def test_parse_snr():
    assert parse_snr("250").values == (250.0,)
    assert parse_snr("paper").values == tuple(float(v) for v in PAPER_SNR) and len(PAPER_SNR) == 19
    assert parse_snr("50,100").values == (50.0, 100.0)
    spec = parse_snr("10-1000")
    assert (spec.low, spec.high) == (10.0, 1000.0)
    for bad in ("abc", "0", "100-10", "-5"):
        with pytest.raises(ValueError, match="--snr"):
            parse_snr(bad)


def test_survey_layout_truth_and_noise(fake_grid, tmp_path):
    out = make_survey(fake_grid, parse_snr("50,250"), tmp_path / "s.zarr", seed=3, chunk=4, progress=False)
    root = zarr.open_group(str(out), mode="r")
    flux, snr, ids, base = root["flux"], root["snr"][:], root["source_id"][:], root["base_index"][:]
    assert flux.shape == (10, 25_200) and flux.dtype == np.float32 and flux.chunks == (4, 25_200)
    assert list(base) == [0, 0, 1, 1, 2, 2, 3, 3, 5, 5]          # unfinished row 4 skipped
    assert len(set(ids)) == 10 and list(snr[:2]) == [50.0, 250.0]
    assert root["truth"].attrs["names"][0] == "teff"
    with GridReader(fake_grid) as grid:
        np.testing.assert_array_equal(root["truth"][:], grid.labels[base])
        clean = grid.flux[1]
        assert abs(measure_snr_per_angstrom(flux[3], clean, 0.05) / 250 - 1) < 0.05
    assert root.attrs["format"] == "cinn4most-survey/1"


def test_noise_does_not_depend_on_chunking(fake_grid, tmp_path):
    a = make_survey(fake_grid, parse_snr("paper"), tmp_path / "a.zarr", seed=9, chunk=7, progress=False)
    b = make_survey(fake_grid, parse_snr("paper"), tmp_path / "b.zarr", seed=9, chunk=32, progress=False)
    za, zb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    np.testing.assert_array_equal(za["flux"][:], zb["flux"][:])
    np.testing.assert_array_equal(za["source_id"][:], zb["source_id"][:])


def test_continuous_snr_range(fake_grid, tmp_path):
    out = make_survey(fake_grid, parse_snr("10-1000"), tmp_path / "c.zarr", seed=1, progress=False)
    snr = zarr.open_group(str(out), mode="r")["snr"][:]
    assert snr.size == 5 and snr.min() >= 10 and snr.max() <= 1000 and len(set(snr)) == 5
