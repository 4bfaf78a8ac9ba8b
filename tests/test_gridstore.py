import numpy as np
import pytest

from spectra.gridstore import GridReader, GridWriter, ProvenanceMismatchError
from spectra.wavegrid import hr_grid

ATTRS = {"seed": 1, "prior": "test", "engine": "fake", "engine_version": "0", "linelist_sha256": "none"}


def test_layout_and_lazy_reading(fake_grid):
    with GridReader(fake_grid) as grid:
        assert grid.n == 6 and grid.wavelength.size == hr_grid().size
        assert grid.flux.dtype == np.float32 and grid.flux.shape == (6, hr_grid().size)
        assert list(grid.done) == [True, True, True, True, False, True]
        assert grid.label_names[:3] == ["teff", "logg", "fe_h"]
        assert np.isnan(grid.flux[4]).all()
        assert grid.attrs["engine"] == "fake" and grid.attrs["format"] == "cinn4most-grid/1"
        assert grid.atmosphere_method[0] == "interpolated"


def test_reopening_resumes_and_refuses_other_settings(fake_grid):
    with GridWriter(fake_grid, 6, hr_grid(), ATTRS) as writer:
        assert list(np.flatnonzero(~writer.done)) == [4]
    with pytest.raises(ProvenanceMismatchError, match=r"exists with seed = 1, but this run has 2"):
        GridWriter(fake_grid, 6, hr_grid(), {**ATTRS, "seed": 2})
    with pytest.raises(ProvenanceMismatchError, match=r"exists with n = 6"):
        GridWriter(fake_grid, 7, hr_grid(), ATTRS)


def test_unwritable_output_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"folder .*missing does not exist"):
        GridWriter(tmp_path / "missing" / "grid.h5", 2, hr_grid(), ATTRS)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if (locked / "probe").parent.stat().st_mode & 0o200 == 0:
            try:
                (locked / "probe").write_text("x")
                pytest.skip("running as a user that ignores permissions")
            except PermissionError:
                pass
        with pytest.raises(PermissionError, match=r"cannot create grid file"):
            GridWriter(locked / "grid.h5", 2, hr_grid(), ATTRS)
    finally:
        locked.chmod(0o700)


def test_not_a_grid(tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("hello")
    with pytest.raises(ValueError, match=r"not a readable HDF5 grid"):
        GridReader(bogus)


def test_damaged_file_is_rebuilt_from_the_journal(tmp_path):
    path = tmp_path / "g.h5"
    grid = hr_grid()
    writer = GridWriter(path, 3, grid, ATTRS)
    rows = {i: np.full(grid.size, 0.5 + 0.1 * i) for i in (0, 2)}
    for i, flux in rows.items():
        writer.write_row(i, flux, np.arange(26.0) + i, "interpolated", 1.0)
    writer._file.close()  # simulate a writer killed before close(): journal stays
    path.write_bytes(path.read_bytes()[:2000])  # ...and a half-written, unreadable HDF5 file
    with GridWriter(path, 3, grid, ATTRS) as again:
        assert list(again.done) == [True, False, True]
        again.write_row(1, np.ones(grid.size), np.zeros(26), "interpolated", 1.0)
    assert not again.journal.exists()  # complete: journal removed
    assert len(list(tmp_path.glob("g.h5.damaged-*"))) == 1
    with GridReader(path) as reader:
        assert reader.done.all()
        np.testing.assert_allclose(reader.flux[2], 0.7, rtol=1e-6)
        assert reader.labels[2, 1] == 3.0


def test_pack_and_unpack_keep_rows_labels_and_flux_to_float16(fake_grid, tmp_path):
    from spectra.gridpack import pack_grid, unpack_grid
    from spectra.gridstore import GridReader

    shards = pack_grid(fake_grid, tmp_path / "packed", "fake", rows_per_shard=2)
    assert [p.name for p in shards] == ["fake-0000.h5", "fake-0001.h5", "fake-0002.h5"]  # 5 finished rows
    back = unpack_grid([tmp_path / "packed"], tmp_path / "back.h5")
    with GridReader(fake_grid) as a, GridReader(back) as b:
        np.testing.assert_array_equal(a.done, b.done)
        rows = np.flatnonzero(a.done)
        np.testing.assert_array_equal(a.labels[rows], b.labels[rows])
        diff = np.abs(np.stack([a.flux[int(i), :] - b.flux[int(i), :] for i in rows]))
        assert diff.max() <= 2.5e-4
        assert b.attrs["seed"] == a.attrs["seed"] and "fake" in b.attrs["unpacked_from"]
    (tmp_path / "packed" / "other-0000.h5").write_bytes(b"not ours")
    with pytest.raises(OSError):
        pack_grid(fake_grid, tmp_path / "packed", "other")
