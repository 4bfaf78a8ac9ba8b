"""Issue 21 (hostile probes), runs: a private local cluster (2), one writer per catalogue (3), bundles whose
graphs fail found before the output exists (5). Each test fails on the code before these guards existed."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from catalog.check import check_catalogue  # noqa: E402
from catalog.writers import CatalogueStore  # noqa: E402
from runtime import cli as runtime_cli  # noqa: E402
from runtime.bundle import BundleError, hash_files, load_bundle  # noqa: E402
from runtime.cluster import DistributedRunner  # noqa: E402
from runtime.pipeline import ProcessOptions, check_arguments, process_survey  # noqa: E402
from runtime.task import RunContext  # noqa: E402
from spectra.common.outputs import OutputLockedError, lock_output, lock_path  # noqa: E402
from spectra.stores.survey import make_survey, parse_snr  # noqa: E402

OPTIONS = ProcessOptions(samples=256, seed=3, device="cpu")
ROOT = Path(__file__).resolve().parents[1]
#: `runtime process` with every shard write slowed down, so that two runs certainly overlap
SLOW_RUNTIME = """
import sys, time
import runtime.pipeline as pipeline
original = pipeline.write_chunk
def slow(*args):
    time.sleep(float(sys.argv[1]))
    return original(*args)
pipeline.write_chunk = slow
from runtime.cli import main
sys.exit(main(sys.argv[2:]))
"""
#: `runtime process` that dies (like a SIGKILL) right after the new catalogue's store is made
CRASH_AFTER_CREATE = """
import os, sys
from catalog.writers import CatalogueStore
original = CatalogueStore.create.__func__
def create_then_die(cls, *args, **kwargs):
    original(cls, *args, **kwargs)
    os._exit(9)
CatalogueStore.create = classmethod(create_then_die)
from runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tiny_bundle, tmp_path_factory):
    _, grid, _, bundle = tiny_bundle
    work = tmp_path_factory.mktemp("hardening")
    survey = make_survey(grid, parse_snr("50,250"), work / "survey.zarr", seed=1, chunk=16, progress=False)
    (work / "slow_runtime.py").write_text(SLOW_RUNTIME)
    (work / "crash_runtime.py").write_text(CRASH_AFTER_CREATE)
    return work, bundle, survey


def _args(survey: Path, bundle: Path, out: Path, *extra: str) -> list[str]:
    return ["process", "--input", str(survey), "--model", str(bundle), "--output", str(out), "--samples", "256",
            "--seed", "3", "--device", "cpu", "--chunk", "8", "--quiet", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _slow_run(work: Path, args: list[str], delay: float = 0.6) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(work / "slow_runtime.py"), str(delay), *args], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _no_debris(out: Path) -> None:
    """Neither a lock nor a temporary store is left beside the output."""
    left = sorted(p.name for p in out.parent.iterdir() if out.name in p.name and p.name != out.name)
    assert left == [], left


