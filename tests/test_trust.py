"""Issue 13: a bundle that cannot be swapped, inputs that are never destroyed, real spectra handled as a user
expects, catalogue files an astronomer trusts. Each test fails on the code before these guards existed."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from catalog import cli as catalog_cli  # noqa: E402
from catalog.writers import CatalogueStore, export_fits, export_parquet  # noqa: E402
from export.onnx import export_bundle  # noqa: E402
from runtime import cli as runtime_cli  # noqa: E402
from runtime.bundle import BundleError, load_bundle  # noqa: E402
from runtime.pipeline import ProcessOptions, process_survey  # noqa: E402
from spectra import cli as spectra_cli  # noqa: E402
from spectra.contracts.flags import FLAGS, Flag, flags_markdown  # noqa: E402
from spectra.forward.continuum import pseudo_continuum  # noqa: E402
from spectra.forward.degrade import gaussian_broaden, rebin  # noqa: E402
from spectra.observed.examples import fourmost_l1_from_grid  # noqa: E402
from spectra.observed.ingest import IngestFlag, IngestOptions, ingest  # noqa: E402
from spectra.observed.prepare import TRAINING_RESOLUTION, resample_to_grid  # noqa: E402
from spectra.observed.readers import read_spectra  # noqa: E402
from spectra.stores.survey import make_survey, parse_snr  # noqa: E402
from spectra.wavegrid import hr_grid  # noqa: E402

from conftest import line_spectrum, rehash_bundle, shared_file  # noqa: E402

OPTIONS = ProcessOptions(samples=128, seed=3, device="cpu")
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def setup(tiny_bundle, tmp_path_factory):
    tmp, grid, _, bundle = tiny_bundle
    survey = make_survey(grid, parse_snr("100"), tmp_path_factory.mktemp("trust") / "survey.zarr", seed=1, chunk=20,
                         progress=False)
    return tmp, grid, bundle, survey


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _tamper_bias(path: Path, delta: float = 3.0) -> None:
    """Add ``delta`` to the first bias-like initializer of an ONNX graph (the change the issue reproduced)."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        values = onnx.numpy_helper.to_array(init)
        if values.ndim == 1 and values.dtype == np.float32 and values.size > 1:
            init.CopyFrom(onnx.numpy_helper.from_array(values + np.float32(delta), init.name))
            break
    onnx.save(model, str(path))


# ------------------------------------------------------------------------------------- bundle integrity
def test_tampered_hoisted_graph_is_refused_with_its_name(setup, tmp_path):
    _, _, bundle, _ = setup
    assert set(load_bundle(bundle).manifest.raw["files"]) >= {
        "feature_extractor.onnx", "inverse_flow.onnx", "condition_projection.onnx", "hoisted_flow.onnx",
        "wavelength.npy"}
    for name in ("hoisted_flow.onnx", "condition_projection.onnx", "inverse_flow.onnx", "wavelength.npy"):
        broken = _copy(bundle, tmp_path / name)
        if name.endswith(".onnx"):
            _tamper_bias(broken / name)
        else:
            np.save(broken / name, np.load(broken / name) + 1e-3)
        with pytest.raises(BundleError, match=rf"{name}: sha256 .* differs .* recorded in manifest.json"):
            load_bundle(broken)


def test_missing_and_unlisted_files_are_refused(setup, tmp_path):
    _, _, bundle, _ = setup
    missing = _copy(bundle, tmp_path / "missing")
    (missing / "hoisted_flow.onnx").unlink()
    with pytest.raises(BundleError, match=r"hoisted_flow.onnx is listed in manifest.json but missing"):
        load_bundle(missing)
    extra = _copy(bundle, tmp_path / "extra")
    shutil.copy(extra / "inverse_flow.onnx", extra / "inverse_flow_v2.onnx")
    with pytest.raises(BundleError, match=r"inverse_flow_v2.onnx not listed in manifest.json"):
        load_bundle(extra)
    (extra / "inverse_flow_v2.onnx").unlink()
    load_bundle(extra)
    (extra / "NOTES.txt").write_text("ONNX Runtime would load any file as external weights")  # issue 21: refused
    with pytest.raises(BundleError, match=r"NOTES.txt not listed in manifest.json"):
        load_bundle(extra)


