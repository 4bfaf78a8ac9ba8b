"""runtime process + catalog: determinism, resume after SIGKILL, corrupted input, checks, exports, report."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import zarr

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from catalog.check import check_catalogue
from catalog.writers import CatalogueStore, export_fits, export_parquet
from runtime.pipeline import ProcessOptions, process_survey
from spectra.contracts.flags import Flag
from spectra.stores.survey import make_survey, parse_snr

OPTIONS = ProcessOptions(samples=256, seed=3, device="cpu")


@pytest.fixture(scope="module")
def setup(tiny_bundle, tmp_path_factory):
    tmp, grid, _, bundle = tiny_bundle
    survey = make_survey(grid, parse_snr("50,250"), tmp_path_factory.mktemp("runtime") / "survey.zarr", seed=1,
                         chunk=16, progress=False)
    return tmp, bundle, survey


def _columns(path):
    store = CatalogueStore.open(path)
    return {name: store.column(name) for name in store.columns}


def _same(a, b, rows=slice(None)):
    for name in a:
        np.testing.assert_array_equal(a[name][rows], b[name][rows], err_msg=name)


def test_catalogue_independent_of_workers_and_chunking(setup, tmp_path):
    _, bundle, survey = setup
    one = process_survey(survey, bundle, tmp_path / "one.zarr", OPTIONS, workers=1, chunk=16, progress=False)
    process_survey(survey, bundle, tmp_path / "two.zarr", OPTIONS, workers=2, progress=False)
    process_survey(survey, bundle, tmp_path / "chunk40.zarr", OPTIONS, workers=1, chunk=40, progress=False)
    a = _columns(tmp_path / "one.zarr")
    _same(a, _columns(tmp_path / "two.zarr"))
    _same(a, _columns(tmp_path / "chunk40.zarr"))
    assert one.n_rows == 120 and one.chunks_run == 8
    np.testing.assert_array_equal(a["source_id"], zarr.open_group(str(survey), mode="r")["source_id"][:])
    assert np.isfinite(a["teff"]).all() and (a["n_valid"] > 0).all()
    assert (a["teff_p16"] <= a["teff_p84"]).all()
    result = check_catalogue(tmp_path / "one.zarr", survey)
    assert result.ok, result.problems


def test_killed_run_resumes_to_the_identical_catalogue(setup, tmp_path):
    _, bundle, survey = setup
    ref = tmp_path / "ref.zarr"
    process_survey(survey, bundle, ref, replace(OPTIONS, samples=2048), chunk=8, progress=False)
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "runtime", "process", "--input", str(survey), "--model", str(bundle),
           "--output", str(out), "--samples", "2048", "--seed", "3", "--device", "cpu", "--chunk", "8", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    done = None
    while time.time() < deadline:
        time.sleep(0.05)
        try:
            done = zarr.open_group(str(out), mode="r")["_done"][:]
        except Exception:
            continue
        if done.sum() >= 3:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = zarr.open_group(str(out), mode="r")["_done"][:]
    assert 0 < done.sum() < done.size, "the kill must land mid-way"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "add --resume" in r.stderr
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{int(done.size - done.sum())} chunks run, {int(done.sum())} already done" in r.stdout
    _same(_columns(ref), _columns(out))
    assert check_catalogue(out, survey).ok


def test_corrupted_spectra_are_flagged_and_others_unaffected(setup, tmp_path):
    _, bundle, survey = setup
    bad = tmp_path / "bad.zarr"
    src = zarr.open_group(str(survey), mode="r")
    root = zarr.open_group(str(bad), mode="w")
    for name in ("flux", "snr", "source_id", "wavelength"):
        root.create_array(name, data=src[name][:], chunks=src[name].chunks)
    flux, snr = root["flux"][:], root["snr"][:]
    flux[3, 500] = np.nan            # NaN pixel
    flux[17, :10] = np.inf           # inf
    flux[30] = 0.0                   # all zeros
    flux[44, 20_000:] = np.nan       # a short row, padded
    flux[58] = -flux[58]             # negative spectrum
    flux[71] = 0.9                   # constant
    snr[85] = np.nan                 # missing S/N
    snr[99] = 5000.0                 # outside the trained range
    root["flux"][:] = flux
    root["snr"][:] = snr
    process_survey(bad, bundle, tmp_path / "cat_bad.zarr", OPTIONS, progress=False)
    process_survey(survey, bundle, tmp_path / "cat_ok.zarr", OPTIONS, progress=False)
    a, b = _columns(tmp_path / "cat_bad.zarr"), _columns(tmp_path / "cat_ok.zarr")
    for row in (3, 17, 30, 44, 58, 71):
        assert a["flags"][row] & Flag.INVALID_FLUX and a["flag_bad"][row] and np.isnan(a["teff"][row])
    assert a["flags"][85] & Flag.INVALID_SNR and a["flag_bad"][85]
    assert a["flags"][99] & Flag.SNR_OUT_OF_RANGE and not a["flag_bad"][99] and np.isfinite(a["teff"][99])
    others = np.setdiff1d(np.arange(120), [3, 17, 30, 44, 58, 71, 85, 99])
    _same(a, b, others)
    assert check_catalogue(tmp_path / "cat_bad.zarr").ok


def test_bias_correction_columns(setup, tmp_path):
    _, bundle, survey = setup
    process_survey(survey, bundle, tmp_path / "c.zarr", replace(OPTIONS, bias_correction=True), progress=False)
    c = _columns(tmp_path / "c.zarr")
    expected = c["fe_h"] - (-3.209e-5 * c["teff"] + 0.143)
    np.testing.assert_allclose(c["fe_h_corr"], expected, rtol=1e-5, atol=1e-5)
    assert "vmic_corr" not in c and "teff_corr" in c
    assert "Table B.3" in CatalogueStore.open(tmp_path / "c.zarr").attrs["bias_correction_source"]


def test_resume_refuses_other_settings_and_check_finds_gaps(setup, tmp_path):
    _, bundle, survey = setup
    out = tmp_path / "x.zarr"
    process_survey(survey, bundle, out, OPTIONS, chunk=16, progress=False)
    with pytest.raises(ValueError, match="was made with seed = 3, this run has 4"):
        process_survey(survey, bundle, out, replace(OPTIONS, seed=4), resume=True, progress=False)
    root = zarr.open_group(str(out), mode="r+")
    root["_done"][2] = False
    root["values_i8"][40:48, 0] = -1
    result = check_catalogue(out, survey)
    assert not result.ok
    assert any("chunks not done" in p for p in result.problems)
    assert any("8 rows were never written" in p for p in result.problems)


def test_exports_keep_units_and_rows(setup, tmp_path):
    _, bundle, survey = setup
    out = tmp_path / "e.zarr"
    process_survey(survey, bundle, out, OPTIONS, progress=False)
    import pyarrow.parquet as pq
    from astropy.io import fits

    table = pq.read_table(export_parquet(out, tmp_path / "e.parquet"))
    assert table.num_rows == 120 and table.schema.field("teff").metadata[b"unit"] == b"K"
    with fits.open(export_fits(out, tmp_path / "e.fits")) as hdul:
        data, header = hdul[1].data, hdul[1].header
        assert len(data) == 120
        i = data.columns.names.index("fe_h") + 1
        assert f"TUNIT{i}" not in header and "MAP" in header[f"TCOMM{i}"] and "[dex]" in header[f"TCOMM{i}"]
        assert header[f"TUNIT{data.columns.names.index('teff') + 1}"] == "K"
        np.testing.assert_array_equal(data["source_id"], _columns(out)["source_id"])


def test_report_with_truth(setup, tmp_path):
    """The report's numbers are the catalogue's and the truth's, recomputed here from the stores (rows, usable rows,
    flag counts, median MAP and 68 % width, MAP - truth bias, scatter and count per parameter), summary.json is what
    make_report returned, and report.md shows them."""
    import json

    from catalog.report import make_report

    _, bundle, survey = setup
    out = tmp_path / "r.zarr"
    process_survey(survey, bundle, out, OPTIONS, progress=False)
    summary = make_report(out, tmp_path / "report", truth=survey)
    c = _columns(out)
    root = zarr.open_group(str(survey), mode="r")
    names = list(root["truth"].attrs["names"])
    truth = root["truth"][:]
    good = ~c["flag_bad"]
    assert summary["rows"] == 120 and summary["usable"] == int(good.sum())
    assert summary["flag_warn"] == int(np.count_nonzero(c["flags"]))
    assert summary["flag_counts"] == {f.name: int(np.count_nonzero(c["flags"] & int(f))) for f in Flag}
    assert set(summary["residuals"]) == {p for p in summary["params"] if p in names} and "teff" in summary["residuals"]
    text = (tmp_path / "report" / "report.md").read_text()
    for p, res in summary["residuals"].items():
        r = c[p] - truth[:, names.index(p)]
        ok = good & np.isfinite(r)
        assert res["n"] == int(ok.sum()) > 0
        np.testing.assert_allclose([res["bias"], res["sigma"]], [np.mean(r[ok]), np.std(r[ok])], rtol=1e-6, err_msg=p)
        assert f"| {p} |" in text and f"{res['bias']:+.3g} | {res['sigma']:.3g} |" in text
    for p, stats in summary["params"].items():
        width = (c[f"{p}_p84"] - c[f"{p}_p16"])[good]
        np.testing.assert_allclose([stats["median_map"], stats["median_width68"]],
                                   [np.median(c[p][good]), np.median(width)], rtol=1e-6, err_msg=p)
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert f"{summary['rows']} rows, {summary['usable']} with a usable estimate" in text
    for name in ("report.md", "summary.json", "kiel.png", "mg_fe_vs_fe_h.png", "widths_and_rejection.png",
                 "residuals.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_wrong_pixel_grid_is_a_clear_error(setup, tmp_path):
    _, bundle, _ = setup
    root = zarr.open_group(str(tmp_path / "short.zarr"), mode="w")
    root.create_array("flux", data=np.ones((4, 100), dtype="f4"))
    root.create_array("snr", data=np.ones(4, dtype="f4"))
    root.create_array("source_id", data=np.arange(4))
    root.create_array("wavelength", data=np.linspace(5000, 5100, 100))
    from runtime.bundle import BundleError

    with pytest.raises(BundleError, match=r"flux has 100 pixels; the model in .* expects 25200"):
        process_survey(tmp_path / "short.zarr", bundle, tmp_path / "o.zarr", OPTIONS, progress=False)


def test_calibrate_recovers_known_coefficients_and_closes_the_loop(setup, tmp_path):
    """Reference values built with a known T_eff-linear bias: calibrate finds a, b; stored in the bundle,
    runtime --bias-correction then reproduces the reference values."""
    import json
    import shutil

    from catalog.calibrate import calibrate
    from runtime.bundle import load_bundle, store_bias_correction

    _, bundle, survey = setup
    process_survey(survey, bundle, tmp_path / "c.zarr", OPTIONS, progress=False)
    c = _columns(tmp_path / "c.zarr")
    truth = {"logg": (2.0e-4, -1.1), "fe_h": (-5.0e-5, 0.2)}
    ok = ~c["flag_bad"]
    ref = tmp_path / "ref.csv"
    lines = ["source_id,logg,fe_h"]
    for i in np.flatnonzero(ok):
        values = [c[p][i] - (a * c["teff"][i] + b) for p, (a, b) in truth.items()]
        lines.append(f"{c['source_id'][i]},{values[0]:.6f},{values[1]:.6f}")
    ref.write_text("\n".join(lines))
    result = calibrate(tmp_path / "c.zarr", ref, tmp_path / "coeffs.json", min_feh=-10)
    for p, (a, b) in truth.items():
        fitted = result["coefficients"][p]
        assert fitted["a"] == pytest.approx(a, rel=1e-3, abs=1e-8) and fitted["b"] == pytest.approx(b, abs=1e-3)
        assert fitted["n"] == ok.sum() and fitted["rms_after"] < 1e-4
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    store_bias_correction(copy, tmp_path / "coeffs.json")
    assert set(load_bundle(copy).manifest.bias_correction["coefficients"]) == {"logg", "fe_h"}
    process_survey(survey, copy, tmp_path / "d.zarr", replace(OPTIONS, bias_correction=True), progress=False)
    d = _columns(tmp_path / "d.zarr")
    expected = np.loadtxt(ref, delimiter=",", skiprows=1)
    np.testing.assert_allclose(d["fe_h_corr"][ok], expected[:, 2], atol=2e-5)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"coefficients": {"not_a_parameter": {"a": 1, "b": 2}}}))
    with pytest.raises(ValueError, match="not_a_parameter"):
        store_bias_correction(copy, bad)


def test_ingested_survey_flags_reach_the_catalogue(setup, tmp_path):
    from spectra.observed.examples import fourmost_l1_from_grid
    from spectra.observed.ingest import IngestOptions, ingest

    tmp, bundle, _ = setup
    grid = tmp / "labelled.h5"
    l1 = fourmost_l1_from_grid(grid, [0, 1, 2], tmp_path / "l1.fits", snr=100)
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    ingest([l1, empty], tmp_path / "obs.zarr", IngestOptions(rv=0.0), progress=False)
    process_survey(tmp_path / "obs.zarr", bundle, tmp_path / "c.zarr", OPTIONS, progress=False)
    c = _columns(tmp_path / "c.zarr")
    assert list(c["ingest_flags"]) == [0, 0, 0, 1]
    assert (c["flags"][3] & Flag.INGEST_FLAGGED) and (c["flags"][3] & Flag.INVALID_FLUX) and c["flag_bad"][3]
    assert np.isfinite(c["teff"][:3]).all()
