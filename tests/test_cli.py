"""The spectra CLI end to end: errors, a tiny grid, interruption and resume (slow: PySME)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from spectra.cli import main
from spectra.stores.gridstore import GridReader


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "spectra.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_out_of_bounds_parameter_is_refused(capsys):
    assert main(["synth", "--teff", "9000", "--logg", "4", "--feh", "0", "--out", "x.h5"]) == 2
    assert "T_eff = 9000 K is outside the training bounds [4000, 7000]" in capsys.readouterr().err


def test_missing_atmosphere_folder_and_corrupt_linelist(tmp_path, capsys):
    args = ["synth", "--teff", "5000", "--logg", "4", "--feh", "0", "--out", str(tmp_path / "s.h5")]
    assert main([*args, "--atmospheres", str(tmp_path / "no_such_dir")]) == 2
    assert "no_such_dir does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("species,wlcent,excit\nFe 1,abc,1.0\n")
    assert main([*args, "--linelist", str(bad)]) == 2
    assert "bad.csv: line list lacks column(s) gflog" in capsys.readouterr().err


def test_bad_xfe_and_snr(tmp_path, capsys):
    assert main(["synth", "--teff", "5000", "--logg", "4", "--feh", "0", "--xfe", "Mg", "--out", "x.h5"]) == 2
    assert "expected ELEMENT=VALUE" in capsys.readouterr().err
    assert main(["synth", "--teff", "5000", "--logg", "4", "--feh", "0", "--xfe", "Xx=1", "--out", "x.h5"]) == 2
    assert "[Xx/Fe] is not a varied abundance" in capsys.readouterr().err


def test_unwritable_grid_output(tmp_path, capsys):
    assert main(["grid", "--n", "2", "--out", str(tmp_path / "nope" / "g.h5"), "--quiet"]) == 2
    assert "folder" in capsys.readouterr().err


@pytest.mark.slow
def test_synth_writes_the_grid_layout(tmp_path):
    pytest.importorskip("pysme")
    out = tmp_path / "sun.h5"
    r = run_cli("synth", "--teff", "5772", "--logg", "4.44", "--feh", "0", "--xfe", "Mg=0.1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    with GridReader(out) as grid:
        assert grid.n == 1 and grid.done.all() and grid.flux.shape == (1, 25_200)
        assert grid.labels[0, grid.label_names.index("mg_fe")] == pytest.approx(0.1)
        assert grid.attrs["engine"] == "pysme" and len(grid.attrs["linelist_sha256"]) == 64


@pytest.mark.slow
def test_interrupted_grid_resumes_without_loss_or_duplicates(tmp_path):
    pytest.importorskip("pysme")
    out = tmp_path / "g.h5"
    cmd = [sys.executable, "-m", "spectra.cli", "grid", "--n", "4", "--seed", "7", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until at least one row is on disk, then kill hard
        time.sleep(0.5)
        if out.exists():
            try:
                with GridReader(out) as grid:
                    if grid.done.sum() >= 1:
                        break
            except (OSError, ValueError):
                pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with GridReader(out) as grid:
        first = grid.done.copy()
        kept = grid.flux[np.flatnonzero(first)[0]]
    assert 1 <= first.sum() < 4
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{int(first.sum())} already done" in r.stdout
    with GridReader(out) as grid:
        assert grid.done.all()
        np.testing.assert_array_equal(grid.flux[np.flatnonzero(first)[0]], kept)  # not recomputed
        labels = grid.labels
    r2 = subprocess.run([sys.executable, "-m", "spectra.cli", "grid", "--n", "4", "--seed", "7", "--out",
                         str(tmp_path / "ref.h5"), "--quiet"], capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr
    with GridReader(tmp_path / "ref.h5") as ref:
        np.testing.assert_array_equal(ref.labels, labels)
        np.testing.assert_allclose(ref.flux[:], GridReader(out).flux[:], rtol=1e-6)
