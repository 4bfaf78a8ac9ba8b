"""Issue 22, rough edges 2, 3, 4, 6 and 9: ingestion, survey info, samples, Ctrl-C and devices on the command line.
Each test fails on the code before its fix (the reason is in its docstring).

2. ``spectra ingest DIR`` stopped with "Is a directory", left a half-written survey, and the retry was refused as
   "exists".
3. Failed files were a count on the command line; the ``--resume`` advice looped; ``spectra info`` on a survey said
   "grid file not found".
4. ``runtime process --samples 1`` ran (p16 = p84 = MAP); ``runtime example-survey`` twice advised a ``--resume`` it
   does not have.
6. Ctrl-C on ``--workers 2`` printed about seventy lines of Dask tracebacks; the progress bar counted "32.0/60.0".
9. ``--device auto`` settled on the CPU silently on a GPU machine; a provider mismatch was a RuntimeError.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

ort = pytest.importorskip("onnxruntime")

import spectra.observed.ingest as ingest_module  # noqa: E402
from runtime import cli as runtime_cli  # noqa: E402
from spectra import cli as spectra_cli  # noqa: E402
from spectra.observed.examples import fourmost_l1_from_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def l1_files(fake_grid, tmp_path) -> list[Path]:
    """Five one-spectrum 4MOST L1-style files (resolving power in the header: no option needed)."""
    return [fourmost_l1_from_grid(fake_grid, [i], tmp_path / f"f{i}.fits", snr=100, seed=i) for i in (0, 1, 2, 3, 5)]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(default bundle, synthetic example survey, observed example survey), or a skip where they are not installed."""
    from runtime.packaged import default_bundle, unpack_examples

    try:
        bundle = default_bundle()
        surveys = {p.name: p for p in unpack_examples(tmp_path_factory.mktemp("examples"))}
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return bundle, surveys["synthetic.zarr"], surveys["observed.zarr"]


