"""Issue 22, rough edges 1, 5 and 8: what a new user hit on the command line. Each test fails on the code before.

1. ``catalog --help`` crashed on a bare "%" in a help text: every help of every command is formatted here.
5. ``catalog check`` printed a text line after its JSON; ``catalog export`` needed ``--format`` beside a suffix that
   says it and refused the ``.fits.gz`` the README lists; the README's ``Table.read`` recipe warned.
8. ``training evaluate``, ``saliency`` and ``emulator-evaluate`` wrote into any existing folder; ``export onnx``
   stored the paper's NLTE-network bias coefficients in every bundle by default.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import inspect
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from catalog import cli as catalog_cli
from catalog.writers import CatalogueStore, export_format
from spectra.common.outputs import OutputExistsError
from spectra.common.scratch import SCRATCH_SUFFIX

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLIS = ("spectra", "training", "export", "runtime", "catalog")


# ------------------------------------------------------------------------------------------ 1: --help
def _parsers(parser: argparse.ArgumentParser, path: str):
    """``(command path, parser)`` for ``parser`` and every sub-command under it, at any depth."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


@pytest.mark.parametrize("program", CLIS)
def test_every_help_of_every_command_formats(program):
    """argparse %-formats help texts only when help is asked for: a bare "68 % interval" passed every other test
    and crashed ``catalog --help`` (TypeError). Format them all, as ``--help`` does."""
    parser = importlib.import_module(f"{program}.cli").build_parser()
    seen = []
    for path, sub in _parsers(parser, program):
        text = sub.format_help()
        assert text.startswith("usage:"), path
        seen.append(path)
    assert len(seen) > 1  # the sub-commands were reached


def test_catalog_show_help_keeps_its_percent_sign():
    """Escaping for argparse must not show "%%" to the reader, in the list of commands or the command's own page."""
    parser = catalog_cli.build_parser()
    assert "68 % interval" in " ".join(parser.format_help().split())
    show = dict(_parsers(parser, "catalog"))["catalog show"]
    assert "68 % interval" in " ".join(show.format_help().split())


# -------------------------------------------------------------------------------- 5: catalog commands
@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """A finished catalogue of the packaged observed example (3 rows, default model, 64 samples: seconds)."""
    from runtime.packaged import default_bundle, unpack_examples
    from runtime.pipeline import ProcessOptions, process_survey

    tmp = tmp_path_factory.mktemp("rough")
    survey = next(p for p in unpack_examples(tmp) if p.name == "observed.zarr")
    out = tmp / "c.zarr"
    process_survey(survey, default_bundle(), out, ProcessOptions(samples=64, device="cpu"), progress=False)
    return out


def test_catalog_check_stdout_is_one_json_document(catalogue, capsys):
    """``catalog check ... > check.json`` (scripts/demo.sh does it) must give a file that parses: the verdict line
    used to follow the JSON on stdout."""
    assert catalog_cli.main(["check", "--catalog", str(catalogue)]) == 0
    captured = capsys.readouterr()
    counts = json.loads(captured.out)  # the whole of stdout: "Extra data" before the fix
    assert counts["rows"] == CatalogueStore.open(catalogue).n_rows
    assert f"{catalogue}: OK" in captured.err


@pytest.mark.parametrize("name,fmt", [("c.parquet", "parquet"), ("c.pq", "parquet"), ("c.fits", "fits"),
                                      ("c.fit", "fits"), ("c.FITS.GZ", "fits")])
def test_catalog_export_takes_the_format_from_the_suffix(catalogue, tmp_path, capsys, name, fmt):
    out = tmp_path / name
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{out}: {fmt} export written, ")
    assert out.is_file() and export_format(out) == fmt
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(SCRATCH_SUFFIX)]


def test_export_name_without_suffix_needs_format_parquet_dataset(catalogue, tmp_path, capsys):
    """A name without a suffix may be a misspelt file name: it is a dataset folder only when asked for."""
    out = tmp_path / "ds"
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--format parquet-dataset" in err and not out.exists()
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--format", "parquet-dataset", "--out",
                             str(out)]) == 0
    assert (out / "part-00000.parquet").is_file()
    assert catalog_cli.main(["export", "--catalog", str(catalogue), "--format", "fits", "--out",
                             str(tmp_path / "c.parquet")]) == 2  # a suffix that disagrees is still refused
    assert "needs a file name ending in" in capsys.readouterr().err


