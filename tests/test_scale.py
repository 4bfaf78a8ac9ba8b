"""Issue 14: survey scale. A catalogue whose files grow with shards, a run that survives damaged survey chunks,
resume that knows the survey's content, simulated surveys, streamed exports, TLS clusters."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from catalog.check import check_catalogue
from catalog.schema import catalogue_columns
from catalog.writers import CatalogueStore, export_fits, export_parquet
from runtime import cli as runtime_cli
from runtime.bundle import load_bundle
from runtime.pipeline import ProcessOptions, process_survey
from spectra import cli as spectra_cli
from spectra.contracts.flags import Flag
from spectra.stores.survey import make_survey, parse_snr
from spectra.stores.survey_reader import open_survey

OPTIONS = ProcessOptions(samples=64, seed=5, device="cpu")


@pytest.fixture(scope="module")
def setup(tiny_bundle, tmp_path_factory):
    tmp, grid, _, bundle = tiny_bundle
    here = tmp_path_factory.mktemp("scale")
    survey = make_survey(grid, parse_snr("50,250"), here / "survey.zarr", seed=1, chunk=16, progress=False)
    clean = here / "clean.zarr"
    process_survey(survey, bundle, clean, OPTIONS, chunk=32, progress=False)
    return tmp, grid, bundle, survey, clean


def _columns(path):
    store = CatalogueStore.open(path)
    return {name: store.column(name) for name in store.columns}


def _files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def test_a_four_million_row_catalogue_stays_under_ten_thousand_files(setup, tmp_path):
    _, _, bundle, _, _ = setup
    columns = catalogue_columns(load_bundle(bundle).manifest.raw["parameters"])
    n, shard = 4_000_000, 16_384
    store = CatalogueStore.create(tmp_path / "big.zarr", n, shard, columns, {})
    empty = _files(tmp_path / "big.zarr")
    values = {c.name: np.ones(shard, dtype=c.dtype) for c in columns}  # not the fill value: every file is written
    store.write_chunk(0, values)
    store.write_chunk(1, values)
    per_shard = (_files(tmp_path / "big.zarr") - empty) / 2
    assert len(columns) == 99 and per_shard == 5  # 4 value blocks + the done marker, whatever the column count
    total = empty + per_shard * store.n_chunks
    assert store.n_chunks == 245 and total <= 10_000
    np.testing.assert_array_equal(store.read_rows(shard - 2, shard + 2, ["source_id"])["source_id"], 1)


def _truncate_chunk(survey: Path, index: int) -> Path:
    chunk = survey / "flux" / "c" / str(index) / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 3])
    return chunk


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_survey_chunk_gives_flagged_rows_and_a_finished_run(setup, tmp_path, damage):
    _, _, bundle, survey, clean = setup
    broken = tmp_path / "broken.zarr"
    shutil.copytree(survey, broken)
    if damage == "truncated":
        _truncate_chunk(broken, 2)
    else:
        (broken / "flux" / "c" / "2" / "0").unlink()
    out = tmp_path / "c.zarr"
    code = runtime_cli.main(["process", "--survey", str(broken), "--bundle", str(bundle), "--out", str(out),
                             "--samples", "64", "--seed", "5", "--chunk", "32", "--quiet"])
    assert code == 0
    a, b = _columns(clean), _columns(out)
    bad = slice(32, 48)
    assert all(b["flags"][bad] & Flag.READ_FAILED) and b["flag_bad"][bad].all()
    assert np.isnan(b["teff"][bad]).all()
    np.testing.assert_array_equal(b["source_id"], a["source_id"])  # ids of the damaged chunk still read
    good = np.ones(a["teff"].size, dtype=bool)
    good[bad] = False
    for name in a:
        np.testing.assert_array_equal(a[name][good], b[name][good], err_msg=name)
    failures = CatalogueStore.open(out).attrs["read_failures"]
    assert len(failures) == 1 and "survey chunk 2 (rows 32-47)" in failures[0]
    result = check_catalogue(out, broken)
    assert result.ok, result.problems
    assert "16 rows flagged READ_FAILED" in result.notes[0]
    # resume completes only what is missing: a finished catalogue has nothing left to do
    report = process_survey(broken, bundle, out, OPTIONS, chunk=32, resume=True, progress=False)
    assert report.chunks_run == 0


def test_resume_refuses_a_catalogue_made_from_other_survey_content(setup, tmp_path):
    _, grid, bundle, _, _ = setup
    survey = make_survey(grid, parse_snr("100"), tmp_path / "s.zarr", seed=1, chunk=20, progress=False)
    out = tmp_path / "c.zarr"
    process_survey(survey, bundle, out, OPTIONS, chunk=20, progress=False)
    store = CatalogueStore.open(out, mode="r+")
    store.root["_done"][1] = False  # interrupted
    make_survey(grid, parse_snr("100"), survey, seed=2, chunk=20, progress=False, overwrite=True)  # same path
    with pytest.raises(ValueError, match=r"survey_fingerprint"):
        process_survey(survey, bundle, out, OPTIONS, resume=True, progress=False)


def test_simulated_survey_reads_like_a_zarr_one(setup, tmp_path):
    _, grid, bundle, _, _ = setup
    sim = tmp_path / "sim.json"
    assert spectra_cli.main(["simulate", "--grid", str(grid), "--n", "90", "--snr", "paper", "--seed", "3",
                             "--chunk", "32", "--out", str(sim)]) == 0
    reader = open_survey(sim)
    block = reader.read_rows(10, 20)
    again = open_survey(sim).read_rows(15, 16)
    np.testing.assert_array_equal(block.flux[5], again.flux[0])
    assert list(block.source_id) == list(range(10, 20)) and (block.snr > 0).all()
    one = process_survey(sim, bundle, tmp_path / "a.zarr", OPTIONS, chunk=30, progress=False)
    process_survey(sim, bundle, tmp_path / "b.zarr", OPTIONS, workers=2, chunk=45, progress=False)
    a, b = _columns(tmp_path / "a.zarr"), _columns(tmp_path / "b.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert one.n_rows == 90 and np.isfinite(a["teff"]).all()
    assert check_catalogue(tmp_path / "a.zarr", sim).ok


def test_streamed_exports_match_the_catalogue(setup, tmp_path):
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from astropy.table import Table

    _, _, _, _, clean = setup
    cols = _columns(clean)
    table = pq.read_table(export_parquet(clean, tmp_path / "c.parquet"))
    assert table.num_rows == 120 and table.schema.field("teff").metadata[b"unit"] == b"K"
    assert pq.ParquetFile(tmp_path / "c.parquet").num_row_groups == 4  # one per shard
    np.testing.assert_array_equal(table.column("teff").to_numpy(), cols["teff"])
    folder = export_parquet(clean, tmp_path / "dataset", dataset=True, rows_per_file=64)
    assert len(list(folder.glob("part-*.parquet"))) == 2
    for frame in (ds.dataset(folder).to_table().to_pandas(), pd.read_parquet(folder),
                  dd.read_parquet(str(folder)).compute()):
        np.testing.assert_array_equal(np.sort(frame["source_id"].to_numpy()), np.sort(cols["source_id"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fits_table = Table.read(export_fits(clean, tmp_path / "c.fits"), hdu="CATALOGUE")
    for name in ("source_id", "teff", "fe_h_p16", "flags", "flag_bad"):
        np.testing.assert_array_equal(np.asarray(fits_table[name]), cols[name], err_msg=name)


def _certificates(folder: Path) -> dict[str, Path]:
    """A throw-away CA and one certificate for 127.0.0.1 signed by it (scheduler, workers and client)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def test_tls_scheduler_on_loopback_gives_the_same_catalogue(setup, tmp_path):
    pytest.importorskip("cryptography")
    from distributed import LocalCluster, Security

    _, _, bundle, survey, clean = setup
    certs = _certificates(tmp_path)
    security = Security(tls_ca_file=str(certs["ca"]), tls_scheduler_cert=str(certs["cert"]),
                        tls_scheduler_key=str(certs["key"]), tls_worker_cert=str(certs["cert"]),
                        tls_worker_key=str(certs["key"]), tls_client_cert=str(certs["cert"]),
                        tls_client_key=str(certs["key"]), require_encryption=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, protocol="tls", host="127.0.0.1",
                      security=security, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        out = tmp_path / "tls.zarr"
        code = runtime_cli.main(["process", "--survey", str(survey), "--bundle", str(bundle), "--out", str(out),
                                 "--samples", "64", "--seed", "5", "--chunk", "32", "--quiet", "--scheduler",
                                 address, "--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]),
                                 "--tls-key", str(certs["key"])])
        assert code == 0
        # without the certificates the TLS scheduler is refused before any output
        code = runtime_cli.main(["process", "--survey", str(survey), "--bundle", str(bundle), "--out",
                                 str(tmp_path / "no.zarr"), "--quiet", "--scheduler", address])
        assert code == 2 and not (tmp_path / "no.zarr").exists()
    a, b = _columns(clean), _columns(out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
