"""Issue 21, defects 4 and 8: files the toolkit did not make are never touched, and failing disks, read-only
folders and odd text give one line and exit 2, never a traceback. Each test fails on the code before."""

from __future__ import annotations

import codecs
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("onnxruntime")

from catalog import cli as catalog_cli
from catalog.writers import CatalogueStore, export_fits
from runtime import cli as runtime_cli
from spectra import cli as spectra_cli
from spectra.common.cliargs import describe_error
from spectra.common.scratch import SCRATCH_SUFFIX, written_atomically
from spectra.stores.survey import make_survey, parse_snr


@pytest.fixture(scope="module")
def made(tiny_bundle, tmp_path_factory):
    """(bundle, survey, finished catalogue) shared read-only by the tests."""
    _, grid, _, bundle = tiny_bundle
    tmp = tmp_path_factory.mktemp("h8")
    survey = make_survey(grid, parse_snr("100"), tmp / "survey.zarr", seed=1, chunk=20, progress=False)
    assert _process(survey, bundle, tmp / "cat.zarr") == 0
    return bundle, survey, tmp / "cat.zarr"


def _process(survey: Path, bundle: Path, out: Path, *extra: str) -> int:
    return runtime_cli.main(["process", "--survey", str(survey), "--bundle", str(bundle), "--out", str(out),
                             "--samples", "64", "--device", "cpu", "--chunk", "20", "--quiet", *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write: chmod 555 for a normal user; for root (which ignores modes) sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        open("/sys/cinn4most-probe", "w").close()
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable folder available to root here")


# ----------------------------------------------------------------------------- 4: files we did not make
@pytest.mark.parametrize("fmt,name,theirs", [
    ("parquet-dataset", "ds", "ds.partial"),
    ("parquet", "c.parquet", "c.parquet.partial"),
    ("fits", "c.fits", "c.fits.partial"),
])
def test_exports_never_touch_a_users_partial_files(made, tmp_path, fmt, name, theirs):
    _, _, catalogue = made
    user = tmp_path / theirs
    if fmt == "parquet-dataset":
        user.mkdir()
        (user / "thesis.tex").write_text("years of work")
    else:
        user.write_text("years of work")
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--format", fmt, "--out",
                             str(tmp_path / name)]) == 0
    kept = user / "thesis.tex" if fmt == "parquet-dataset" else user
    assert kept.read_text() == "years of work"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(SCRATCH_SUFFIX)]


def test_an_overwrite_that_fails_keeps_the_previous_export(made, tmp_path, monkeypatch, capsys):
    _, _, catalogue = made
    out = tmp_path / "c.fits"
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--format", "fits", "--out", str(out)]) == 0
    before = out.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr("astropy.io.fits.append", full_disk)
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--format", "fits", "--out", str(out),
                             "--overwrite"]) == 2
    assert "No space left on device (the disk is full" in _one_line(capsys)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(SCRATCH_SUFFIX)]


def test_written_atomically_removes_only_its_own_scratch(tmp_path):
    out = tmp_path / "x.dat"
    with pytest.raises(RuntimeError), written_atomically(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with written_atomically(out) as tmp:
        tmp.write_text("whole")
    assert out.read_text() == "whole" and list(tmp_path.iterdir()) == [out]


# ----------------------------------------------------------------------------- 8: errors, not tracebacks
def test_full_disk_during_process_is_one_line_and_resumable(made, tmp_path, monkeypatch, capsys):
    bundle, survey, finished = made
    out = tmp_path / "cat.zarr"
    real_write = CatalogueStore.write_chunk
    calls = []

    def fills_up(self, k, values):
        calls.append(k)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "teff" / "c" / str(k)))
        return real_write(self, k, values)

    monkeypatch.setattr(CatalogueStore, "write_chunk", fills_up)
    assert _process(survey, bundle, out) == 2
    err = _one_line(capsys)
    assert f"{out}" in err and "No space left on device" in err and "--resume" in err
    monkeypatch.setattr(CatalogueStore, "write_chunk", real_write)
    assert _process(survey, bundle, out, "--resume") == 0
    done, reference = CatalogueStore.open(out), CatalogueStore.open(finished)
    np.testing.assert_array_equal(done.column("teff"), reference.column("teff"))