def test_fits_gz_export_is_the_fits_file_compressed(catalogue, tmp_path):
    from astropy.table import Table

    from catalog.writers import export_fits

    plain = export_fits(catalogue, tmp_path / "c.fits")
    packed = export_fits(catalogue, tmp_path / "c.fits.gz")
    assert packed.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = Table.read(packed, hdu="CATALOGUE")
    store = CatalogueStore.open(catalogue)
    assert table.colnames == store.columns and len(table) == store.n_rows
    np.testing.assert_array_equal(table["teff"], store.column("teff"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(SCRATCH_SUFFIX)]


def test_readme_fits_recipe_reads_without_a_warning(catalogue, tmp_path):
    """The README's own ``Table.read`` call, run with warnings as errors: a plain ``Table.read(path)`` warns that
    the file holds several tables (it still reads the catalogue, the first one)."""
    from astropy.table import Table
    from astropy.utils.exceptions import AstropyUserWarning

    from catalog.writers import export_fits

    text = " ".join(README.read_text().split())
    recipe = re.search(r"reads with `astropy\.table\.Table\.read(?:\(path(?:, hdu=\"(\w+)\")?\))?` without a "
                       "warning", text)
    assert recipe, "the README no longer says how to read the FITS export"
    options = {"hdu": recipe.group(1)} if recipe.group(1) else {}  # the old README gave no hdu=
    path = str(export_fits(catalogue, tmp_path / "c.fits"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = Table.read(path, **options)
    assert table.colnames == CatalogueStore.open(catalogue).columns
    with pytest.warns(AstropyUserWarning, match="multiple tables"):
        assert Table.read(path).colnames == table.colnames  # without hdu=: the catalogue, with a warning



def _expected_column(store: CatalogueStore, name: str) -> np.ndarray:
    values = store.column(name)
    return np.asarray(values.tolist(), dtype=str) if values.dtype.kind in "OT" else values


@pytest.mark.parametrize("dataset", [False, True], ids=["file", "dataset-part"])
def test_astropy_reads_the_parquet_export_with_units_and_descriptions(catalogue, tmp_path, dataset):
    """Audit of issue 22: astropy's Parquet reader takes units and descriptions from the schema's
    ``table_meta_yaml`` (and text widths from ``table::len::<name>``), not from the field metadata the export
    wrote: ``Table.read`` gave every column without unit or description and warned for every text column."""
    import astropy.units as u
    import pandas as pd
    import pyarrow.parquet as pq
    from astropy.table import Table

    from catalog.writers import export_parquet

    out = export_parquet(catalogue, tmp_path / ("ds" if dataset else "c.parquet"), dataset=dataset)
    path = out / "part-00000.parquet" if dataset else out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = Table.read(path, format="parquet")
    store = CatalogueStore.open(catalogue)
    assert table.colnames == store.columns and len(table) == store.n_rows
    assert {"dex", "km/s", "K"} <= {store.column_info(n)["unit"] for n in store.columns}  # the units are exercised
    for name in store.columns:
        info = store.column_info(name)
        assert table[name].description == info["description"], name
        assert (table[name].unit == u.Unit(info["unit"])) if info["unit"] else table[name].unit is None, name
        np.testing.assert_array_equal(table[name], _expected_column(store, name), err_msg=name)
        assert table[name].dtype.kind == _expected_column(store, name).dtype.kind, name
    assert table.meta["bundle_sha256"] == store.attrs["bundle_sha256"] and table.meta["rows_exported"] == store.n_rows
    frame = pd.read_parquet(out)  # the other readers are unchanged
    assert list(frame.columns) == store.columns
    np.testing.assert_array_equal(frame["teff"], store.column("teff"))
    assert pq.read_schema(path).field("teff").metadata[b"unit"] == b"K"

# ------------------------------------------------------------------------------ 8: training outputs
def _users_folder(tmp_path: Path, name: str = "mine") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "report.md").write_text("my own notes")
    return folder


@pytest.mark.parametrize("command", ["evaluate", "saliency", "emulator-evaluate"])
def test_training_reports_refuse_a_folder_they_did_not_make(tmp_path, capsys, command):
    """Checked before anything is read: the run and grid here do not even exist."""
    from training import cli as training_cli

    folder = _users_folder(tmp_path)
    args = [command, "--run", str(tmp_path / "no-run"), "--grid", str(tmp_path / "no-grid.h5"), "--out", str(folder)]
    assert training_cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{folder} exists: add --overwrite" in err, err
    assert training_cli.main([*args, "--overwrite"]) == 2  # --overwrite does not open someone else's folder either
    assert "refusing to write into it even with --overwrite" in capsys.readouterr().err
    assert (folder / "report.md").read_text() == "my own notes" and sorted(p.name for p in folder.iterdir()) == [
        "report.md"]


def test_claim_report_folder_rules(tmp_path):
    from spectra.common.outputs import claim_report_folder

    new = claim_report_folder(tmp_path / "a" / "new", "report", "metrics.json")
    assert new.is_dir() and not any(new.iterdir())  # created, parents too
    assert claim_report_folder(new, "report", "metrics.json") == new  # an empty folder holds nothing to lose
    (new / "metrics.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="exists: add --overwrite"):
        claim_report_folder(new, "report", "metrics.json")
    assert claim_report_folder(new, "report", "metrics.json", overwrite=True) == new  # an earlier report of ours
    mine = _users_folder(tmp_path)
    with pytest.raises(OutputExistsError, match=r"holds no metrics\.json"):
        claim_report_folder(mine, "report", "metrics.json", overwrite=True)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        claim_report_folder(file, "report", "metrics.json", overwrite=True)
    assert file.read_text() == "x" and (mine / "report.md").read_text() == "my own notes"


def test_export_onnx_stores_no_bias_correction_unless_asked(tiny_bundle, tmp_path, monkeypatch):
    """Table B.3 was fitted to the paper's NLTE network: stored by default, ``runtime process --bias-correction``
    applied it to any model."""
    from export import cli as export_cli
    from export.onnx import export_bundle
    from runtime.bundle import load_bundle

    assert inspect.signature(export_bundle).parameters["bias_correction"].default is None
    _, _, run, _ = tiny_bundle
    assert load_bundle(export_bundle(run, tmp_path / "plain")).manifest.bias_correction is None
    paper = load_bundle(export_bundle(run, tmp_path / "paper", bias_correction="paper")).manifest.bias_correction
    assert "Table B.3" in paper["source"] and paper["applied_by_default"] is False
    seen = []
    monkeypatch.setattr("export.onnx.export_bundle", lambda *a, **kw: seen.append(kw["bias_correction"]) or a[1])
    for extra in ([], ["--bias-correction", "paper"], ["--bias-correction", "none"]):
        assert export_cli.main(["onnx", "--run", str(run), "--out", str(tmp_path / "x"), *extra]) == 0
    assert seen == [None, "paper", None]