def test_identity_covers_every_graph_and_resume_refuses_another_model(setup, tmp_path):
    _, _, bundle, survey = setup
    original = load_bundle(bundle).sha256
    other = _copy(bundle, tmp_path / "other")
    _tamper_bias(other / "hoisted_flow.onnx")
    rehash_bundle(other)  # a consistent bundle of another model
    assert load_bundle(other).sha256 != original
    out = tmp_path / "cat.zarr"
    process_survey(survey, bundle, out, OPTIONS, progress=False)
    with pytest.raises(ValueError, match=r"bundle_sha256"):
        process_survey(survey, other, out, OPTIONS, progress=False, resume=True)
    with pytest.raises(BundleError, match=r"the bundle changed during the run"):
        load_bundle(other, expected_sha256=original)


def _absurd(raw: dict, case: str) -> None:
    if case == "bounds reversed":
        raw["parameters"][0]["lower"], raw["parameters"][0]["upper"] = 7000.0, 4000.0
    elif case == "bound NaN":
        raw["parameters"][1]["upper"] = math.nan
    elif case == "x_std zero":
        raw["x_std"][1] = 0.0
    elif case == "x_std negative":
        raw["x_std"][2] = -1.0
    elif case == "x_std string":
        raw["x_std"][0] = "0.1"
    elif case == "x_std NaN":
        raw["x_std"][0] = math.nan
    elif case == "snr range reversed":
        raw["snr_convention"]["trained_range"] = [1000.0, 10.0]
    elif case == "unknown transform":
        raw["parameters"][3]["transform"] = "sqrt"
    elif case == "x_mean short":
        raw["x_mean"] = raw["x_mean"][:-1]
    elif case == "log10 of negative bound":
        raw["parameters"][4]["lower"] = -1.0
    elif case == "path in file name":
        raw["extra_graphs"]["hoisted_flow"]["file"] = "../hoisted_flow.onnx"