def _failing_read(fail_at: int, exc: BaseException):
    """``read_spectra`` that raises ``exc`` at its ``fail_at``-th call (1-based), like Ctrl-C while reading."""
    real, calls = ingest_module.read_spectra, {"n": 0}

    def read(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise exc
        return real(*args, **kwargs)

    return read


def _failing_flush(fail_at: int, exc: BaseException):
    """``_SurveyWriter.flush`` that raises ``exc`` at its ``fail_at``-th call with rows to write (a disk error)."""
    real, calls = ingest_module._SurveyWriter.flush, {"n": 0}

    def flush(self):
        if self.buffer:
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise exc
        return real(self)

    return flush


# ------------------------------------------------------------------------------------ 2: folders, failures
def test_a_folder_stands_for_the_spectrum_files_inside_it(l1_files, tmp_path, capsys):
    """Old: the folder reached the FITS reader ("Is a directory", exit 2) and left a survey behind."""
    folder = tmp_path / "night"
    (folder / "sub").mkdir(parents=True)
    for path in reversed(l1_files[:2]):
        path.rename(folder / path.name)
    (folder / "notes.md").write_text("observing log")
    (folder / "settings.csv").write_text("file,resolution\n")
    (folder / "sub" / "other.fits").write_bytes(b"")  # sub-folders are not entered
    out = tmp_path / "s.zarr"
    assert spectra_cli.main(["ingest", str(folder), "--out", str(out), "--rv", "0", "--quiet"]) == 0
    assert f"{folder}: 2 spectrum file(s) inside it, in name order" in capsys.readouterr().err
    survey = zarr.open_group(str(out), mode="r")
    assert [str(f) for f in survey["file"][:]] == [str(folder / "f0.fits"), str(folder / "f1.fits")]
    assert not (survey["ingest_flags"][:] & ingest_module.IngestFlag.READ_FAILED).any()


def test_a_folder_without_spectra_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Old: "d: Is a directory" after the survey had been created, so the retry was refused."""
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.md").write_text("nothing here")
    out = tmp_path / "s.zarr"
    assert spectra_cli.main(["ingest", str(folder), "--out", str(out), "--quiet"]) == 2
    (line,) = _stderr_lines(capsys)
    assert f"{folder} is a folder without spectrum files (.fits" in line and not out.exists()


def test_a_failed_ingest_leaves_nothing_that_blocks_the_retry(l1_files, tmp_path, monkeypatch, capsys):
    """Old: the error left an empty survey under --out and the same command then answered "exists"."""
    out = tmp_path / "s.zarr"
    disk_error = OSError(errno.EIO, "I/O error", str(out / "flux"))
    monkeypatch.setattr(ingest_module._SurveyWriter, "flush", _failing_flush(1, disk_error))
    assert spectra_cli.main(["ingest", *map(str, l1_files), "--out", str(out), "--rv", "0", "--quiet"]) == 2
    assert not out.exists() and "flux: Input/output error" in capsys.readouterr().err
    monkeypatch.undo()
    assert spectra_cli.main(["ingest", *map(str, l1_files), "--out", str(out), "--rv", "0", "--quiet"]) == 0


def test_an_interrupted_ingest_before_its_first_rows_leaves_nothing(l1_files, tmp_path, monkeypatch, capsys):
    """Ctrl-C before anything was committed: nothing to resume, so nothing is left; the advice names --resume (which
    the same command needs once rows exist). Old: an empty survey stayed and the advice was the bare command."""
    out = tmp_path / "s.zarr"
    monkeypatch.setattr(ingest_module, "read_spectra", _failing_read(1, KeyboardInterrupt()))
    assert spectra_cli.main(["ingest", *map(str, l1_files), "--out", str(out), "--quiet"]) == 130
    assert "re-run the same command with --resume" in capsys.readouterr().err and not out.exists()


def test_an_ingest_failing_after_some_rows_keeps_them_and_says_resume(l1_files, tmp_path, monkeypatch, capsys):
    """Old: the committed rows were kept but nothing said that --resume continues them."""
    out, args = tmp_path / "s.zarr", ["--rv", "0", "--chunk", "2", "--quiet"]
    disk_error = OSError(errno.EIO, "I/O error", str(out / "flux"))
    monkeypatch.setattr(ingest_module._SurveyWriter, "flush", _failing_flush(2, disk_error))
    assert spectra_cli.main(["ingest", *map(str, l1_files), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "keeps the 2 spectra committed" in err and "with --resume to continue" in err, err
    monkeypatch.undo()
    assert spectra_cli.main(["ingest", *map(str, l1_files), "--out", str(out), *args, "--resume"]) == 0
    assert list(zarr.open_group(str(out), mode="r")["source_id"][:]) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------ 3: failures, advice, spectra info
def test_failed_files_are_listed_with_their_reasons(l1_files, tmp_path, capsys):
    """Old: only "23 failed"; the reasons sat in the survey's `message` array."""
    empty = []
    for i in range(23):
        empty.append(tmp_path / f"empty{i:02d}.fits")
        empty[-1].write_bytes(b"")
    out = tmp_path / "s.zarr"
    assert spectra_cli.main(["ingest", str(l1_files[0]), *map(str, empty), "--out", str(out), "--rv", "0",
                             "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    failed = [line for line in err if line.startswith("  failed: ")]
    assert failed[0] == f"  failed: {empty[0]}: the file is empty" and len(failed) == 20
    assert err[-1] == f"  ... and 3 more; see the survey's `message` array ({out}/message)"


def test_an_unreadable_file_is_a_failed_row_not_the_end_of_the_batch(l1_files, tmp_path, monkeypatch, capsys):
    """A file the readers cannot open (permissions, a broken link) is flagged like any unreadable file. Old: its
    OSError ("Is a directory" was one) stopped the whole batch."""
    real = ingest_module.read_spectra

    def read(path, *args, **kwargs):
        if Path(path) == l1_files[1]:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ingest_module, "read_spectra", read)
    out = tmp_path / "s.zarr"
    assert spectra_cli.main(["ingest", *map(str, l1_files[:3]), "--out", str(out), "--rv", "0", "--quiet"]) == 0
    assert f"  failed: {l1_files[1]}: cannot read the file: Permission denied" in capsys.readouterr().err
    assert list(zarr.open_group(str(out), mode="r")["ingest_flags"][:] & 1) == [0, 1, 0]


def test_the_resume_advice_does_not_loop(l1_files, tmp_path, capsys):
    """Old: "exists: add --resume" and, with --resume and another file list, "drop --resume": a loop."""
    out = tmp_path / "s.zarr"
    assert spectra_cli.main(["ingest", str(l1_files[0]), "--out", str(out), "--rv", "0", "--quiet"]) == 0
    two = [str(l1_files[0]), str(l1_files[1])]
    assert spectra_cli.main(["ingest", *two, "--out", str(out), "--rv", "0", "--quiet", "--resume"]) == 2
    (line,) = _stderr_lines(capsys)
    assert "another list of input files" in line and "--overwrite" in line and "drop --resume" not in line
    assert spectra_cli.main(["ingest", *two, "--out", str(out), "--rv", "0", "--quiet", "--overwrite"]) == 0


def test_spectra_info_describes_a_survey(l1_files, tmp_path, capsys):
    """Old: a survey folder was opened as a grid file: "grid file ... not found"."""
    out = tmp_path / "s.zarr"
    assert spectra_cli.main(["ingest", *map(str, l1_files[:3]), "--out", str(out), "--rv", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert spectra_cli.main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    snr = zarr.open_group(str(out), mode="r")["snr"][:]
    assert (info["kind"], info["survey_kind"], info["rows"], info["continuum_kind"]) == ("survey", "observed", 3,
                                                                                         "pseudo")
    assert info["snr"]["min"] == pytest.approx(float(snr.min())) and info["snr"]["max"] == pytest.approx(
        float(snr.max()))
    assert info["arrays"]["flux"].startswith(f"(3, {info['pixels']}) float32")
    assert info["committed"] == 3 and info["ingest_flags"]["READ_FAILED"] == 0


def test_spectra_info_on_something_else_says_what_it_expects(tmp_path, capsys):
    """A catalogue or any other folder: one line naming what `info` reads. Old: "grid file ... not found"."""
    catalogue = tmp_path / "c.zarr"
    zarr.open_group(str(catalogue), mode="w").attrs["format"] = "cinn4most-catalogue/2"
    assert spectra_cli.main(["info", str(catalogue)]) == 2
    (line,) = _stderr_lines(capsys)
    assert "not a survey (a cinn4most-catalogue/2 store); expected a grid file (.h5" in line


# ------------------------------------------------------------------------ 4: samples, example-survey advice
@pytest.mark.parametrize("samples", [1, 3, 31])
def test_too_few_samples_are_refused_with_the_reason(samples):
    """Old: any --samples >= 1 ran; with 1 the 68 % interval collapsed onto the MAP."""
    from runtime.pipeline import MIN_SAMPLES, ProcessOptions, check_arguments

    with pytest.raises(ValueError, match=rf"--samples must be >= 32, got {samples}: the catalogue's quantiles"):
        check_arguments(ProcessOptions(samples=samples))
    check_arguments(ProcessOptions(samples=MIN_SAMPLES))


def test_runtime_process_refuses_few_samples_before_any_output(packaged, tmp_path, capsys):
    bundle, _, observed = packaged
    out = tmp_path / "c.zarr"
    assert runtime_cli.main(["process", "--survey", str(observed), "--bundle", str(bundle), "--out", str(out),
                             "--samples", "3", "--quiet"]) == 2
    (line,) = _stderr_lines(capsys)
    assert "--samples must be >= 32" in line and not out.exists()


def test_example_survey_twice_does_not_offer_a_resume_it_lacks(tmp_path, capsys):
    """Old: "exists: add --resume to complete it" — `runtime example-survey` has no --resume."""
    pytest.importorskip("runtime.packaged")
    if runtime_cli.main(["example-survey", "--out", str(tmp_path)]) != 0:
        pytest.skip("no example surveys in this installation")
    capsys.readouterr()
    assert runtime_cli.main(["example-survey", "--out", str(tmp_path)]) == 2
    (line,) = _stderr_lines(capsys)
    assert "--overwrite" in line and "--resume" not in line
    assert runtime_cli.main(["example-survey", "--out", str(tmp_path), "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left


# ---------------------------------------------------------------------------- 6: Ctrl-C, progress bar
#: `runtime process` whose tasks (on the workers) each take a few seconds longer: `process_chunk` is replaced by a
#: function defined here, which the workers receive by value (cloudpickle pickles __main__'s functions whole)
SLOW_TASKS = """
import sys, time
import runtime.cluster as cluster
original = cluster.process_chunk
DELAY = float(sys.argv[1])

def slow(*args):
    time.sleep(DELAY)
    return original(*args)

if __name__ == "__main__":  # the workers' processes import this file again: only the driver runs the command
    cluster.process_chunk = slow
    from runtime.cli import main
    sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_on_a_distributed_run_prints_one_line(packaged, tmp_path):
    """Ctrl-C in a terminal signals the whole process group: driver and workers. Old: each worker died with a
    KeyboardInterrupt and logged tracebacks, the scheduler and nannies warned: about seventy lines before the one
    useful line. The interrupted catalogue still resumes."""
    pytest.importorskip("cryptography")
    bundle, synthetic, _ = packaged
    script, out = tmp_path / "slow_tasks.py", tmp_path / "c.zarr"
    script.write_text(SLOW_TASKS)
    args = ["process", "--survey", str(synthetic), "--bundle", str(bundle), "--out", str(out), "--samples", "32",
            "--device", "cpu", "--chunk", "4", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # SIG_DFL in the child: a disposition of SIGINT ignored in the test process (left by any library it ran) would be
    # inherited, and Python keeps an inherited "ignore" instead of installing its KeyboardInterrupt handler
    run = subprocess.Popen([sys.executable, str(script), "2.0", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while not out.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # tasks are running on both workers
        assert run.poll() is None, run.communicate()
        os.killpg(run.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
    lines = [line for line in err.splitlines() if line.strip()]
    assert run.returncode == 130, err
    assert len(lines) <= 3 and "Traceback" not in err, err
    assert lines[-1] == "runtime process: interrupted; re-run with --resume to complete"
    assert runtime_cli.main([*args[:-5], "--chunk", "4", "--quiet", "--resume"]) == 0


def test_the_progress_bar_counts_whole_spectra(packaged, tmp_path, capsys):
    """Old: tqdm's unit scaling showed "3.00/3.00" (and "32.0/60.0") spectra."""
    from runtime.pipeline import ProcessOptions, process_survey

    bundle, _, observed = packaged
    process_survey(observed, bundle, tmp_path / "c.zarr", ProcessOptions(samples=32, device="cpu"), progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert " 3/3 " in bar and "3.00" not in bar, bar


# ----------------------------------------------------------------------------------------------- 9: devices
def _cpu_only(monkeypatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])


def test_auto_on_the_cpu_of_a_gpu_machine_says_so_once(packaged, tmp_path, monkeypatch, capsys):
    """ONNX Runtime without a CUDA provider on a machine that seems to have a GPU: one warning line. Old: nothing
    (and no `gpu_evidence` to ask)."""
    import runtime.sessions as sessions

    bundle, _, observed = packaged
    _cpu_only(monkeypatch)
    monkeypatch.setattr(sessions, "gpu_evidence", lambda: "nvidia-smi is installed")
    assert runtime_cli.main(["process", "--survey", str(observed), "--bundle", str(bundle), "--out",
                             str(tmp_path / "c.zarr"), "--samples", "32", "--device", "auto", "--quiet"]) == 0
    notes = [line for line in _stderr_lines(capsys) if "--device auto runs on the CPU" in line]
    assert len(notes) == 1 and "nvidia-smi is installed" in notes[0] and "--device cpu" in notes[0]


def test_auto_on_a_plain_cpu_machine_stays_quiet(monkeypatch):
    import runtime.sessions as sessions

    _cpu_only(monkeypatch)
    told = []
    monkeypatch.setattr(sessions, "gpu_evidence", lambda: "")
    assert sessions.resolve_providers("auto", notify=told.append) == ("cpu", ["CPUExecutionProvider"])
    monkeypatch.setattr(sessions, "gpu_evidence", lambda: "the NVIDIA driver is loaded")
    assert sessions.resolve_providers("cpu", notify=told.append)[0] == "cpu"  # asked for the CPU: no note
    assert told == []
    sessions.resolve_providers("auto", notify=told.append)
    assert len(told) == 1


def test_gpu_evidence_sees_nvidia_smi(monkeypatch):
    import runtime.sessions as sessions

    monkeypatch.setattr(sessions.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert sessions.gpu_evidence() in ("the NVIDIA driver is loaded", "nvidia-smi is installed")


def _gpu_that_falls_back(monkeypatch) -> None:
    """ONNX Runtime lists CUDA, but its sessions come back on the CPU (the CUDA libraries did not load)."""
    cpu_only = ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *cpu_only])
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda path, options=None, providers=None, **kw: real_session(
        path, providers=cpu_only))


def test_a_provider_mismatch_is_a_value_error_naming_the_device(packaged, monkeypatch):
    """Old: a bare RuntimeError, which no command line turns into one line."""
    from runtime.bundle import load_bundle
    from runtime.sampler import OnnxPosterior
    from runtime.sessions import ProviderError

    bundle = load_bundle(packaged[0])
    _gpu_that_falls_back(monkeypatch)
    with pytest.raises(ValueError, match=r"--device cuda: ONNX Runtime gave \['CPUExecutionProvider'\] instead of "
                                         r"CUDAExecutionProvider") as info:
        OnnxPosterior(bundle, device="cuda", summary="host")
    assert isinstance(info.value, ProviderError | RuntimeError)


def test_a_provider_mismatch_on_the_command_line_is_one_line_with_a_remedy(packaged, tmp_path, monkeypatch, capsys):
    """Old: one line blaming the bundle ("the run's ONNX Runtime sessions fail"), with no remedy."""
    bundle, _, observed = packaged
    _gpu_that_falls_back(monkeypatch)
    out = tmp_path / "c.zarr"
    assert runtime_cli.main(["process", "--survey", str(observed), "--bundle", str(bundle), "--out", str(out),
                             "--samples", "32", "--device", "cuda", "--quiet"]) == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith("runtime process: error: --device cuda: ONNX Runtime gave") and "--device cpu" in line
    assert not out.exists()
