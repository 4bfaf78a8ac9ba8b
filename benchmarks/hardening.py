"""Hostile and unlucky-user probes of issue 21, re-runnable: writes benchmarks/results/hardening.md.

    python benchmarks/hardening.py [--out benchmarks/results/hardening.md] [--only NAME ...]

Each probe runs in a fresh Python process (so its peak memory, ``VmHWM``, is its own), builds its hostile input in a
scratch folder, runs the toolkit's own command functions on it and reports what it observed against what is
expected. Inputs are crafted as in the tests (``tests/test_hardening_*.py``): bundles with unhashed external
weights, symlinks or absurd manifests; surveys whose metadata claims 20 000-row chunks or 10**12 rows; a tar.gz
with a 1 GiB member; races between two runs; a full disk and a read-only folder (simulated where the machine
cannot make one: root ignores file modes).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import rehash_bundle  # noqa: E402  (the tests' helper: one way to craft a consistent bundle)

PROBES: dict[str, tuple[str, str, Callable[[Path], tuple[str, bool]]]] = {}


def probe(name: str, defect: str, expected: str):
    def register(func):
        PROBES[name] = (defect, expected, func)
        return func

    return register


def _cli(module: str, argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of ``python -m <module> argv``, run in this process."""
    import importlib

    cli = importlib.import_module(f"{module}.cli")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue().strip()


def _one_line(code: int, err: str) -> bool:
    """Exit 2 with exactly one error line and no traceback (other stderr lines are notes, e.g. which model)."""
    return code == 2 and "Traceback" not in err and sum(": error:" in line for line in err.splitlines()) == 1


def _error(err: str) -> str:
    """The error line of a command's stderr (notes such as "using the packaged default model" dropped)."""
    return next((line for line in err.splitlines() if ": error:" in line), err)


