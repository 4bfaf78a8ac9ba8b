"""Issue 22, rough edge 7: the columns and plots astronomers expect (e_<p>, message, RA/Dec/MJD, widths in
`catalog show`, residuals per S/N with units, error bars and flagged rows, a per-star corner plot)."""

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from catalog.writers import CatalogueStore
from runtime.cli import main as runtime_main
from runtime.packaged import unpack_examples

from conftest import line_spectrum


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("columns")
    return {p.name.removesuffix(".zarr"): p for p in unpack_examples(folder)} | {"folder": folder}


@pytest.fixture(scope="module")
def observed_catalogue(examples) -> Path:
    out = examples["folder"] / "observed_catalog.zarr"
    assert runtime_main(["process", "--survey", str(examples["observed"]), "--out", str(out), "--samples", "128",
                         "--quiet"]) == 0
    return out


def test_symmetric_errors_and_ingest_message_in_the_catalogue(examples, observed_catalogue):
    import zarr

    store = CatalogueStore.open(observed_catalogue)
    for p in ("teff", "logg", "fe_h", "li_fe"):
        e = store.column("e_" + p)
        p84 = store.column(p + "_p84").astype(float)
        half = 0.5 * (p84 - store.column(p + "_p16"))
        # e_ is taken from the unrounded quantiles, which are stored as float32: a few units of their last place
        rounding = 2 * np.finfo(np.float32).eps * np.abs(p84)
        assert np.all(np.abs(e - half) <= 1e-5 * np.abs(half) + rounding + 1e-6), (p, e, half)
        assert np.all(e > 0)
        info = store.column_info("e_" + p)
        assert "half the 16-84 % width" in info["description"] and info["unit"] == store.column_info(p)["unit"]
    survey = zarr.open_group(str(examples["observed"]), mode="r")
    assert list(store.column("message")) == list(survey["message"][:])
    assert "DER_SNR" in str(store.column("message")[0])


def _fits_spectrum(path: Path, header: dict) -> Path:
    """A 1-D FITS image (linear WCS, R 40 000) of absorption lines covering the HR windows."""
    from astropy.io import fits

    wave = np.arange(5100.0, 6850.0, 0.02)
    hdu = fits.PrimaryHDU((1000.0 * line_spectrum(wave, seed=3, n_lines=3000)).astype(np.float32))
    hdu.header.update({"CRVAL1": wave[0], "CDELT1": 0.02, "CRPIX1": 1.0, "CUNIT1": "Angstrom", "CTYPE1": "AWAV",
                       "SPEC_RES": 40000.0, "OBJECT": path.stem, **header})
    hdu.writeto(path)
    return path


def test_ra_dec_mjd_travel_from_the_header_to_the_catalogue(tmp_path):
    import zarr

    from runtime import read_spectrum
    from spectra.observed.ingest import IngestOptions, ingest
    from spectra.observed.readers import sky_and_time

    with_sky = _fits_spectrum(tmp_path / "a.fits", {"RA": "12:30:00.0", "DEC": "-05:30:00", "DATE-OBS":
                                                    "2020-01-01T12:00:00"})
    without = _fits_spectrum(tmp_path / "b.fits", {})
    harps_like = _fits_spectrum(tmp_path / "c.fits", {"RA": 258.725708, "DEC": -22.29055, "MJD-OBS": 54203.403})
    spectrum = read_spectrum(with_sky)
    assert (spectrum.ra, spectrum.dec) == (187.5, -5.5) and spectrum.mjd == pytest.approx(58849.5)
    assert np.isnan([read_spectrum(without).ra, read_spectrum(without).mjd]).all()
    odd = sky_and_time({"RA": 400.0, "DEC": "junk", "MJD-OBS": "soon"})
    assert np.isnan([odd["ra"], odd["dec"], odd["mjd"]]).all()  # not positions or dates: unknown, not an error

    survey = tmp_path / "s.zarr"
    ingest([with_sky, without, harps_like], survey, IngestOptions(rv=0.0), progress=False)
    root = zarr.open_group(str(survey), mode="r")
    np.testing.assert_allclose(root["ra"][:], [187.5, np.nan, 258.725708])
    np.testing.assert_allclose(root["dec"][:], [-5.5, np.nan, -22.29055])
    np.testing.assert_allclose(root["mjd"][:], [58849.5, np.nan, 54203.403])
    catalogue = tmp_path / "c.zarr"
    assert runtime_main(["process", "--survey", str(survey), "--out", str(catalogue), "--samples", "64",
                         "--quiet"]) == 0
    store = CatalogueStore.open(catalogue)
    for name in ("ra", "dec", "mjd"):
        np.testing.assert_array_equal(store.column(name), root[name][:])  # float64: MJD to the second
        assert store.column_info(name)["dtype"] == "float64"
    assert store.column_info("ra")["unit"] == "deg" and store.column_info("mjd")["unit"] == "d"
    from astropy.table import Table

    from catalog.writers import export_fits, export_parquet

    for out in (export_fits(catalogue, tmp_path / "cat.fits"), export_parquet(catalogue, tmp_path / "cat.parquet")):
        table = Table.read(out, hdu="CATALOGUE") if out.suffix == ".fits" else Table.read(out)
        np.testing.assert_array_equal(np.asarray(table["mjd"], dtype=float), root["mjd"][:], err_msg=str(out))
        assert table["mjd"].dtype.kind == "f" and table["mjd"].dtype.itemsize == 8


