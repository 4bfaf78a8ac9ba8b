"""Observed-spectrum ingestion: readers, preparation steps, bad input, the whole `spectra ingest`."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits

from spectra.forward.continuum import pseudo_continuum
from spectra.forward.degrade import C_KMS, gaussian_broaden
from spectra.observed.examples import fourmost_l1_from_grid, smooth_continuum
from spectra.observed.ingest import IngestFlag, IngestOptions, ingest, prepare
from spectra.observed.prepare import TRAINING_RESOLUTION, match_resolution, rebin_pixels
from spectra.observed.readers import SpectrumReadError, detect_format, read_spectra
from spectra.observed.rv import doppler_to_rest, measure_rv
from spectra.stores.gridstore import GridReader
from spectra.wavegrid import HR_RESOLUTION, WORKING_RESOLUTION, air_to_vacuum, hr_grid, vacuum_to_air

from conftest import shared_file


def reference_spectrum(name: str = "pysme_t5000_g+2.50_m+0.00") -> tuple[np.ndarray, np.ndarray]:
    """A PySME reference synthesis from the shared data (vacuum → air), unbroadened, 0.01 Å steps."""
    path = shared_file("reference", f"{name}.txt.gz")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh)
    return vacuum_to_air(table[:, 0]), table[:, 1]


def _window_sample(wave, flux, step=0.05):
    out_w = np.concatenate([np.arange(5165.0, 5725.0, step), np.arange(6105.0, 6785.0, step)])
    return out_w, np.interp(out_w, wave, flux)


# ------------------------------------------------------------------------------------------ readers
def test_fourmost_l1_reader_many_spectra(fake_grid, tmp_path):
    path = fourmost_l1_from_grid(fake_grid, [0, 1, 2], tmp_path / "l1.fits", snr=80, seed=3)
    assert detect_format(path) == "4most-l1"
    spectra = read_spectra(path)
    assert [s.object for s in spectra] == ["grid0", "grid1", "grid2"]
    assert all(s.error is not None and s.resolution == pytest.approx(TRAINING_RESOLUTION) for s in spectra)
    assert spectra[1].source.endswith("[1]") and spectra[0].medium == "air" and spectra[0].medium_from_header
    assert spectra[0].wave.size == hr_grid().size


def test_eso_phase3_reader_units_from_tunit(tmp_path):
    wave_nm = np.linspace(500.0, 690.0, 5000)
    flux = np.linspace(1.0, 2.0, wave_nm.size)
    cols = [fits.Column(name="WAVE", format=f"{wave_nm.size}D", unit="nm", array=wave_nm[None]),
            fits.Column(name="FLUX", format=f"{wave_nm.size}D", array=flux[None]),
            fits.Column(name="ERR", format=f"{wave_nm.size}D", array=0.01 * flux[None])]
    primary = fits.PrimaryHDU()
    primary.header.update(INSTRUME="UVES", OBJECT="HD 1", PRODCATG="SCIENCE.SPECTRUM", SPEC_RES=47000.0)
    path = tmp_path / "adp.fits"
    fits.HDUList([primary, fits.BinTableHDU.from_columns(cols)]).writeto(path)
    assert detect_format(path) == "eso-phase3"
    (s,) = read_spectra(path)
    assert s.wave[0] == pytest.approx(5000.0) and s.wave[-1] == pytest.approx(6900.0)
    assert (s.object, s.instrument, s.resolution, s.unit_inferred) == ("HD 1", "UVES", 47000.0, False)


@pytest.mark.parametrize("log_sampled", [False, True])
def test_fits_1d_reader_linear_and_log_wcs(tmp_path, log_sampled):
    n = 4000
    header = fits.Header()
    if log_sampled:
        header.update(CRVAL1=np.log(5000.0), CDELT1=1e-5, CRPIX1=1.0, CTYPE1="AWAV-LOG", CUNIT1="Angstrom")
        expected = 5000.0 * np.exp(1e-5 * np.arange(n))
    else:
        header.update(CRVAL1=5000.0, CDELT1=0.05, CRPIX1=1.0, CTYPE1="AWAV", CUNIT1="Angstrom")
        expected = 5000.0 + 0.05 * np.arange(n)
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(np.ones(n, dtype=np.float32), header=header).writeto(path)
    assert detect_format(path) == "fits-1d"
    (s,) = read_spectra(path)
    np.testing.assert_allclose(s.wave, expected, rtol=1e-10)
    assert s.medium == "air" and s.medium_from_header


def test_vacuum_header_is_converted_to_air_at_ingestion(tmp_path):
    """The same spectrum stored in vacuum (CTYPE1 WAVE) and in air (AWAV) ingests to the same pixels."""
    wave_air, flux = _window_sample(*reference_spectrum())
    files = []
    for name, wave, ctype in (("air", wave_air, "AWAV"), ("vac", air_to_vacuum(wave_air), "WAVE")):
        table = np.column_stack([wave, flux])
        path = tmp_path / f"{name}.fits"
        cols = [fits.Column(name="WAVE", format=f"{len(wave)}D", unit="Angstrom", array=table[:, 0][None]),
                fits.Column(name="FLUX", format=f"{len(wave)}D", array=table[:, 1][None])]
        hdu = fits.BinTableHDU.from_columns(cols)
        hdu.header["CTYPE1"] = ctype
        hdu.header["SPEC_RES"] = 20000.0
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        files.append(path)
    out = ingest(files, tmp_path / "s.zarr", IngestOptions(rv=0.0, snr=100.0), progress=False)
    assert out.n_failed == 0
    f = zarr.open_group(str(tmp_path / "s.zarr"))["flux"][:]
    assert np.sqrt(np.mean((f[0] - f[1]) ** 2)) < 1e-3


def test_ascii_reader_two_and_three_columns(tmp_path):
    wave = np.linspace(5100.0, 5800.0, 2000)
    np.savetxt(tmp_path / "two.txt", np.column_stack([wave, np.ones_like(wave)]), header="wave flux")
    np.savetxt(tmp_path / "three.dat", np.column_stack([wave / 10, np.ones_like(wave), 0.01 * np.ones_like(wave)]))
    (two,) = read_spectra(tmp_path / "two.txt")
    (three,) = read_spectra(tmp_path / "three.dat")
    assert detect_format(tmp_path / "two.txt") == "ascii" and two.error is None and two.unit_inferred
    np.testing.assert_allclose(three.wave, wave)  # nm inferred from the range
    assert three.error is not None


def test_shared_real_spectra_are_read():
    uves = read_spectra(shared_file("spectra", "UVES_Sun-1_cleaned_norm.txt"))[0]
    harps = read_spectra(shared_file("spectra", "fasma_Sun_HARPS.fits"))[0]
    vir = read_spectra(shared_file("spectra", "fasma_38Vir_HARPS_2017.fits"))[0]
    assert np.all(np.diff(uves.wave) > 0)  # repeated join pixels were merged
    assert harps.instrument == "HARPS" and harps.resolution == 115_000 and harps.object == "Ganymede"
    assert not vir.unit_inferred and 3780 < vir.wave[0] < 3790  # CTYPE1 'LINEAR', unit from IRAF WAT1_001


# ------------------------------------------------------------------------------------------ bad input
def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp_path / "empty.fits"
    files["empty"].write_bytes(b"")
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(np.ones(3000, dtype=np.float32),
                    header=fits.Header({"CRVAL1": 5100.0, "CDELT1": 0.25, "CUNIT1": "Angstrom"})).writeto(good)
    files["truncated"] = tmp_path / "truncated.fits"
    files["truncated"].write_bytes(good.read_bytes()[:4000])
    cols = [fits.Column(name="WAVE", format="100D", array=np.linspace(5000, 6000, 100)[None]),
            fits.Column(name="SPEC", format="100D", array=np.ones((1, 100)))]
    files["missing_column"] = tmp_path / "nocol.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(files["missing_column"])
    files["unknown_unit"] = tmp_path / "unit.txt"
    np.savetxt(files["unknown_unit"], np.column_stack([np.linspace(100, 200, 50), np.ones(50)]))
    files["nan_flux"] = tmp_path / "nan.txt"
    np.savetxt(files["nan_flux"], np.column_stack([np.linspace(5100, 5800, 50), np.full(50, np.nan)]))
    files["negative_flux"] = tmp_path / "neg.txt"
    np.savetxt(files["negative_flux"], np.column_stack([np.linspace(5100, 5800, 50), -np.ones(50)]))
    files["non_monotonic"] = tmp_path / "order.txt"
    w = np.linspace(5100, 5800, 50)
    w[20], w[21] = w[21], w[20]
    np.savetxt(files["non_monotonic"], np.column_stack([w, np.ones(50)]))
    return files


@pytest.mark.parametrize("case,message", [
    ("empty", "empty"), ("truncated", "FITS"), ("missing_column", "columns WAVE, SPEC"),
    ("unknown_unit", "wavelength unit"), ("nan_flux", "NaN"), ("negative_flux", "negative"),
    ("non_monotonic", "not monotonic"),
])
def test_bad_files_raise_clear_errors(tmp_path, case, message):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(SpectrumReadError) as info:
        read_spectra(path)
    assert str(path) in str(info.value) and message.lower() in str(info.value).lower()


def test_one_bad_file_never_stops_a_batch(fake_grid, tmp_path):
    good = fourmost_l1_from_grid(fake_grid, [0, 1], tmp_path / "l1.fits", snr=100)
    bad = _bad_files(tmp_path)
    files = [bad["empty"], good, bad["non_monotonic"], bad["nan_flux"]]
    report = ingest(files, tmp_path / "s.zarr", IngestOptions(rv=0.0), progress=False)
    root = zarr.open_group(str(tmp_path / "s.zarr"))
    flags = root["ingest_flags"][:]
    assert report.n_spectra == 5 and report.n_failed == 3
    assert [bool(f & IngestFlag.READ_FAILED) for f in flags] == [True, False, False, True, True]
    assert np.isnan(root["flux"][0]).all() and np.isfinite(root["flux"][1]).all()
    assert "empty" in str(root["message"][0]) and "monotonic" in str(root["message"][3])
    assert list(root["source_id"][:]) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------ preparation
def test_rv_recovered_within_0p2_kms_at_snr_100():
    wave, flux = reference_spectrum()
    broadened = gaussian_broaden(wave, flux, HR_RESOLUTION, wave)
    rng = np.random.default_rng(5)
    for v in (-73.4, 12.3, 151.9):
        obs_wave, _ = _window_sample(wave, flux)
        shifted = np.interp(obs_wave / (1 + v / C_KMS), wave, broadened)  # a star receding at v
        noisy = shifted + shifted / (100 * np.sqrt(0.05)) * rng.standard_normal(shifted.size)
        result = measure_rv(obs_wave, noisy)
        assert abs(result.rv - v) < 0.2, (v, result)
        assert 0 < result.error < 0.2
    assert np.allclose(doppler_to_rest(np.array([5000.0 * (1 + 30 / C_KMS)]), 30.0), 5000.0)


def test_resolution_matching_equals_the_training_chain():
    """A spectrum made at R 40 000 and matched equals one made the way the grid is (R 80 000 then the
    R 20 000 line-spread function) within 0.2 % rms."""
    wave, flux = reference_spectrum("pysme_t5777_g+4.44_m+0.00")
    inner = (wave > 5200) & (wave < 5700)
    training = gaussian_broaden(wave, gaussian_broaden(wave, flux, WORKING_RESOLUTION, wave), HR_RESOLUTION, wave)
    at_40k = gaussian_broaden(wave, flux, 40_000, wave)
    matched = match_resolution(wave, at_40k, 40_000)
    rms = np.sqrt(np.mean((matched[inner] - training[inner]) ** 2))
    assert rms < 0.002, rms
    unmatched = np.sqrt(np.mean((at_40k[inner] - training[inner]) ** 2))
    assert unmatched > 5 * rms  # the test can fail: without matching the difference is large


def test_rebin_pixels_keeps_identical_grid_and_conserves_flux():
    grid = hr_grid()
    rng = np.random.default_rng(0)
    w = grid.wave[grid.segments[0]]
    f = 1 + 0.01 * rng.standard_normal(w.size)
    same = rebin_pixels(w, f, w[5:-5], 0.05)
    np.testing.assert_allclose(same, f[5:-5], atol=1e-12)
    fine = np.arange(5160.0, 5730.0, 0.01) + 0.005
    ff = np.sin(fine) + 2
    coarse = rebin_pixels(fine, ff, w[5:-5], 0.05)
    np.testing.assert_allclose(coarse.mean(), ff[(fine > w[5] - 0.025) & (fine < w[-6] + 0.025)].mean(), rtol=1e-6)


def test_pseudo_continuum_follows_a_smooth_continuum():
    """Dividing a raw spectrum by its pseudo-continuum removes a smooth continuum shape: the result
    equals the pseudo-continuum normalisation of the already normalised spectrum."""
    wave, flux = reference_spectrum("pysme_t5777_g+4.44_m+0.00")
    grid = hr_grid()
    clean = np.interp(grid.wave, wave, gaussian_broaden(wave, flux, TRAINING_RESOLUTION, wave))
    shape = smooth_continuum(grid.wave)
    rng = np.random.default_rng(1)
    noise = 1 + rng.standard_normal(grid.size) / (100 * np.sqrt(0.05))
    raw = clean * shape * noise
    normalised = raw / pseudo_continuum(grid.wave, raw)
    reference = clean * noise / pseudo_continuum(grid.wave, clean * noise)
    assert np.sqrt(np.mean((normalised - reference) ** 2)) < 0.005
    np.testing.assert_allclose(pseudo_continuum(grid.wave, shape), shape, rtol=2e-3)  # no lines: exact shape
    # the Sun's pseudo-continuum sits at most a few per cent under the true one (line blanketing)
    assert 0.97 < np.median(pseudo_continuum(grid.wave, clean * noise)) < 1.005


def test_ingest_example_l1_recovers_rv_snr_and_flux(fake_grid, tmp_path):
    rv = [25.0, -40.0]
    path = fourmost_l1_from_grid(fake_grid, [0, 2], tmp_path / "l1.fits", snr=150, seed=1, rv_kms=rv)
    from spectra.observed.rv import RVTemplates

    # fake grid spectra are random lines: use the noiseless spectra themselves as templates
    with GridReader(fake_grid) as g:
        wave, clean = g.wavelength, g.flux[[0, 2], :]
    templates = RVTemplates(wave, clean, ("row0", "row2"), np.zeros((2, 4)))
    (obs0, obs2) = read_spectra(path)
    for obs, v, row in ((obs0, rv[0], 0), (obs2, rv[1], 1)):
        p = prepare(obs, IngestOptions(), templates=templates)
        assert abs(p.rv - v) < 0.2 and p.rv_template == f"row{2 * row}"
        assert p.snr == pytest.approx(150, rel=0.05) and p.snr_source == "error column"
        inner = slice(200, 11_000)  # away from window edges the shift left uncovered
        resid = p.flux[inner] - clean[row][inner]
        assert abs(np.median(resid)) < 0.02 and np.std(resid) < 2 / (150 * np.sqrt(0.05))
        assert p.coverage > 0.99


def test_zero_filled_detector_gap_is_missing_data_not_flux(tmp_path):
    """A merged echelle spectrum with its CCD gap filled with zeros (as HARPS 1D products are): the gap
    becomes missing pixels (set to the continuum, flagged), not absorption."""
    from spectra.observed.ingest import mask_no_data

    wave, flux = _window_sample(*reference_spectrum())
    flux = gaussian_broaden(wave, flux, 30_000, wave)
    gap = (wave > 5303) & (wave < 5338)
    flux[gap] = 0.0
    masked = mask_no_data(flux)
    assert np.isnan(masked[gap]).all() and np.isfinite(masked[~gap]).all()
    np.savetxt(tmp_path / "gap.txt", np.column_stack([wave, flux]))
    ingest([tmp_path / "gap.txt"], tmp_path / "s.zarr", IngestOptions(rv=0.0, resolution=30_000, snr=200),
           progress=False)
    root = zarr.open_group(str(tmp_path / "s.zarr"))
    row, grid_wave = root["flux"][0], root["wavelength"][:]
    inside = (grid_wave > 5304) & (grid_wave < 5337)
    assert np.all(row[inside] == 1.0) and root["ingest_flags"][0] & IngestFlag.PARTIAL_COVERAGE
    assert 0.9 < root["coverage"][0] < 0.99
    # the fill is the marker the runtime reads back as no data: the gap, and nothing but gaps
    from spectra.contracts.masks import NO_DATA_FILL, no_data_pixels

    found = no_data_pixels(np.asarray(row)[None])[0]
    assert NO_DATA_FILL == 1.0 and found[inside].all()
    # and nothing else: exactly the pixels the covered fraction leaves out (the gap, the windows beyond the spectrum)
    assert abs(found.mean() - (1.0 - root["coverage"][0])) < 1e-6


def test_real_spectra_ingest_at_rest_with_their_gaps(tmp_path):
    """The shared UVES and HARPS solar spectra: RV within 0.5 km/s of zero (they are at rest; the Sun's
    lines sit ~+0.3 km/s from laboratory wavelengths), HARPS's zero-filled CCD gap and UVES's short red
    end become flagged missing pixels, and the S/N is estimated (no error column)."""
    uves = shared_file("spectra", "UVES_Sun-1_cleaned_norm.txt")
    harps = shared_file("spectra", "fasma_Sun_HARPS.fits")
    report = ingest([uves, harps], tmp_path / "sun.zarr", IngestOptions(medium="air"),
                    per_file={str(uves): IngestOptions(medium="air", resolution=47_000)}, progress=False)
    root = zarr.open_group(str(tmp_path / "sun.zarr"))
    assert report.n_failed == 0
    assert np.all(np.abs(root["rv"][:]) < 0.5) and np.all(root["rv_error"][:] < 0.1)
    assert 0.93 < root["coverage"][0] < 0.96 and 0.96 < root["coverage"][1] < 0.99
    assert all(f & IngestFlag.PARTIAL_COVERAGE and f & IngestFlag.SNR_ESTIMATED for f in root["ingest_flags"][:])
    flux = root["flux"][:]
    assert np.isfinite(flux).all() and 0.95 < np.median(flux) < 1.01


def test_interrupted_ingest_resumes_to_the_same_survey(fake_grid, tmp_path, monkeypatch):
    """An ingest stopped after some files (and with a half-written flush on disk) resumes with --resume to
    exactly the survey of an uninterrupted run; another file list is refused."""
    import spectra.observed.ingest as ingest_module

    files = [fourmost_l1_from_grid(fake_grid, [i], tmp_path / f"f{i}.fits", snr=100, seed=i) for i in (0, 1, 2, 3, 5)]
    options = IngestOptions(rv=0.0)
    ingest(files, tmp_path / "full.zarr", options, chunk=2, progress=False)

    real_read = ingest_module.read_spectra
    calls = {"n": 0}

    def failing_read(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the run is stopped while reading the 4th file
        return real_read(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "read_spectra", failing_read)
    with pytest.raises(KeyboardInterrupt):
        ingest(files, tmp_path / "part.zarr", options, chunk=2, progress=False)
    monkeypatch.setattr(ingest_module, "read_spectra", real_read)
    part = zarr.open_group(str(tmp_path / "part.zarr"), mode="r+")
    assert part.attrs["committed"] == 2
    part["flux"].append(np.zeros((1, part["flux"].shape[1]), dtype="f4"))  # a flush cut short by the kill
    report = ingest(files, tmp_path / "part.zarr", options, chunk=2, progress=False, resume=True)
    full, resumed = zarr.open_group(str(tmp_path / "full.zarr")), zarr.open_group(str(tmp_path / "part.zarr"))
    assert report.n_spectra == 5
    for name in ("flux", "snr", "source_id", "input_index", "rv", "ingest_flags"):
        np.testing.assert_array_equal(full[name][:], resumed[name][:], err_msg=name)
    with pytest.raises(ValueError, match="another list"):
        ingest(files[:3], tmp_path / "part.zarr", options, chunk=2, progress=False, resume=True)