def _short(text: str, n: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _bundle_copy(work: Path) -> Path:
    from runtime.packaged import default_bundle

    return Path(shutil.copytree(default_bundle(), work / "bundle"))


def _survey(work: Path) -> Path:
    from runtime.packaged import unpack_examples

    return next(p for p in unpack_examples(work / "examples") if p.name == "synthetic.zarr")


def _process(survey: Path, bundle: Path | None, out: Path, *extra: str) -> tuple[int, str]:
    argv = ["process", "--survey", str(survey), "--out", str(out), "--samples", "32", "--device", "cpu", "--quiet"]
    return _cli("runtime", argv + (["--bundle", str(bundle)] if bundle else []) + list(extra))


def _refused(work: Path, bundle: Path, needle: str) -> tuple[str, bool]:
    """Run the example survey through a crafted ``bundle``: the observation, and whether it was refused in one line
    mentioning ``needle`` with no output left behind."""
    code, err = _process(_survey(work), bundle, work / "cat.zarr")
    ok = _one_line(code, err) and needle in err and not (work / "cat.zarr").exists()
    return f"exit {code}: {_short(_error(err))}", ok


# ------------------------------------------------------------------------------------------ 1. bundle identity
@probe("external-weights", "1", "refused in one line (exit 2): the file is not listed, so not hashed")
def external_weights(work: Path) -> tuple[str, bool]:
    import onnx

    bundle = _bundle_copy(work)
    model = onnx.load(str(bundle / "hoisted_flow.onnx"))
    (bundle / "hoisted_flow.onnx").unlink()
    onnx.save_model(model, str(bundle / "hoisted_flow.onnx"), save_as_external_data=True, location="weights",
                    size_threshold=0)
    rehash_bundle(bundle)
    return _refused(work, bundle, "weights")


@probe("symlink-in-bundle", "1", "refused: a symlink could point at bytes the identity does not cover")
def symlink_in_bundle(work: Path) -> tuple[str, bool]:
    bundle = _bundle_copy(work)
    outside = work / "outside.onnx"
    shutil.move(bundle / "hoisted_flow.onnx", outside)
    (bundle / "hoisted_flow.onnx").symlink_to(outside)
    return _refused(work, bundle, "symlink")


@probe("manifest-nested", "1, 8", "refused in one line, no RecursionError traceback")
def manifest_nested(work: Path) -> tuple[str, bool]:
    bundle = _bundle_copy(work)
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    return _refused(work, bundle, "nested deeper")


@probe("manifest-200MB", "1, 6", "refused from its size before parsing; peak memory far below 200 MB of JSON")
def manifest_huge(work: Path) -> tuple[str, bool]:
    bundle = _bundle_copy(work)
    raw = json.loads((bundle / "manifest.json").read_text())
    with open(bundle / "manifest.json", "w") as fh:
        fh.write(json.dumps(raw)[:-1] + ', "padding": "')
        for _ in range(200):
            fh.write("x" * 2**20)
        fh.write('"}')
    return _refused(work, bundle, "at most")


@probe("graph-entry-string", "8", "refused in one line naming the field")
def graph_entry_string(work: Path) -> tuple[str, bool]:
    bundle = _bundle_copy(work)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["graphs"]["inverse_flow"] = "inverse_flow.onnx"
    (bundle / "manifest.json").write_text(json.dumps(raw))
    return _refused(work, bundle, "graph inverse_flow")


# ------------------------------------------------------------------------------------------ 2, 3, 5. runs
@probe("cluster-intruder", "2", "another local process cannot connect (no credentials, its own, plain TCP); no HTTP")
def cluster_intruder(work: Path) -> tuple[str, bool]:
    from test_hardening_runs import INTRUDER, _ports, _speaks_http

    from runtime.cluster import DistributedRunner
    from runtime.pipeline import ProcessOptions
    from runtime.task import RunContext

    runner = DistributedRunner(2, None, RunContext("in", "out", "bundle", "sha", ProcessOptions()))
    try:
        address = runner.cluster.scheduler.address
        done = subprocess.run([sys.executable, "-c", INTRUDER, address], capture_output=True, text=True, timeout=120)
        tries = dict(line.split(" ", 1) for line in done.stdout.splitlines())
        workers = runner.client.run(lambda dask_worker: dask_worker.address)
        ports = [_ports(address), *(_ports(w) for w in workers)]
        http = [port for port in ports if _speaks_http(port)]
    finally:
        runner.close()
    refused = len(tries) == 3 and all(v.startswith("refused") for v in tries.values())
    return (f"{address.split(':')[0]}://127.0.0.1; intruder: " + ", ".join(f"{k} {v}" for k, v in tries.items())
            + f"; HTTP on {http or 'no port'}"), refused and not http and address.startswith("tls://127.0.0.1")


@probe("two-creators", "3", "one run wins, the other exits 2 naming it; the catalogue whole, nothing left beside it")
def two_creators(work: Path) -> tuple[str, bool]:
    from test_hardening_runs import SLOW_RUNTIME

    survey, out = _survey(work), work / "cat.zarr"
    (work / "slow.py").write_text(SLOW_RUNTIME)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["process", "--survey", str(survey), "--out", str(out), "--samples", "32", "--chunk", "8", "--quiet"]
    runs = [subprocess.Popen([sys.executable, str(work / "slow.py"), "0.5", *argv], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in runs]
    loser = next((r for r in results if r[3] == 2), None)
    from catalog.check import check_catalogue

    whole = out.exists() and check_catalogue(out, survey).ok
    debris = sorted(p.name for p in work.iterdir() if out.name in p.name and p.name != out.name)
    observed = (f"exits {sorted(r[3] for r in results)}; loser: {_short(_error(loser[2]) if loser else '', 110)}; "
                f"catalogue {'whole' if whole else 'BROKEN'}; left beside it: {debris or 'nothing'}")
    return observed, sorted(r[3] for r in results) == [0, 2] and "is being written by pid" in loser[2] and whole


@probe("corrupt-emulator", "5", "one line (exit 2) before the catalogue exists; no output left")
def corrupt_emulator(work: Path) -> tuple[str, bool]:
    bundle = _bundle_copy(work)
    (bundle / "emulator.onnx").write_bytes(b"\x08\x07garbage" * 1000)
    rehash_bundle(bundle)
    code, err = _process(_survey(work), bundle, work / "cat.zarr")
    left = sorted(p.name for p in work.iterdir() if "cat.zarr" in p.name)
    return f"exit {code}: {_short(_error(err))}; outputs: {left or 'none'}", _one_line(code, err) and not left


# ------------------------------------------------------------------------------------------ 4. files we did not make
@probe("user-partial-folder", "4", "the user's X.partial folder and its contents untouched")
def user_partial(work: Path) -> tuple[str, bool]:
    survey = _survey(work)
    assert _process(survey, None, work / "cat.zarr")[0] == 0
    (work / "ds.partial").mkdir()
    (work / "ds.partial" / "thesis.tex").write_text("years of work")
    (work / "c.fits.partial").write_text("mine too")
    a = _cli("catalog", ["export", "--catalog", str(work / "cat.zarr"), "--format", "parquet-dataset", "--out",
                         str(work / "ds")])
    b = _cli("catalog", ["export", "--catalog", str(work / "cat.zarr"), "--format", "fits", "--out",
                         str(work / "c.fits")])
    kept = (work / "ds.partial" / "thesis.tex").read_text() == "years of work" and (
        work / "c.fits.partial").read_text() == "mine too"
    return f"exports exit {a[0]}, {b[0]}; user's files {'kept' if kept else 'CHANGED'}", kept and a[0] == b[0] == 0


@probe("atmospheres-pack-existing", "4", "exit 2 without --overwrite; the existing file unchanged")
def pack_existing(work: Path) -> tuple[str, bool]:
    from test_hardening_limits import tar_with_member

    target = work / "grid.npz"
    target.write_bytes(b"someone's grid")
    tar_with_member(work / "models.tar.gz", "marcs/p5000_g+4.0.mod", 10)
    code, err = _cli("spectra", ["atmospheres", "pack", "--source", str(work / "models.tar.gz"), "--out", str(target)])
    return f"exit {code}: {_short(_error(err))}", _one_line(code, err) and target.read_bytes() == b"someone's grid"


# ------------------------------------------------------------------------------------------ 6. memory
@probe("survey-20000-row-chunk", "6", "refused in one line from the metadata; peak memory a few hundred MB at most")
def survey_big_chunk(work: Path) -> tuple[str, bool]:
    from test_hardening_limits import crafted_survey

    survey = crafted_survey(work / "s.zarr", rows=20_000, chunk_rows=20_000)
    code, err = _process(survey, None, work / "cat.zarr")
    return f"exit {code}: {_short(_error(err))}", _one_line(code, err) and "MiB" in err


@probe("survey-1e12-rows", "6", "refused in one line, no MemoryError")
def survey_huge_rows(work: Path) -> tuple[str, bool]:
    from test_hardening_limits import crafted_survey

    survey = crafted_survey(work / "s.zarr", rows=10**12, chunk_rows=256, flux_chunk=False, write_ids=False)
    code, err = _process(survey, None, work / "cat.zarr")
    return f"exit {code}: {_short(_error(err))}", _one_line(code, err)


@probe("tar-1GiB-member", "6", "refused from the member's declared size; peak memory far below 1 GiB")
def tar_bomb(work: Path) -> tuple[str, bool]:
    from test_hardening_limits import tar_with_member

    tar_with_member(work / "bomb.tar.gz", "marcs/big.mod", 2**30)
    code, err = _cli("spectra", ["atmospheres", "pack", "--source", str(work / "bomb.tar.gz"), "--out",
                                 str(work / "grid.npz")])
    return f"exit {code}: {_short(_error(err))}", _one_line(code, err)


# ------------------------------------------------------------------------------------------ 7. numbers
@probe("negative-source-id", "7", "refused before the catalogue exists, naming <survey>/source_id")
def negative_ids(work: Path) -> tuple[str, bool]:
    import zarr

    survey = _survey(work)
    zarr.open_group(str(survey), mode="r+")["source_id"][3] = -5
    code, err = _process(survey, None, work / "cat.zarr")
    return f"exit {code}: {_short(_error(err))}", (_one_line(code, err) and "source_id" in err
                                            and not (work / "cat.zarr").exists())


@probe("first-id-and-seed-negative", "7", "each refused at the door naming its option")
def negative_options(work: Path) -> tuple[str, bool]:
    survey = _survey(work)
    a = _process(survey, None, work / "cat.zarr", "--seed", "-1")
    b = _cli("spectra", ["ingest", str(ROOT / "README.md"), "--out", str(work / "obs.zarr"), "--first-id", "-5"])
    ok = _one_line(*a) and "--seed" in a[1] and _one_line(*b) and "--first-id" in b[1]
    return (f"--seed -1: exit {a[0]} ({_short(_error(a[1]), 70)}); --first-id -5: exit {b[0]} "
            f"({_short(_error(b[1]), 70)})"), ok


# ------------------------------------------------------------------------------------------ 8. errors, not tracebacks
@probe("full-disk-during-process", "8", "one line naming the path and --resume (exit 2); the resumed run completes")
def full_disk(work: Path) -> tuple[str, bool]:
    from catalog.writers import CatalogueStore

    survey, out = _survey(work), work / "cat.zarr"
    real, calls = CatalogueStore.write_chunk, []

    def fills_up(self, k, values):  # ENOSPC on the second shard, as a full disk would raise it
        calls.append(k)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "c" / str(k)))
        return real(self, k, values)

    CatalogueStore.write_chunk = fills_up
    code, err = _process(survey, None, out, "--chunk", "16")
    CatalogueStore.write_chunk = real
    resumed = _process(survey, None, out, "--chunk", "16", "--resume")[0]
    return (f"exit {code}: {_short(_error(err))}; --resume exit {resumed}",
            _one_line(code, err) and "--resume" in err and resumed == 0)