# ------------------------------------------------------------------------------ (2) a private local cluster
def _speaks_http(port: int) -> bool:
    """True if something on 127.0.0.1:port answers an HTTP request (plain, or over TLS without a certificate)."""
    for wrap in (False, True):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
                sock = raw
                if wrap:
                    context = ssl.create_default_context()
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                    sock = context.wrap_socket(raw)
                sock.sendall(b"GET /info/main/workers.html HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                reply = sock.recv(64)
        except (OSError, ssl.SSLError):
            continue
        if reply.startswith(b"HTTP/"):
            return True
    return False


def _ports(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


#: another local process trying the run's scheduler: without credentials, with its own, over plain TCP
INTRUDER = """
import sys
from distributed import Client, Security
address = sys.argv[1]
for name, target, security in (("none", address, None), ("own", address, Security.temporary()),
                               ("tcp", address.replace("tls://", "tcp://"), None)):
    try:
        client = Client(target, timeout="3s", security=security)
        print(name, "connected", client.submit(sum, [1, 2]).result(timeout=5), flush=True)
    except Exception as exc:
        print(name, "refused", type(exc).__name__, flush=True)
"""


def test_the_runs_cluster_refuses_other_clients_and_serves_no_http(tmp_path):
    ctx = RunContext("in", "out", "bundle", "sha", OPTIONS)
    runner = DistributedRunner(2, None, ctx)
    try:
        address = runner.cluster.scheduler.address
        assert runner.client.submit(sum, [40, 2]).result() == 42  # the run itself works
        probe = subprocess.run([sys.executable, "-c", INTRUDER, address], capture_output=True, text=True,
                               timeout=120)
        lines = dict(line.split(" ", 1) for line in probe.stdout.splitlines())
        assert set(lines) == {"none", "own", "tcp"}, probe.stdout + probe.stderr
        assert all(result.startswith("refused") for result in lines.values()), lines
        assert address.startswith("tls://127.0.0.1:"), address
        assert runner.cluster.scheduler.services == {}
        workers = runner.client.run(lambda dask_worker: [dask_worker.address, str(dask_worker.services),
                                                         hasattr(dask_worker, "http_server")])
        assert len(workers) == 2
        for where, services, http in workers.values():
            assert where.startswith("tls://127.0.0.1:") and services == "{}" and not http
        nannies = [w["nanny"] for w in runner.client.scheduler_info()["workers"].values()]
        ports = [_ports(address), *(_ports(w) for w in workers), *(_ports(n) for n in nannies)]
        assert not any(_speaks_http(port) for port in ports)
    finally:
        runner.close()


def test_the_dashboard_only_when_asked_and_only_on_localhost(setup, tmp_path):
    _, bundle, survey = setup
    with pytest.raises(ValueError, match=r"--dashboard goes with --workers N"):
        check_arguments(OPTIONS, workers=1, dashboard=True)
    with pytest.raises(ValueError, match=r"--dashboard goes with --workers N"):
        check_arguments(OPTIONS, workers=2, scheduler="tcp://somewhere:8786", dashboard=True)
    assert runtime_cli.build_parser().parse_args(_args(survey, bundle, tmp_path / "c.zarr", "--dashboard")).dashboard
    runner = DistributedRunner(2, None, RunContext("in", "out", "bundle", "sha", OPTIONS), dashboard=True)
    try:
        server = runner.cluster.scheduler.http_server
        bound = {sock.getsockname()[0] for sock in server._sockets.values()}
        assert bound == {"127.0.0.1"}
        assert runner.dashboard.startswith("http://127.0.0.1:")
        assert _speaks_http(server.port)
    finally:
        runner.close()


# ---------------------------------------------------------------------------- (3) one writer per catalogue
def test_two_runs_creating_one_catalogue_one_wins_and_the_catalogue_is_whole(setup, tmp_path):
    work, bundle, survey = setup
    out = tmp_path / "race.zarr"
    runs = [_slow_run(work, _args(survey, bundle, out)) for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in runs]
    codes = sorted(r[3] for r in results)
    assert codes == [0, 2], results
    (winner,) = [r for r in results if r[3] == 0]
    (loser,) = [r for r in results if r[3] == 2]
    assert f"is being written by pid {winner[0]} on host {socket.gethostname()} since" in loser[2], loser[2]
    assert "Traceback" not in loser[2] and loser[2].count("error:") == 1
    assert "120 rows; 15 chunks run, 0 already done" in winner[1]
    assert check_catalogue(out, survey).ok
    assert len(CatalogueStore.open(out).attrs["runs"]) == 1
    _no_debris(out)


def test_two_resumes_one_refuses_and_the_history_has_the_runs_that_happened(setup, tmp_path):
    work, bundle, survey = setup
    out = tmp_path / "resume.zarr"
    process_survey(survey, bundle, out, OPTIONS, chunk=8, progress=False)
    reference = CatalogueStore.open(out).column("teff")
    zarr.open_group(str(out), mode="r+")["_done"][3:] = False  # as if interrupted after 3 of 15 shards
    runs = [_slow_run(work, _args(survey, bundle, out, "--resume"), delay=0.5) for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in runs]
    assert sorted(r[3] for r in results) == [0, 2], results
    (winner,) = [r for r in results if r[3] == 0]
    (loser,) = [r for r in results if r[3] == 2]
    assert f"is being written by pid {winner[0]}" in loser[2], loser[2]
    assert "12 chunks run, 3 already done" in winner[1]
    history = CatalogueStore.open(out).attrs["runs"]
    assert [run["tasks"] for run in history] == [15, 12]
    np.testing.assert_array_equal(CatalogueStore.open(out).column("teff"), reference)
    assert check_catalogue(out, survey).ok
    _no_debris(out)


def _write_lock(out: Path, pid: int, host: str) -> None:
    lock_path(out).write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01T00:00:00+00:00",
                                          "command": "runtime process --output earlier", "token": "earlier"}))


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(setup, tmp_path):
    _, bundle, survey = setup
    out = tmp_path / "stale.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(out, dead.pid, socket.gethostname())
    r = _run(_args(survey, bundle, out))
    assert r.returncode == 0, r.stderr
    assert f"took over the lock of {out} left by pid {dead.pid} on this host" in r.stderr
    assert check_catalogue(out, survey).ok
    _no_debris(out)


