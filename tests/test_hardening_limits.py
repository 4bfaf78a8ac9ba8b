"""Issue 21, items 6, 7 and part of 4: memory set by data, not metadata; numbers checked at the door; no overwrite.

Hostile inputs are crafted here without ever holding them: a Zarr chunk is one zstd frame of run-length blocks
(4 bytes per 128 KiB), so a 2 GB chunk is a 62 kB file, and a tar member of zeros is gzip-compressed on the fly.
Memory is measured as the peak RSS of a child process (its ``VmHWM``), so the tests check what a run costs, not
how long it takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from runtime import cli as runtime_cli
from spectra import cli as spectra_cli
from spectra.contracts.survey import MAX_CHUNK_BYTES, MAX_ROWS
from spectra.stores.survey import SURVEY_FORMAT, make_survey, parse_snr
from spectra.stores.survey_reader import ZarrSurvey, open_survey
from spectra.synth.atmospheres import MAX_MOD_BYTES, AtmosphereGrid, default_grid
from spectra.wavegrid import hr_grid

ROOT = Path(__file__).resolve().parents[1]
PIXELS = 25_200
#: what a refused run may cost (interpreter, numpy, zarr, onnxruntime and the bundle's manifest); the crafted
#: inputs below cost 600 MB (tar) to 2 GB (survey) on the code before the fix
PEAK_RSS_MB = 400
#: what a run that finishes (ONNX sessions made, every row flagged) may cost; 340 MB measured, 10 GB before the fix
RUN_RSS_MB = 700


# ----------------------------------------------------------------------------------------------- crafting
def zstd_rle_frame(nbytes: int, value: int = 0x3F) -> bytes:
    """One zstd frame that decodes to ``nbytes`` bytes equal to ``value``, declared in its header (RLE blocks)."""
    wide = nbytes >= 2**32  # frame header: single segment, content size in 8 or 4 bytes
    frame = bytearray(b"\x28\xb5\x2f\xfd" + bytes([0xE0 if wide else 0xA0]))
    frame += nbytes.to_bytes(8 if wide else 4, "little")
    remaining = nbytes
    while remaining:
        size = min(128 * 1024, remaining)
        remaining -= size
        frame += ((remaining == 0) | (1 << 1) | (size << 3)).to_bytes(3, "little") + bytes([value])
    return bytes(frame)


def crafted_survey(path: Path, rows: int, chunk_rows: int, flux_chunk: bool = True, id_chunk: int | None = None,
                   write_ids: bool = True) -> Path:
    """A survey whose ``flux`` declares chunks of ``chunk_rows`` x 25 200 float32; with ``flux_chunk`` its first
    chunk is stored (a few kB on disk that decode to the whole declared chunk)."""
    root = zarr.open_group(str(path), mode="w")
    flux = root.create_array("flux", shape=(rows, PIXELS), chunks=(chunk_rows, PIXELS), dtype="f4")
    root.create_array("snr", shape=(rows,), chunks=(id_chunk or 256,), dtype="f4")
    ids = root.create_array("source_id", shape=(rows,), chunks=(id_chunk or 256,), dtype="i8")
    root.create_array("wavelength", data=hr_grid().wave)
    root.attrs.update(format=SURVEY_FORMAT, continuum_kind="pseudo")
    if write_ids:  # all ids of a small survey; the first 10 000 of a claimed big one
        n = rows if rows <= 100_000 else 10_000
        ids[:n] = np.arange(n) + 1
        root["snr"][:n] = 100.0
    if flux_chunk:
        (path / "flux" / "c" / "0").mkdir(parents=True, exist_ok=True)
        (path / "flux" / "c" / "0" / "0").write_bytes(zstd_rle_frame(chunk_rows * PIXELS * 4))
        assert flux.chunks == (chunk_rows, PIXELS)
    return path


class _Lines:
    """A text file of ``size`` bytes of 80-character lines that is never held in memory (for ``TarFile.addfile``)."""

    LINE = b"x" * 79 + b"\n"

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return (self.LINE * (n // len(self.LINE) + 1))[:n]


def tar_with_member(path: Path, name: str, size: int, extra: int = 0) -> Path:
    """A .tar.gz holding ``name`` of ``size`` bytes of text (after ``extra`` empty .txt members)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for k in range(extra):
            tar.addfile(tarfile.TarInfo(f"note{k}.txt"), _Lines(0))
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, _Lines(size))
    return path