def test_catalog_show_prints_the_68_percent_half_width(observed_catalogue):
    from catalog.show import show_rows

    text = show_rows(observed_catalogue, ["teff", "logg"], rows=3)
    assert "teff [p16, p84] ±e" in text
    store = CatalogueStore.open(observed_catalogue)
    e = float(store.column("e_teff")[0])
    row = text.splitlines()[2]
    shown = re.search(r"±([0-9.]+)", row).group(1)  # as many decimals as the interval's width needs
    decimals = len(shown.partition(".")[2])
    assert abs(float(shown) - e) <= 10.0**-decimals, row  # within one unit of the last digit shown


def test_residuals_plot_per_snr_with_units_error_bars_and_flags():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import ErrorbarContainer

    from catalog.plots import residuals_figure, snr_groups

    rng = np.random.default_rng(0)
    n = 30
    truth = {"teff": rng.uniform(4500, 6500, n), "fe_h": rng.uniform(-2, 0.3, n)}
    est = {p: v + rng.normal(0, 0.05 * np.ptp(v), n) for p, v in truth.items()}
    low = {p: v - 10 for p, v in est.items()}
    high = {p: v + 10 for p, v in est.items()}
    snr = np.repeat([20.0, 50.0, 250.0], 10)
    flagged = np.zeros(n, dtype=bool)
    flagged[[1, 15]] = True
    fig = residuals_figure(["teff", "fe_h"], truth, est, low, high, {"teff": "T_eff", "fe_h": "[Fe/H]"},
                           {"teff": "K", "fe_h": "dex"}, snr, flagged)
    ax_teff, ax_feh = fig.axes[:2]
    assert ax_teff.get_ylabel() == "MAP − truth (T_eff) [K]" and ax_feh.get_ylabel().endswith("[dex]")
    assert sum(isinstance(c, ErrorbarContainer) for c in ax_teff.containers) == 3  # one per S/N
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(texts) == sorted(["S/N 20", "S/N 50", "S/N 250", "flagged"])
    groups, names = snr_groups(np.geomspace(10, 1000, 50))
    assert len(names) == 6 and groups.min() == 0 and groups.max() == 5


def test_report_tabulates_residuals_per_snr(examples, tmp_path):
    from catalog.report import make_report

    catalogue = tmp_path / "synthetic_catalog.zarr"
    assert runtime_main(["process", "--survey", str(examples["synthetic"]), "--out", str(catalogue), "--samples",
                         "32", "--quiet"]) == 0
    summary = make_report(catalogue, tmp_path / "report", examples["synthetic"])
    by_snr = summary["residuals"]["teff"]["by_snr"]
    assert list(by_snr) == ["S/N 20", "S/N 50", "S/N 250"]
    assert sum(g["n"] for g in by_snr.values()) == summary["residuals"]["teff"]["n"]
    assert summary["residuals"]["teff"]["unit"] == "K"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "MAP − truth per S/N" in report and "| teff | K |" in report


def test_runtime_corner_plots_one_star(examples, tmp_path, capsys):
    out = tmp_path / "star.png"
    args = ["corner", "--survey", str(examples["observed"]), "--source-id", "1", "--samples", "256", "--out",
            str(out), "--params", "teff,logg,fe_h"]
    assert runtime_main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "samples inside the training bounds" in capsys.readouterr().out
    assert runtime_main(args) == 2  # never replaced without --overwrite
    assert "exists" in capsys.readouterr().err
    bad = ["corner", "--survey", str(examples["observed"]), "--source-id", "99", "--out", str(tmp_path / "x.png")]
    assert runtime_main(bad) == 2
    assert "--source-id 99: not in" in capsys.readouterr().err
    bad = [*args[:-4], "--out", str(tmp_path / "y.png"), "--params", "teff,colour"]
    assert runtime_main(bad) == 2
    assert "params: unknown parameter(s) colour" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