def test_a_live_or_foreign_lock_is_refused_naming_its_run(setup, tmp_path):
    _, bundle, survey = setup
    out = tmp_path / "held.zarr"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(out, alive.pid, socket.gethostname())
        with pytest.raises(OutputLockedError, match=rf"is being written by pid {alive.pid} on host .* since "
                           r"2026-01-01T00:00:00\+00:00 \(runtime process --output earlier\); wait for it"):
            process_survey(survey, bundle, out, OPTIONS, progress=False)
    finally:
        alive.kill()
        alive.wait()
    _write_lock(out, 1, "another-host.example")
    r = _run(_args(survey, bundle, out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is being written by pid 1 on host another-host.example" in r.stderr
    assert f"remove {lock_path(out)} and re-run" in r.stderr
    assert not out.exists() and lock_path(out).exists()  # never taken over, nothing created


def test_the_lock_is_released_on_interruption_and_the_catalogue_resumes(setup, tmp_path, monkeypatch):
    _, bundle, survey = setup
    out = tmp_path / "interrupted.zarr"
    import runtime.pipeline as pipeline

    def interrupted(todo, ctx, finished):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_run_in_process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process_survey(survey, bundle, out, OPTIONS, chunk=8, progress=False)
    assert not lock_path(out).exists()
    monkeypatch.undo()
    process_survey(survey, bundle, out, OPTIONS, chunk=8, progress=False, resume=True)
    assert check_catalogue(out, survey).ok
    with lock_output(out, "catalogue"), pytest.raises(OutputLockedError, match=rf"pid {os.getpid()}"):
        lock_output(out, "catalogue")  # the lock API on its own: a second holder is refused
    _no_debris(out)


def test_a_crash_while_creating_leaves_no_catalogue_under_its_name(setup, tmp_path):
    work, bundle, survey = setup
    out = tmp_path / "crash.zarr"
    r = subprocess.run([sys.executable, str(work / "crash_runtime.py"), *_args(survey, bundle, out)], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 9
    assert not out.exists()  # a half-made catalogue would be "resumed" or refused
    leftovers = [p.name for p in tmp_path.iterdir() if ".creating-" in p.name]
    assert len(leftovers) == 1
    r = _run(_args(survey, bundle, out))
    assert r.returncode == 0, r.stderr
    assert f"removed {tmp_path / leftovers[0]}" in r.stderr
    assert check_catalogue(out, survey).ok
    _no_debris(out)


# ---------------------------------------------------------------- (5) failing graphs found before any output
def _bundle_copy(bundle: Path, dest: Path, change) -> Path:
    shutil.copytree(bundle, dest)
    raw = json.loads((dest / "manifest.json").read_text())
    change(dest, raw)
    raw["files"] = hash_files(dest, raw)  # consistent: the identity check passes, only the graphs are bad
    (dest / "manifest.json").write_text(json.dumps(raw))
    load_bundle(dest, check_graphs=False)
    return dest


def _emulator_graph(path: Path, n_inputs: int, n_pixels: int) -> None:
    """A loadable emulator (labels (N, K) -> flux (N, P) = 1): the right interface, no physics."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.zeros((n_inputs, n_pixels), np.float32), "w")
    ones = numpy_helper.from_array(np.ones(n_pixels, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["labels", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["flux"])],
        "emulator", [helper.make_tensor_value_info("labels", TensorProto.FLOAT, [None, n_inputs])],
        [helper.make_tensor_value_info("flux", TensorProto.FLOAT, [None, n_pixels])], [weights, ones])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _with_emulator(graph: str, extra_input: bool = False):
    def change(dest: Path, raw: dict) -> None:
        names = [p["name"] for p in raw["parameters"]]
        n_pixels = raw["pixel_grid"]["n_pixels"]
        inputs = names + (["not_a_label"] if extra_input else [])
        if graph == "garbage":
            (dest / "emulator.onnx").write_bytes(os.urandom(4096))
        else:
            _emulator_graph(dest / "emulator.onnx", len(inputs), n_pixels - (graph == "short"))
        raw["emulator"] = {"file": "emulator.onnx", "inputs": inputs, "fill": {}, "model_error": 0.01,
                           "poor_fit_chi2": None}
    return change


def _with_int8_garbage(dest: Path, raw: dict) -> None:
    (dest / "hoisted_flow_int8.onnx").write_bytes(os.urandom(4096))
    raw["precisions"] = {"int8": {"files": {"hoisted_flow": "hoisted_flow_int8.onnx"},
                                  "verification": {"quantile_error": 0.01, "map_error": 0.01, "tolerance": 0.05}}}


@pytest.mark.parametrize("case, change, extra, message", [
    ("emulator garbage", _with_emulator("garbage"), [], r"emulator\.onnx"),
    ("emulator inputs", _with_emulator("good", extra_input=True), [], r"emulator inputs \['not_a_label'\]"),
    ("emulator width", _with_emulator("short"), [], r"emulator .* gives spectra of shape"),
    ("int8 garbage", _with_int8_garbage, ["--precision", "int8"], r"hoisted_flow_int8\.onnx"),
])
def test_a_bundle_whose_graphs_fail_stops_before_the_catalogue_exists(setup, tmp_path, case, change, extra,
                                                                       message):
    _, bundle, survey = setup
    broken = _bundle_copy(bundle, tmp_path / "bundle", change)
    out = tmp_path / "cat.zarr"
    r = _run(_args(survey, broken, out, *extra))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "error:" in x]
    assert line.startswith(f"runtime process: error: {broken}") and re.search(message, line), line
    assert not out.exists()
    _no_debris(out)


def test_a_distributed_run_checks_the_graphs_on_its_workers_first(setup, tmp_path):
    _, bundle, survey = setup
    broken = _bundle_copy(bundle, tmp_path / "bundle", _with_emulator("garbage"))
    out = tmp_path / "cat.zarr"
    start = time.perf_counter()
    with pytest.raises(BundleError, match=r"emulator\.onnx"):
        process_survey(survey, broken, out, OPTIONS, workers=2, progress=False)
    assert time.perf_counter() - start < 120
    assert not out.exists()
    _no_debris(out)
