import errno
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from spectra.stores.gridstore import GridReader, GridWriter, ProvenanceMismatchError
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


def _refuses_writes(folder: Path) -> bool:
    """True if creating a file in ``folder`` fails with EACCES for this process (tried, not inferred from modes)."""
    probe = folder / "cinn4most-probe.h5"
    try:
        probe.open("w").close()
    except PermissionError:
        return True
    except OSError:
        return False
    probe.unlink()
    return False


def _unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot create files in: a chmod 500 folder for a normal user; for root, which ignores
    modes (as in CI), sysfs, which refuses every new file with EACCES. None where neither refuses."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if _refuses_writes(locked):
        return locked
    locked.chmod(0o700)
    sysfs = Path("/sys/kernel")
    return sysfs if sysfs.is_dir() and _refuses_writes(sysfs) else None


def _refusal(target: Path) -> str:
    """The message expected for a grid file that cannot be created: the file, then the system's words."""
    return rf"cannot create grid file {re.escape(str(target))}: .*Permission denied"


def test_unwritable_output_is_a_clear_error(tmp_path, monkeypatch):
    """A missing folder and a folder that refuses writes are one-line errors naming the file and the cause. The
    permission case runs for root too (it used to skip there, i.e. always in CI): sysfs refuses root, and a refusal
    injected at the file creation checks the message wherever no folder refuses."""
    with pytest.raises(FileNotFoundError, match=r"folder .*missing does not exist"):
        GridWriter(tmp_path / "missing" / "grid.h5", 2, hr_grid(), ATTRS)
    folder = _unwritable_folder(tmp_path)
    try:
        if folder is not None:
            target = folder / "grid.h5"
            with pytest.raises(PermissionError, match=_refusal(target)):
                GridWriter(target, 2, hr_grid(), ATTRS)
            assert not target.exists()
    finally:
        (tmp_path / "locked").chmod(0o700)

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(h5py, "File", refused)
    target = tmp_path / "grid.h5"
    with pytest.raises(PermissionError, match=_refusal(target)):
        GridWriter(target, 2, hr_grid(), ATTRS)
    assert not target.exists()


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
    from spectra.stores.gridpack import pack_grid, unpack_grid
    from spectra.stores.gridstore import GridReader

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


def test_margin_grid_packs_and_unpacks_on_its_own_pixels(tmp_path):
    """A grid stored with a margin beyond the windows round-trips through pack/unpack with its wavelength grid, and
    shards of grids on different pixel grids are not mixed."""
    from spectra.prior import draw_labels
    from spectra.stores.gridpack import pack_grid, unpack_grid
    from spectra.stores.gridstore import GridReader, GridWriter
    from spectra.wavegrid import GRID_MARGIN, hr_grid

    from conftest import line_spectrum

    def make(path, grid):
        attrs = {"seed": 1, "prior": "test", "engine": "fake", "engine_version": "0", "linelist_sha256": "none",
                 "hr_grid": grid.name}
        with GridWriter(path, 3, grid, attrs) as writer:
            for i, row in enumerate(draw_labels(3, seed=1)):
                writer.write_row(i, line_spectrum(grid.wave, seed=i), row, "interpolated", 0.0)
        return path

    wide = hr_grid(GRID_MARGIN)
    source = make(tmp_path / "wide.h5", wide)
    back = unpack_grid(pack_grid(source, tmp_path / "packed", "wide"), tmp_path / "back.h5")
    with GridReader(source) as a, GridReader(back) as b:
        assert b.wavelength.size == wide.size and np.array_equal(a.wavelength, b.wavelength)
        assert np.abs(a.flux[:] - b.flux[:]).max() <= 2.5e-4
    narrow = pack_grid(make(tmp_path / "narrow.h5", hr_grid()), tmp_path / "packed2", "narrow")
    with pytest.raises(ValueError, match="hr_grid"):
        unpack_grid([tmp_path / "packed" / "wide-0000.h5", *narrow], tmp_path / "mixed.h5")


def test_committed_data_and_models_stay_within_the_repository_budget():
    """Issue 20: at most 150 MB of committed data and models (the kept PySME grids, the default bundle, its example
    surveys and the packaged line lists), so that a new grid has to make room rather than grow the clone unseen."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    folders = ["training/grids", "runtime/default_bundle", "runtime/examples", "spectra/data"]
    assert all((root / d).is_dir() for d in folders), "a budgeted folder was renamed: update this test"
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", *folders], capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the budget is on what is committed")
    files = [root / name for name in listed.stdout.decode().split("\0") if name]
    assert len(files) > 10, "git lists almost nothing in the budgeted folders"
    total = sum(f.stat().st_size for f in files if f.is_file())  # tracked files as they are in the work tree
    assert total <= 150e6, f"{total / 1e6:.1f} MB of data and models in {', '.join(folders)}"