def test_unwritable_output_folders_give_one_line(made, tmp_path, capsys):
    bundle, survey, catalogue = made
    folder = _unwritable_folder(tmp_path)
    assert _process(survey, bundle, folder / "cat.zarr") == 2
    assert str(folder) in _one_line(capsys)
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--format", "parquet", "--out",
                             str(folder / "c.parquet")]) == 2
    assert str(folder) in _one_line(capsys)
    assert runtime_cli.main(["example-survey", "--out", str(folder / "examples")]) == 2
    assert str(folder) in _one_line(capsys)


def test_read_only_file_system_during_ingest_is_one_line(made, tmp_path, monkeypatch, capsys):
    from spectra.observed.examples import fourmost_l1_from_grid

    _, survey, _ = made
    grid = Path(zarr.open_group(str(survey), mode="r").attrs.get("grid", ""))
    if not grid.exists():
        pytest.skip("survey does not record its grid")
    l1 = fourmost_l1_from_grid(grid, [0, 1], tmp_path / "l1.fits", snr=100)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "obs.zarr"))

    monkeypatch.setattr(zarr, "create_array", read_only)
    monkeypatch.setattr(zarr, "open_group", read_only)
    assert spectra_cli.main(["ingest", str(l1), "--out", str(tmp_path / "obs.zarr"), "--rv", "0", "--quiet"]) == 2
    assert "Read-only file system (the file system is read-only" in _one_line(capsys)


def test_example_survey_overwrite_onto_a_symlink_is_refused(tmp_path, capsys):
    assert runtime_cli.main(["example-survey", "--out", str(tmp_path / "a")]) == 0
    target = tmp_path / "b"
    target.mkdir()
    (target / "synthetic.zarr").symlink_to(tmp_path / "a" / "synthetic.zarr")
    assert runtime_cli.main(["example-survey", "--out", str(target), "--overwrite"]) == 2
    assert "symlink" in _one_line(capsys)
    assert (tmp_path / "a" / "synthetic.zarr" / "zarr.json").is_file()  # what the link pointed at is intact


def test_os_errors_are_described_with_path_and_remedy():
    text = describe_error(OSError(errno.ENOSPC, "No space left on device", "/data/cat.zarr/teff/c/3"))
    assert text.startswith("/data/cat.zarr/teff/c/3: No space left on device") and "--resume" in text
    assert "read-only" in describe_error(OSError(errno.EROFS, "x", "/mnt/ro"))
    assert describe_error(KeyError("no column 'teff'")) == "no column 'teff'"


# ----------------------------------------------------------------------------- 8: text stays UTF-8
def _fits_with_utf8_object(path: Path, name: str) -> Path:
    from astropy.io import fits

    from spectra.wavegrid import hr_grid

    wave = np.asarray(hr_grid().wave)
    hdu = fits.PrimaryHDU((1.0 + 0.01 * np.sin(wave)).astype(np.float32))
    hdu.header.update(CRVAL1=wave[0], CDELT1=float(wave[1] - wave[0]), CRPIX1=1, CTYPE1="AWAV",
                      CUNIT1="Angstrom", INSTRUME="UVES", OBJECT="X" * len(name.encode()))
    hdu.writeto(path)
    raw = path.read_bytes().replace(b"'" + b"X" * len(name.encode()), b"'" + name.encode())
    path.write_bytes(raw)  # as some archives write them: UTF-8 bytes in a FITS header
    return path


def test_non_ascii_object_names_survive_reading_and_export_safely(tmp_path):
    from astropy.io import fits

    from spectra.observed.readers import read_spectra

    name = "Gliese 1é ☉"
    with pytest.warns(Warning):  # astropy says it replaced non-ASCII bytes; the reader restores them
        spectrum = read_spectra(_fits_with_utf8_object(tmp_path / "s.fits", name))[0]
    assert spectrum.object == name
    store = CatalogueStore.create(tmp_path / "c.zarr", 2, 2, [_text_column("object")], {"format_note": "test"})
    store.write_chunk(0, {"object": np.array([name, "plain"], dtype=object)})
    out = export_fits(tmp_path / "c.zarr", tmp_path / "c.fits")
    raw = out.read_bytes()
    assert "é".encode() not in raw and "☉".encode() not in raw  # FITS text is ASCII: no raw UTF-8 bytes
    with fits.open(out) as hdul:
        text = hdul["CATALOGUE"].data["object"][0]
        comments = " ".join(str(c) for c in hdul["CATALOGUE"].header["COMMENT"])
    assert codecs.decode(text, "unicode_escape") == name and "Python escapes" in comments


def _text_column(name: str):
    from catalog.schema import Column

    return Column(name, "str", "", "object name", "")