def run_measured(module: str, args: list[str], timeout: float = 300) -> tuple[int, str, float]:
    """(exit status, stderr, peak RSS in MB) of ``python -m module args`` in a child process.

    The peak is the child's own ``VmHWM`` (Linux): ``ru_maxrss`` would include the RSS of this (pytest) process,
    which Linux carries across the child's ``exec``."""
    code = ("import resource, runpy, sys\n"
            "def peak():\n"
            "    try:\n"
            "        with open('/proc/self/status') as fh:\n"
            "            return next(int(line.split()[1]) for line in fh if line.startswith('VmHWM'))\n"
            "    except (OSError, StopIteration):\n"
            "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"sys.argv = [{module!r}] + {args!r}\n"
            "try:\n"
            f"    runpy.run_module({module!r}, run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    status = exc.code or 0\n"
            "else:\n"
            "    status = 0\n"
            "print('PEAK_RSS_KB', peak(), file=sys.stderr)\n"
            "sys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = done.stderr.strip().splitlines()
    peak = [float(line.split()[1]) / 1024 for line in lines if line.startswith("PEAK_RSS_KB")]
    errors = "\n".join(line for line in lines if not line.startswith(("PEAK_RSS_KB", "runtime process: using")))
    return done.returncode, errors, peak[0] if peak else float("nan")


# --------------------------------------------------------------------------------- (6) survey memory limits
def test_a_survey_chunk_above_the_limit_is_refused_in_one_line_with_bounded_memory(tmp_path):
    """The probe: a 62 kB survey whose flux declares (and stores) one 20 000-row chunk, 2 GB when decoded."""
    survey = crafted_survey(tmp_path / "big-chunk.zarr", rows=300, chunk_rows=20_000)
    assert sum(p.stat().st_size for p in survey.rglob("*") if p.is_file()) < 200_000
    out = tmp_path / "cat.zarr"
    status, errors, peak = run_measured("runtime.cli", ["process", "--survey", str(survey), "--out", str(out),
                                                        "--samples", "32", "--chunk", "32", "--quiet"])
    assert status == 2, errors
    assert len(errors.splitlines()) == 1 and "Traceback" not in errors
    assert f"{survey}/flux" in errors and "(20000, 25200)" in errors and "256 MiB" in errors
    assert peak < PEAK_RSS_MB, f"peak RSS {peak:.0f} MB"
    assert not out.exists()


def test_a_chunk_whose_stream_claims_more_than_its_shape_is_a_failed_chunk_not_an_allocation(tmp_path):
    """Within the limit on chunk shapes, a 62 kB chunk file whose zstd frame declares 2 GB (the chunk holds 26 MB)
    used to be decoded at the declared size (10 GB peak in this run) before the reshape failed."""
    from catalog.writers import CatalogueStore

    survey = crafted_survey(tmp_path / "liar.zarr", rows=256, chunk_rows=256)
    (survey / "flux" / "c" / "0" / "0").write_bytes(zstd_rle_frame(20_000 * PIXELS * 4))
    out = tmp_path / "cat.zarr"
    status, errors, peak = run_measured("runtime.cli", ["process", "--survey", str(survey), "--out", str(out),
                                                        "--samples", "32", "--quiet"])
    assert status == 0, errors
    assert peak < RUN_RSS_MB, f"peak RSS {peak:.0f} MB"
    failures = CatalogueStore.open(out).attrs["read_failures"]
    claim = "a zstd stream that decodes to 2016000000 bytes, more than the 25804800 of a chunk of shape (256, 25200)"
    assert failures and all(claim in failure for failure in failures)  # one per catalogue shard reading the chunk


def _rle_frame_without_size(nbytes: int) -> bytes:
    """A zstd frame of ``nbytes`` bytes 0x3F that does not declare its size (128 KiB window)."""
    frame, remaining = bytearray(_ZSTD_HEADERLESS), nbytes
    while remaining:
        size = min(128 * 1024, remaining)
        remaining -= size
        frame += ((remaining == 0) | (1 << 1) | (size << 3)).to_bytes(3, "little") + b"\x3f"
    return bytes(frame)


_ZSTD_HEADERLESS = b"\x28\xb5\x2f\xfd\x00\x38"  # no content size, not single segment, window 2**17


def test_compressed_streams_are_checked_against_the_chunk_shape(tmp_path):
    import gzip

    from zarr.codecs import GzipCodec

    survey = crafted_survey(tmp_path / "s.zarr", rows=8, chunk_rows=4)
    chunk = survey / "flux" / "c" / "1" / "0"
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(_rle_frame_without_size(4 * PIXELS * 4))  # valid data, but its size is not declared
    block = open_survey(survey).read_rows(0, 8)
    assert not block.failed[:4].any() and block.failed[4:].all()
    assert "a zstd stream that decodes to an undeclared number of bytes" in block.failures[0][2]
    root = zarr.open_group(str(survey), mode="r+")
    del root["flux"]
    root.create_array("flux", shape=(8, PIXELS), chunks=(4, PIXELS), dtype="f4", compressors=GzipCodec())
    (survey / "flux" / "c" / "0").mkdir(parents=True)
    (survey / "flux" / "c" / "0" / "0").write_bytes(gzip.compress(bytes(64 * 2**20), compresslevel=1))
    block = open_survey(survey).read_rows(0, 8)
    assert block.failed.all()
    assert "a gzip stream that decodes to more than that bytes, more than the 403200" in block.failures[0][2]


def test_arrays_the_checked_codecs_do_not_cover_are_refused(tmp_path):
    from zarr.codecs.numcodecs import BZ2

    survey = crafted_survey(tmp_path / "s.zarr", rows=8, chunk_rows=4, flux_chunk=False)
    root = zarr.open_group(str(survey), mode="r+")
    del root["snr"]
    root.create_array("snr", shape=(8,), chunks=(4,), dtype="f4", compressors=BZ2())
    with pytest.raises(ValueError, match=r"s.zarr/snr: codec\(s\) numcodecs.bz2, whose decoded size cannot be"):
        open_survey(survey)
    old = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    for name, shape in (("flux", (8, PIXELS)), ("snr", (8,)), ("source_id", (8,)), ("wavelength", (PIXELS,))):
        old.create_array(name, shape=shape, chunks=shape, dtype="i8" if name == "source_id" else "f4")
    with pytest.raises(ValueError, match=r"v2.zarr/\w+: Zarr format 2, expected 3"):
        open_survey(tmp_path / "v2.zarr")


@pytest.mark.parametrize(("array", "shape", "what"), [
    ("flux", (100_000, PIXELS), "flux: chunks of shape (100000, 25200)"),          # a declared 10 GB chunk
    ("source_id", (2**26,), "source_id: chunks of shape (67108864,)"),              # 512 MiB of ids
])
def test_any_array_whose_chunks_decode_above_the_limit_is_refused(tmp_path, array, shape, what):
    path = crafted_survey(tmp_path / "s.zarr", rows=256, chunk_rows=256, flux_chunk=False)
    root = zarr.open_group(str(path), mode="r+")
    dtype = root[array].dtype
    del root[array]
    root.create_array(array, shape=root["snr"].shape if array != "flux" else (256, PIXELS), chunks=shape,
                      dtype=dtype)  # nothing written: the metadata alone must be refused
    with pytest.raises(ValueError, match=r"MAX_CHUNK_BYTES") as info:
        open_survey(path)
    assert what in str(info.value) and "\n" not in str(info.value)


def test_sharded_arrays_are_limited_by_their_inner_chunks_and_index(tmp_path):
    path = crafted_survey(tmp_path / "s.zarr", rows=256, chunk_rows=256, flux_chunk=False)
    root = zarr.open_group(str(path), mode="r+")
    del root["flux"]
    root.create_array("flux", shape=(256, PIXELS), chunks=(64, PIXELS), shards=(20_480, PIXELS), dtype="f4")
    assert open_survey(path).n == 256  # 6.5 MB inner chunks in 2 GB shards: rows are read chunk by chunk
    del root["flux"]
    root.create_array("flux", shape=(256, PIXELS), chunks=(4_096, PIXELS), shards=(4_096, PIXELS), dtype="f4")
    with pytest.raises(ValueError, match=r"flux: chunks of shape \(4096, 25200\)"):
        open_survey(path)
    del root["flux"]
    root.create_array("flux", shape=(256, PIXELS), chunks=(64, PIXELS), dtype="f4")
    del root["snr"]
    root.create_array("snr", shape=(256,), chunks=(1,), shards=(2**25,), dtype="f4")
    with pytest.raises(ValueError, match=r"snr: shards of shape \(33554432,\) hold 33554432 chunks of shape "
                                         r"\(1,\), an index of 512 MiB"):
        open_survey(path)


def test_absurd_row_counts_are_refused_before_any_per_row_work(tmp_path, capsys):
    """10**12 claimed rows used to end in an uncaught MemoryError; 10**8 rows of 1 stored chunk in hours of checks."""
    huge = crafted_survey(tmp_path / "huge.zarr", rows=10**12, chunk_rows=256, flux_chunk=False, write_ids=False)
    out = tmp_path / "cat.zarr"
    assert runtime_cli.main(["process", "--survey", str(huge), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{huge}/flux: declares 1000000000000 rows, more than the {MAX_ROWS}" in err and not out.exists()
    claimed = crafted_survey(tmp_path / "claimed.zarr", rows=10**8, chunk_rows=256, flux_chunk=False, id_chunk=1000)
    with pytest.raises(ValueError, match=r"claimed.zarr/source_id: declares 100000000 rows in 100000 chunk file\(s\) "
                                         r"of 1000 rows but 10 are stored"):
        ZarrSurvey(claimed)


@pytest.mark.parametrize(("array", "shape", "what"), [
    ("ingest_flags", (10,), r"ingest_flags: shape \(10,\), expected \(256,\) to match flux"),
    ("wavelength", (25_199,), r"wavelength: shape \(25199,\), expected \(25200,\)"),
])
def test_arrays_that_disagree_with_flux_are_refused(tmp_path, array, shape, what):
    path = crafted_survey(tmp_path / "s.zarr", rows=256, chunk_rows=256, flux_chunk=False)
    root = zarr.open_group(str(path), mode="r+")
    if array in root:
        del root[array]
    root.create_array(array, shape=shape, chunks=shape, dtype="f8")
    with pytest.raises(ValueError, match=what):
        open_survey(path)


def test_a_valid_survey_still_opens_and_a_survey_runtime_would_refuse_is_not_written(fake_grid, tmp_path):
    survey = make_survey(fake_grid, parse_snr("50,250"), tmp_path / "ok.zarr", chunk=1, progress=False)
    reader = open_survey(survey)  # chunk 1: the chunk holding only id 0 is not stored by Zarr, and that is fine
    assert not (survey / "source_id" / "c" / "0").exists()
    assert reader.n == 10 and list(reader.source_ids()[0]) == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11]
    most = MAX_CHUNK_BYTES // (4 * PIXELS)
    with pytest.raises(ValueError, match=rf"--chunk {most + 1}: .* use at most {most} rows per chunk"):
        make_survey(fake_grid, parse_snr("250"), tmp_path / "big.zarr", chunk=most + 1, progress=False)
    assert not (tmp_path / "big.zarr").exists()


def test_a_simulated_survey_claiming_absurd_sizes_is_refused(fake_grid, tmp_path):
    assert spectra_cli.main(["simulate", "--grid", str(fake_grid), "--n", "5", "--out", str(tmp_path / "s.json")]) == 0
    spec = json.loads((tmp_path / "s.json").read_text())
    for key, value in (("n", 10**12), ("seed", -1), ("chunk", 0)):
        (tmp_path / "bad.json").write_text(json.dumps({**spec, key: value}))
        with pytest.raises(ValueError, match=rf"bad.json: {key} {value}, expected an integer in"):
            open_survey(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------- (6) tar archive limits
def test_a_tar_member_above_the_limit_is_refused_from_its_declared_size(tmp_path):
    """The probe: a tar.gz of about 1 MB whose one .mod member is 256 MiB of text (1 GiB in the issue)."""
    bomb = tar_with_member(tmp_path / "bomb.tar.gz", "marcs/big.mod", 256 * 2**20)
    assert bomb.stat().st_size < 4_000_000
    out = tmp_path / "grid.npz"
    status, errors, peak = run_measured("spectra.cli", ["atmospheres", "pack", "--source", str(bomb), "--out",
                                                        str(out)])
    assert status == 2 and len(errors.splitlines()) == 1, errors
    assert f"{bomb}:marcs/big.mod: {256 * 2**20} bytes, more than the {MAX_MOD_BYTES}" in errors
    assert peak < PEAK_RSS_MB, f"peak RSS {peak:.0f} MB"
    assert not out.exists()


def test_model_files_and_members_are_counted_and_sized(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    with open(folder / "huge.mod", "wb") as fh:  # sparse: 2 MiB declared, nothing written
        fh.truncate(2 * MAX_MOD_BYTES)
    with pytest.raises(ValueError, match=rf"huge.mod: {2 * MAX_MOD_BYTES} bytes, more than the {MAX_MOD_BYTES}"):
        AtmosphereGrid.from_path(folder)
    import spectra.synth.atmospheres as atmospheres

    monkeypatch.setattr(atmospheres, "MAX_TAR_MEMBERS", 5)
    many = tar_with_member(tmp_path / "many.tar.gz", "a.mod", 10, extra=10)
    with pytest.raises(ValueError, match=r"many.tar.gz: more than 5 archive members"):
        AtmosphereGrid.from_path(many)
    (tmp_path / "broken.tar.gz").write_bytes(many.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"broken.tar.gz: (damaged|not a readable) tar archive"):
        AtmosphereGrid.from_path(tmp_path / "broken.tar.gz")


# ------------------------------------------------------------------------------------ (7) numbers at the door
@pytest.fixture
def l1_file(fake_grid, tmp_path) -> Path:
    out = tmp_path / "star.fits"
    assert spectra_cli.main(["example-l1", "--grid", str(fake_grid), "--rows", "0", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("value", ["-1", "-5", str(2**63)])
@pytest.mark.parametrize("command", ["grid", "survey", "rotate-grid", "simulate", "example-l1", "import-tsfitpy",
                                     "ingest"])
def test_every_seed_and_first_id_is_checked_at_the_door(command, value, fake_grid, l1_file, tmp_path, capsys):
    out = tmp_path / "out"
    option = "--first-id" if command == "ingest" else "--seed"
    argv = {
        "grid": ["grid", "--n", "2", "--out", f"{out}.h5", "--quiet"],
        "survey": ["survey", "--grid", str(fake_grid), "--out", f"{out}.zarr", "--quiet"],
        "rotate-grid": ["rotate-grid", str(fake_grid), "--out", f"{out}.h5", "--quiet"],
        "simulate": ["simulate", "--grid", str(fake_grid), "--n", "4", "--out", f"{out}.json"],
        "example-l1": ["example-l1", "--grid", str(fake_grid), "--out", f"{out}.fits"],
        "import-tsfitpy": ["import-tsfitpy", str(tmp_path), "--out", f"{out}.h5", "--quiet"],
        "ingest": ["ingest", str(l1_file), "--out", f"{out}.zarr", "--quiet"],
    }[command] + [option, value]
    assert spectra_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"spectra {command}: error: {option} must be an integer in [0, 2**63), got {int(value)}"
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("value", ["-1", str(2**63)])
def test_runtime_process_refuses_a_bad_seed_before_anything(tmp_path, value, capsys):
    out = tmp_path / "cat.zarr"
    assert runtime_cli.main(["process", "--survey", str(tmp_path / "none.zarr"), "--out", str(out), "--seed",
                             value, "--quiet"]) == 2
    assert "--seed must be an integer" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("bad", [-5, -1])
def test_runtime_process_refuses_negative_source_ids_before_the_catalogue(fake_grid, tmp_path, capsys, bad):
    survey = make_survey(fake_grid, parse_snr("250"), tmp_path / "s.zarr", chunk=2, progress=False)
    zarr.open_group(str(survey), mode="r+")["source_id"][3] = bad
    out = tmp_path / "cat.zarr"
    assert runtime_cli.main(["process", "--survey", str(survey), "--out", str(out), "--samples", "32",
                             "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{survey}/source_id: row 3 holds {bad}, expected an integer in [0, 2**63)" in err
    assert not out.exists()


# ------------------------------------------------------------------------- (4) atmospheres pack never overwrites
def test_atmospheres_pack_replaces_an_existing_file_only_with_overwrite(tmp_path, capsys):
    source = ROOT / "spectra" / "data" / "marcs_grid.npz"
    out = tmp_path / "grid.npz"
    out.write_bytes(b"precious")
    assert spectra_cli.main(["atmospheres", "pack", "--source", str(source), "--out", str(out)]) == 2
    assert f"{out} exists: add --overwrite" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert spectra_cli.main(["atmospheres", "pack", "--source", str(source), "--out", str(out), "--overwrite"]) == 0
    assert len(AtmosphereGrid.load(out)) == len(default_grid())
    (tmp_path / "folder.npz").mkdir()
    assert spectra_cli.main(["atmospheres", "pack", "--source", str(source), "--out", str(tmp_path / "folder.npz"),
                             "--overwrite"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert spectra_cli.main(["atmospheres", "pack", "--source", str(source), "--out", str(tmp_path / "x")]) == 2
    assert "expected a .npz file" in capsys.readouterr().err and not list(tmp_path.glob("x*"))