ABSURD = {
    "bounds reversed": r"parameter teff: lower bound 7000.0 is not below the upper bound 4000.0",
    "bound NaN": r"parameter logg: upper = nan is not a finite number",
    "x_std zero": r"x_std\[1\] = 0.0 must be > 0",
    "x_std negative": r"x_std\[2\] = -1.0 must be > 0",
    "x_std string": r"x_std\[0\] = '0.1' is not a finite number",
    "x_std NaN": r"x_std\[0\] = nan is not a finite number",
    "snr range reversed": r"trained_range must be \[low, high\] with 0 < low < high, got \[1000.0, 10.0\]",
    "unknown transform": r"parameter vmic has unknown transform 'sqrt'",
    "x_mean short": r"x_mean must be a list of n_params = 13 numbers",
    "log10 of negative bound": r"parameter vbroad is log10-transformed but its lower bound -1.0 is not positive",
    "path in file name": r"extra_graphs.hoisted_flow.file must be a file name inside the bundle",
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_manifest_values_give_one_clear_error(setup, tmp_path, case):
    _, _, bundle, survey = setup
    broken = _copy(bundle, tmp_path / "b")
    raw = json.loads((broken / "manifest.json").read_text())
    _absurd(raw, case)
    (broken / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=ABSURD[case]):
        load_bundle(broken)
    code = runtime_cli.main(["process", "--survey", str(survey), "--bundle", str(broken), "--out",
                             str(tmp_path / "c.zarr"), "--quiet"])
    assert code == 2 and not (tmp_path / "c.zarr").exists()


def test_export_takes_the_schema_from_the_run_not_from_live_code(setup, tmp_path, monkeypatch):
    tmp, _, _, _ = setup
    run = _copy(tmp / "run", tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    assert meta["schema"]["parameters"][0]["upper"] == 7000.0 and meta["schema"]["continuum"] == "true"
    meta["schema"]["parameters"][0]["upper"] = 6800.0  # as if trained when the bound was 6800 K
    (run / "run.json").write_text(json.dumps(meta))
    from spectra import schema

    monkeypatch.setattr(schema, "TARGETS", (replace(schema.TARGETS[0], upper=9000.0), *schema.TARGETS[1:]))
    manifest = load_bundle(export_bundle(run, tmp_path / "b")).manifest
    assert manifest.upper[0] == 6800.0 and manifest.continuum == "true"
    del meta["schema"]
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"records no training schema"):
        export_bundle(run, tmp_path / "b2")
    assert not (tmp_path / "b2").exists()



def _evaluation(run: Path, grid: Path, out: Path) -> tuple[dict, str, dict]:
    """(metrics without timings, report.md without its speed, evaluation.npz) of a small evaluation of ``run``."""
    from spectra.stores.survey import parse_snr
    from training.evaluate import evaluate

    metrics = evaluate(run, grid, out, snr=parse_snr("250"), n_samples=64, max_spectra=4, progress=False)
    for key in ("seconds", "spectra_per_second"):
        metrics.pop(key)
    report = "\n".join(line for line in (out / "report.md").read_text().splitlines() if "spectra/s" not in line)
    with np.load(out / "evaluation.npz") as saved:
        return metrics, report, dict(saved)


def test_evaluate_takes_the_schema_from_the_run_not_from_live_code(tiny_bundle, tmp_path, monkeypatch):
    """Audit of issue 22: ``training evaluate`` took transforms, bounds, order, labels and units from the live
    ``spectra.schema``, so an edit of the schema after training changed (or broke) the evaluation of the run; like
    ``export onnx`` it reads the run's recorded schema, and refuses a run that recorded none."""
    from spectra import schema

    _, grid, run, _ = tiny_bundle
    metrics, report, arrays = _evaluation(run, grid, tmp_path / "before")
    assert "teff [K]" in report and metrics["parameters"] == schema.target_names()
    edited = replace(schema.TARGETS[0], label="Temperature", unit="mK", transform="identity", upper=5000.0)
    monkeypatch.setattr(schema, "TARGETS", tuple(reversed((edited, *schema.TARGETS[1:]))))
    after = _evaluation(run, grid, tmp_path / "after")
    assert after[0] == metrics and after[1] == report
    for name, values in arrays.items():
        np.testing.assert_array_equal(after[2][name], values, err_msg=name)
    copy = _copy(run, tmp_path / "run")
    meta = json.loads((copy / "run.json").read_text())
    del meta["schema"]
    (copy / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"records no training schema"):
        _evaluation(copy, grid, tmp_path / "none")

def test_export_never_replaces_a_folder_it_did_not_write(setup, tmp_path):
    tmp, _, _, _ = setup
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not a model bundle"):
        export_bundle(tmp / "run", folder)
    assert (folder / "notes.txt").read_text() == "keep me" and len(list(folder.iterdir())) == 1
    export_bundle(tmp / "run", tmp_path / "b")
    with pytest.raises(FileExistsError, match=r"--overwrite"):
        export_bundle(tmp / "run", tmp_path / "b")
    export_bundle(tmp / "run", tmp_path / "b", overwrite=True)
    load_bundle(tmp_path / "b")


# ------------------------------------------------------------------------------ argument errors, outputs
@pytest.mark.parametrize(("args", "message"), [
    (["--samples", "0"], "--samples must be >= 32"),
    (["--batch", "-1"], "--batch must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--chunk", "0"], "--chunk must be >= 1"),
    (["--scheduler", "localhost"], "expected an address like tcp://HOST:8786"),
    (["--scheduler", "tcp://127.0.0.1:9"], "cannot connect"),
])
def test_argument_errors_are_refused_before_any_output(setup, tmp_path, capsys, args, message):
    _, _, bundle, survey = setup
    out = tmp_path / "c.zarr"
    code = runtime_cli.main(["process", "--survey", str(survey), "--bundle", str(bundle), "--out", str(out),
                             "--quiet", *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_old_option_names_still_work_and_help_shows_defaults(setup, tmp_path, capsys):
    _, _, bundle, survey = setup
    out = tmp_path / "c.zarr"
    assert runtime_cli.main(["process", "--input", str(survey), "--model", str(bundle), "--output", str(out),
                             "--quiet", "--samples", "32"]) == 0
    assert catalog_cli.main(["check", "--input", str(out)]) == 0
    with pytest.raises(SystemExit):
        runtime_cli.main(["process", "--help"])
    text = capsys.readouterr().out
    assert "(default: 4096)" in text and "--input" not in text and "--survey" in text


def _folder_with_user_files(root: Path) -> Path:
    root.mkdir()
    (root / "star.fits").write_bytes(b"SIMPLE  = T")
    (root / "notes.txt").write_text("my notes")
    return root


def _untouched(root: Path) -> bool:
    return (root / "notes.txt").read_text() == "my notes" and (root / "star.fits").exists() and len(
        list(root.iterdir())) == 2


def test_ingest_and_survey_never_delete_a_users_folder(setup, tmp_path, capsys):
    _, grid, _, _ = setup
    obs = _folder_with_user_files(tmp_path / "obs")
    assert spectra_cli.main(["ingest", str(obs / "star.fits"), "--out", str(obs), "--quiet"]) == 2
    assert _untouched(obs)
    assert spectra_cli.main(["ingest", str(obs / "star.fits"), "--out", str(obs), "--overwrite", "--quiet"]) == 2
    assert _untouched(obs)
    assert spectra_cli.main(["survey", "--grid", str(grid), "--out", str(obs), "--quiet"]) == 2
    assert spectra_cli.main(["survey", "--grid", str(grid), "--out", str(obs), "--overwrite", "--quiet"]) == 2
    assert _untouched(obs)
    assert "refusing to delete" in capsys.readouterr().err
    assert runtime_cli.main(["process", "--survey", str(setup[3]), "--bundle", str(setup[2]), "--out", str(obs),
                             "--overwrite", "--quiet"]) == 2
    assert _untouched(obs)


def test_a_finished_survey_is_replaced_only_when_told(setup, tmp_path):
    _, grid, _, _ = setup
    l1 = fourmost_l1_from_grid(grid, [0, 1], tmp_path / "l1.fits", snr=100)
    out = tmp_path / "obs.zarr"
    assert spectra_cli.main(["ingest", str(l1), "--out", str(out), "--rv", "0", "--quiet"]) == 0
    before = zarr.open_group(str(out), mode="r").attrs["created"]
    assert spectra_cli.main(["ingest", str(l1), "--out", str(out), "--rv", "0", "--quiet"]) == 2
    assert zarr.open_group(str(out), mode="r").attrs["created"] == before
    assert spectra_cli.main(["ingest", str(l1), "--out", str(out), "--rv", "0", "--overwrite", "--quiet"]) == 0


def test_all_failed_batch_and_missing_paths_exit_non_zero(tmp_path, capsys):
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    assert spectra_cli.main(["ingest", str(empty), "--out", str(tmp_path / "a.zarr"), "--quiet"]) == 1
    assert "every spectrum failed" in capsys.readouterr().err
    assert spectra_cli.main(["ingest", str(tmp_path / "nope.fits"), "--out", str(tmp_path / "b.zarr"),
                             "--quiet"]) == 2
    assert "not found: " in capsys.readouterr().err and not (tmp_path / "b.zarr").exists()


def test_export_format_follows_suffix_and_unfinished_catalogues_are_refused(setup, tmp_path):
    _, _, bundle, survey = setup
    out = tmp_path / "c.zarr"
    process_survey(survey, bundle, out, OPTIONS, chunk=20, progress=False)
    fits_file = export_fits(out, tmp_path / "demo.fits")
    data = fits_file.read_bytes()
    with pytest.raises(ValueError, match=r"a parquet export needs a file name ending in .parquet"):
        export_parquet(out, tmp_path / "demo.fits")
    with pytest.raises(FileExistsError, match=r"--overwrite"):
        export_fits(out, tmp_path / "demo.fits")
    assert fits_file.read_bytes() == data
    assert catalog_cli.main(["export", "--catalog", str(out), "--format", "parquet", "--out",
                             str(tmp_path / "demo.fits")]) == 2
    assert fits_file.read_bytes() == data

    store = CatalogueStore.open(out, mode="r+")
    store.root["_done"][1] = False  # as if the run had been interrupted
    with pytest.raises(ValueError, match=r"unfinished catalogue \(20 of 60 rows not processed yet\)"):
        export_parquet(out, tmp_path / "u.parquet")
    assert not (tmp_path / "u.parquet").exists()
    import pyarrow.parquet as pq

    table = pq.read_table(export_parquet(out, tmp_path / "u.parquet", complete_only=True))
    assert table.num_rows == 40 and -1 not in table.column("source_id").to_pylist()


def test_fits_export_reads_cleanly_with_full_provenance_and_every_flag(setup, tmp_path):
    from astropy.table import Table

    _, _, bundle, survey = setup
    out = tmp_path / "c.zarr"
    process_survey(survey, bundle, out, OPTIONS, progress=False)
    sha = load_bundle(bundle).sha256
    path = export_fits(out, tmp_path / "c.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = Table.read(path, hdu="CATALOGUE")
        provenance = Table.read(path, hdu="PROVENANCE")
        flags = Table.read(path, hdu="FLAGS")
    assert len(table) == 60 and str(table["teff"].unit) == "K"
    assert "MAP" in table["teff"].description and "[dex]" in table["fe_h"].description
    assert table.meta["BUNDLE"] == sha and len(sha) == 64
    record = dict(zip(provenance["key"], provenance["value"], strict=True))
    assert record["bundle_sha256"] == sha and record["map_definition"].endswith("inside the training bounds")
    assert list(flags["bit"]) == [f.bit for f in FLAGS] and list(flags["name"]) == [f.name for f in FLAGS]
    header = fits.getheader(path, "CATALOGUE")
    assert all(header[f"FLAG{f.bit.bit_length() - 1}"] == f.name for f in FLAGS)

    import pyarrow.parquet as pq

    meta = pq.read_schema(export_parquet(out, tmp_path / "c.parquet")).metadata
    assert meta[b"bundle_sha256"].decode() == sha
    assert [f["name"] for f in json.loads(meta[b"flag_table"])] == [f.name for f in FLAGS]


def _readme_flag_rows() -> list[tuple[int, str, float | None, str]]:
    """The README's flag table, parsed from its text (between the ``<!-- flags`` markers), not from the schema."""
    text = README.read_text()
    start = text.index("<!-- flags")
    block = text[text.index("\n", start):text.index("<!-- /flags -->")]
    rows = []
    for line in block.strip().splitlines()[2:]:  # after the header and the |---| line
        bit, name, threshold, meaning = (cell.strip() for cell in line.strip().strip("|").split("|", 3))
        rows.append((int(bit), name, float(threshold) if threshold else None, meaning))
    return rows


def test_readme_flag_table_is_the_one_definition():
    """The README's table, read cell by cell, is the schema's (bits, names, thresholds, meanings, in order); the
    bits are distinct single bits; the FITS cards the README names (FLAG0…FLAGn) are the ones the export writes."""
    rows = _readme_flag_rows()
    assert rows == [(f.bit, f.name, f.threshold, f.description) for f in FLAGS]
    bits = [bit for bit, *_ in rows]
    assert all(bit > 0 and bit & (bit - 1) == 0 for bit in bits) and len(set(bits)) == len(bits)
    assert {f.name: int(f) for f in Flag} == {name: bit for bit, name, *_ in rows}
    cards = [f"FLAG{bit.bit_length() - 1}" for bit in bits]
    assert f"{cards[0]}…{cards[-1]}" in README.read_text(), "the README names other FITS flag cards"
    assert flags_markdown() in README.read_text()  # `catalog flags` prints the README's text


# ------------------------------------------------------------------------------------ observed spectra
def _harps_like_file(path: Path, header: dict, resolution: float = 115_000.0) -> tuple[Path, np.ndarray]:
    """A 1D FITS spectrum of Gaussian lines at ``resolution`` on 0.01 Å pixels, with the given header cards."""
    wave = np.arange(5100.0, 6850.0, 0.01)
    intrinsic = line_spectrum(wave, seed=7, n_lines=600)
    flux = gaussian_broaden(wave, intrinsic, resolution, wave)
    hdu = fits.PrimaryHDU(flux.astype(np.float32))
    hdu.header.update({"CRVAL1": wave[0], "CDELT1": 0.01, "CRPIX1": 1.0, "CTYPE1": "AWAV", "CUNIT1": "Angstrom"})
    for key, value in header.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path, intrinsic


def _expected_on_hr(wave: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    grid = hr_grid()
    smooth = gaussian_broaden(wave, intrinsic, TRAINING_RESOLUTION, wave)
    return np.concatenate([rebin(wave, smooth, grid.wave[s], grid.step) for s in grid.segments])


def test_harps_gets_r_115000_from_its_instrument_and_is_matched(tmp_path):
    path, intrinsic = _harps_like_file(tmp_path / "harps.fits", {"INSTRUME": "HARPS", "OBJECT": "HD 1"})
    obs = read_spectra(path)[0]
    assert obs.resolution == 115_000 and obs.resolution_source == "instrument table: HARPS HAM"
    report = ingest([path], tmp_path / "h.zarr", IngestOptions(rv=0.0, snr=300.0), progress=False)
    survey = zarr.open_group(str(report.output), mode="r")
    flux = survey["flux"][0]
    expected = _expected_on_hr(np.arange(5100.0, 6850.0, 0.01), intrinsic)
    matched_rms = np.sqrt(np.mean((flux - expected) ** 2))
    assert matched_rms < 0.004, matched_rms
    unmatched = np.interp(hr_grid().wave, np.arange(5100.0, 6850.0, 0.01), gaussian_broaden(
        np.arange(5100.0, 6850.0, 0.01), intrinsic, 115_000, np.arange(5100.0, 6850.0, 0.01)))
    assert np.sqrt(np.mean((unmatched - expected) ** 2)) > 4 * matched_rms
    assert survey["input_resolution"][0] == 115_000 and str(survey["resolution_source"][0]).startswith("instrument")
    assert str(survey["object"][0]) == "HD 1" and str(survey["instrument"][0]) == "HARPS"


def test_eso_table_hierarch_keywords_and_modes(tmp_path):
    wave = np.arange(5100.0, 6850.0, 0.02)
    flux = line_spectrum(wave, seed=2)
    cols = [fits.Column(name="WAVE", format=f"{wave.size}D", unit="Angstrom", array=[wave]),
            fits.Column(name="FLUX", format=f"{wave.size}E", array=[flux])]
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = "HARPS"
    primary.header["HIERARCH ESO INS MODE"] = "EGGS"
    primary.header["HIERARCH ESO OBS TARG NAME"] = "alf Tau"
    fits.HDUList([primary, fits.BinTableHDU.from_columns(cols)]).writeto(tmp_path / "adp.fits")
    obs = read_spectra(tmp_path / "adp.fits")[0]
    assert (obs.resolution, obs.resolution_source) == (80_000, "instrument table: HARPS EGGS")
    assert obs.object == "alf Tau" and obs.instrument == "HARPS"


def test_unknown_resolution_is_a_failed_row_unless_given_per_file(tmp_path):
    path, _ = _harps_like_file(tmp_path / "odd.fits", {"INSTRUME": "HOMEMADE"})
    report = ingest([path], tmp_path / "a.zarr", IngestOptions(rv=0.0), progress=False)
    survey = zarr.open_group(str(report.output), mode="r")
    assert survey["ingest_flags"][0] & IngestFlag.READ_FAILED and survey["ingest_flags"][0] & \
        IngestFlag.RESOLUTION_UNKNOWN
    message = str(survey["message"][0])
    assert "'HOMEMADE' is not in the table" in message and "--resolution" in message
    table = tmp_path / "settings.csv"
    table.write_text(f"file,resolution,rv,medium\n{path.name},115000,0,air\n")
    assert spectra_cli.main(["ingest", str(path), "--out", str(tmp_path / "b.zarr"), "--table", str(table),
                             "--quiet"]) == 0
    survey = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert not survey["ingest_flags"][0] & (IngestFlag.READ_FAILED | IngestFlag.RESOLUTION_UNKNOWN)
    assert survey["input_resolution"][0] == 115_000
    assert str(survey["resolution_source"][0]) == "given (--resolution or --table)"


def test_every_set_flag_has_a_message(tmp_path):
    wave = np.arange(5100.0, 6850.0, 0.02)
    flux = line_spectrum(wave, seed=3)
    np.savetxt(tmp_path / "s.txt", np.column_stack([wave, flux]))
    report = ingest([tmp_path / "s.txt"], tmp_path / "a.zarr", IngestOptions(rv=0.0, resolution=40_000),
                    progress=False)
    survey = zarr.open_group(str(report.output), mode="r")
    flags = IngestFlag(int(survey["ingest_flags"][0]))
    assert flags & IngestFlag.SNR_ESTIMATED and flags & IngestFlag.MEDIUM_ASSUMED
    message = str(survey["message"][0])
    assert "DER_SNR" in message and "air assumed" in message and "inferred from the range" in message


def test_already_normalised_input_gets_the_pseudo_continuum_too_and_a_bad_continuum_is_flagged(tmp_path):
    """The survey is pseudo-continuum normalised, every row of it: input its provider normalised already is divided
    by its fitted pseudo-continuum exactly like the training spectra (normalised by the synthesis, then fitted)."""
    wave = np.arange(5100.0, 6850.0, 0.02)
    flux = line_spectrum(wave, seed=4, n_lines=2000)  # crowded enough for the pseudo-continuum to dip below 1
    np.savetxt(tmp_path / "norm.txt", np.column_stack([wave, flux]))
    humps = np.where(np.mod(wave, 60.0) < 8.0, 1.4, 1.0)  # 8 A humps every 60 A: no 40 A spline follows them
    bumpy = flux * humps * (1.0 + 0.3 * np.sin(wave / 40.0))
    np.savetxt(tmp_path / "bumpy.txt", np.column_stack([wave, bumpy]))
    report = ingest([tmp_path / "norm.txt", tmp_path / "bumpy.txt"], tmp_path / "a.zarr",
                    IngestOptions(rv=0.0, resolution=TRAINING_RESOLUTION, snr=500), progress=False)
    survey = zarr.open_group(str(report.output), mode="r")
    grid = hr_grid()
    direct = resample_to_grid(wave, flux, grid)  # the same rebin as ingestion, without any continuum step
    assert str(survey["continuum_method"][0]) == "pseudo-continuum fitted (input already normalised)"
    np.testing.assert_allclose(survey["flux"][0], direct / pseudo_continuum(grid.wave, direct), atol=2e-6)
    assert np.abs(survey["flux"][0] - direct).max() > 0.01  # the fit did move it (kept input would fail)
    assert not survey["ingest_flags"][0] & IngestFlag.CONTINUUM_POOR
    assert str(survey["continuum_method"][1]) == "pseudo-continuum fitted"
    assert survey["ingest_flags"][1] & IngestFlag.CONTINUUM_POOR and survey["continuum_excess"][1] > 0.02
    assert "pseudo-continuum fit poor" in str(survey["message"][1])


def test_shared_uves_sun_is_recognised_as_normalised_and_fitted_like_any_input():
    uves = shared_file("spectra", "UVES_Sun-1_cleaned_norm.txt")
    from spectra.observed.ingest import prepare

    obs = read_spectra(uves)[0]
    prepared = prepare(obs, IngestOptions(rv=0.0, resolution=47_000, medium="air"))
    assert prepared.continuum_method == "pseudo-continuum fitted (input already normalised)"


def test_catalogue_carries_ingestion_provenance_and_flags_continuum_mismatch(setup, tmp_path, capsys):
    _tmp, grid, bundle, _ = setup
    l1 = fourmost_l1_from_grid(grid, [0, 1, 2], tmp_path / "l1.fits", snr=100)
    ingest([l1], tmp_path / "obs.zarr", IngestOptions(rv=0.0), progress=False)
    code = runtime_cli.main(["process", "--survey", str(tmp_path / "obs.zarr"), "--bundle", str(bundle), "--out",
                             str(tmp_path / "c.zarr"), "--samples", "64", "--quiet"])
    assert code == 0 and "CONTINUUM_MISMATCH" in capsys.readouterr().err
    store = CatalogueStore.open(tmp_path / "c.zarr")
    assert {"file", "object", "instrument", "rv", "input_resolution", "coverage"} <= set(store.columns)
    assert all(store.column("flags") & Flag.CONTINUUM_MISMATCH)
    assert str(store.column("file")[1]).endswith("l1.fits[1]") and store.column("instrument")[0] == "4MOST-HR"
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = Table.read(export_fits(tmp_path / "c.zarr", tmp_path / "c.fits"), hdu="CATALOGUE")
    assert str(table["object"][2]) == str(store.column("object")[2])


def test_snr_above_the_trained_range_can_be_capped(setup, tmp_path):
    _, grid, bundle, _ = setup
    survey = make_survey(grid, parse_snr("5000"), tmp_path / "s.zarr", chunk=20, progress=False)
    process_survey(survey, bundle, tmp_path / "a.zarr", OPTIONS, progress=False)
    process_survey(survey, bundle, tmp_path / "b.zarr", replace(OPTIONS, snr_cap=True), progress=False)
    plain, capped = (CatalogueStore.open(tmp_path / n).column("flags") for n in ("a.zarr", "b.zarr"))
    assert all(plain & Flag.SNR_OUT_OF_RANGE) and not any(plain & Flag.SNR_CAPPED)
    assert all(capped & Flag.SNR_CAPPED) and not any(capped & Flag.SNR_OUT_OF_RANGE)


def test_merge_surveys_from_two_ingests(setup, tmp_path):
    _, grid, _, _ = setup
    a = fourmost_l1_from_grid(grid, [0, 1], tmp_path / "a.fits", snr=100)
    b = fourmost_l1_from_grid(grid, [2], tmp_path / "b.fits", snr=100)
    ingest([a], tmp_path / "a.zarr", IngestOptions(rv=0.0), progress=False)
    ingest([b], tmp_path / "b.zarr", IngestOptions(rv=0.0), progress=False)
    assert spectra_cli.main(["merge", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "--out",
                             str(tmp_path / "m.zarr")]) == 2  # both start at source_id 0
    ingest([b], tmp_path / "b2.zarr", IngestOptions(rv=0.0), first_id=100, progress=False)
    assert spectra_cli.main(["merge", str(tmp_path / "a.zarr"), str(tmp_path / "b2.zarr"), "--out",
                             str(tmp_path / "m.zarr")]) == 0
    merged = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert list(merged["source_id"][:]) == [0, 1, 100]
    assert str(merged["file"][2]).endswith("b.fits") and merged.attrs["continuum_kind"] == "pseudo"
    first = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    np.testing.assert_array_equal(merged["flux"][:2], first["flux"][:])


def test_report_axes_name_the_parameter_and_its_unit(setup, tmp_path):
    from catalog.report import axis_label, make_report

    _, _, bundle, survey = setup
    out = tmp_path / "c.zarr"
    process_survey(survey, bundle, out, OPTIONS, progress=False)
    store = CatalogueStore.open(out)
    assert axis_label(store, "teff") == "T_eff [K]" and axis_label(store, "fe_h") == "[Fe/H] [dex]"
    assert axis_label(store, "vbroad_p16") == "v_broad [km/s]"
    make_report(out, tmp_path / "r")
    with pytest.raises(FileExistsError, match=r"--overwrite"):
        make_report(out, tmp_path / "r")
    make_report(out, tmp_path / "r", overwrite=True)