@probe("read-only-output-folder", "8", "one line naming the folder (exit 2) for process, export, ingest, examples")
def read_only(work: Path) -> tuple[str, bool]:
    survey = _survey(work)
    assert _process(survey, None, work / "cat.zarr")[0] == 0
    if os.geteuid() != 0:
        folder = work / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder = Path("/sys")  # sysfs refuses file creation even to root
    results = [
        _process(survey, None, folder / "cat.zarr"),
        _cli("catalog", ["export", "--catalog", str(work / "cat.zarr"), "--format", "fits", "--out",
                         str(folder / "c.fits")]),
        _cli("runtime", ["example-survey", "--out", str(folder / "examples")]),
    ]
    ok = all(_one_line(*r) and str(folder) in r[1] for r in results)
    return "; ".join(f"exit {c}: {_short(_error(e), 60)}" for c, e in results), ok


@probe("example-survey-overwrite-symlink", "8", "refused in one line; the link's target intact")
def example_symlink(work: Path) -> tuple[str, bool]:
    assert _cli("runtime", ["example-survey", "--out", str(work / "a")])[0] == 0
    (work / "b").mkdir()
    (work / "b" / "synthetic.zarr").symlink_to(work / "a" / "synthetic.zarr")
    code, err = _cli("runtime", ["example-survey", "--out", str(work / "b"), "--overwrite"])
    intact = (work / "a" / "synthetic.zarr" / "zarr.json").is_file()
    return f"exit {code}: {_short(_error(err))}", _one_line(code, err) and "symlink" in err and intact


@probe("non-ascii-object", "8", "UTF-8 kept in the survey and catalogue; FITS export ASCII with escapes")
def non_ascii(work: Path) -> tuple[str, bool]:
    import codecs

    import numpy as np
    from astropy.io import fits
    from test_hardening_outputs import _fits_with_utf8_object

    from catalog.schema import Column
    from catalog.writers import CatalogueStore, export_fits
    from spectra.observed.readers import read_spectra

    name = "Gliese 1é ☉"
    with contextlib.redirect_stderr(io.StringIO()):
        spectrum = read_spectra(_fits_with_utf8_object(work / "s.fits", name))[0]
    store = CatalogueStore.create(work / "c.zarr", 1, 1, [Column("object", "str", "", "object name", "")], {})
    store.write_chunk(0, {"object": np.array([spectrum.object], dtype=object)})
    out = export_fits(work / "c.zarr", work / "c.fits")
    with fits.open(out) as hdul:
        text = hdul["CATALOGUE"].data["object"][0]
    ok = spectrum.object == name and codecs.decode(text, "unicode_escape") == name and name.encode() not in (
        out.read_bytes())
    return f"read {spectrum.object!r}; FITS holds {text!r}", ok


# ------------------------------------------------------------------------------------------ driver
def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(name: str, work: Path) -> dict:
    """In the child process: run one probe, return its row."""
    import warnings

    warnings.simplefilter("ignore")
    start = time.perf_counter()
    try:
        observed, passed = PROBES[name][2](work)
    except Exception as exc:  # a probe that crashes is a finding, reported as such
        observed, passed = f"probe crashed: {type(exc).__name__}: {_short(str(exc), 120)}", False
    return {"probe": name, "observed": observed, "passed": passed, "seconds": round(time.perf_counter() - start, 1),
            "peak_mb": round(_peak_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hardening.md"))
    parser.add_argument("--only", nargs="*", help="run these probes only (names as in the table)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(run_one(args.probe, Path(args.work))))
        return
    rows = []
    for name in args.only or list(PROBES):
        with tempfile.TemporaryDirectory(prefix=f"probe-{name}-") as work:
            done = subprocess.run([sys.executable, __file__, "--probe", name, "--work", work], capture_output=True,
                                  text=True, timeout=900)
            try:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                row = {"probe": name, "observed": f"child failed: {_short(done.stderr[-300:])}", "passed": False,
                       "seconds": float("nan"), "peak_mb": float("nan")}
        rows.append(row)
        print(f"{'ok ' if row['passed'] else 'FAIL'} {name}: {row['observed']} ({row['peak_mb']} MB, "
              f"{row['seconds']} s)", flush=True)
    lines = [
        "# Hardening probes (issue 21)", "",
        f"Made by `python benchmarks/hardening.py` on {time.strftime('%Y-%m-%d')}, {platform.processor() or ''} "
        f"{platform.machine()}, Python {platform.python_version()}, running as "
        f"{'root' if os.geteuid() == 0 else 'a normal user'}. Each probe runs in its own process; *peak* is that "
        "process's VmHWM (Python, numpy, zarr, onnxruntime and the default model loaded: ~150-400 MB is the floor).",
        "", "| probe | defect | expected | observed | peak MB | s | ok |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        defect, expected, _ = PROBES[row["probe"]]
        lines.append(f"| {row['probe']} | {defect} | {expected} | {row['observed'].replace('|', '/')} | "
                     f"{row['peak_mb']} | {row['seconds']} | {'yes' if row['passed'] else '**no**'} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{args.out}: {sum(r['passed'] for r in rows)} of {len(rows)} probes as expected")


if __name__ == "__main__":
    main()
