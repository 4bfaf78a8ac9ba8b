"""The CPU inference engines (ONNX Runtime, OpenVINO) and what this CPU's matrix units can do.

ONNX Runtime's CPU provider runs fp32 and int8 (VNNI) kernels but no bf16 MatMul, so the bf16 units of current
server CPUs (Intel AMX since Sapphire Rapids, AVX-512 BF16 on AMD Zen 4 and Intel Cooper Lake) sit idle under it.
OpenVINO reads the bundle's ONNX graphs as they are and, with ``INFERENCE_PRECISION_HINT=bf16``, runs their
MatMuls on those units (fp32 accumulation): 2.5x ONNX Runtime int8 at the paper's size on an AMX Xeon (issue 23).
On a CPU without bf16 hardware OpenVINO emulates bf16 in software, ~20x slower than fp32: the hint is then
correct but never fast, which is why ``--engine auto`` looks at the CPU's flags (:func:`bf16_hardware`).

:class:`OpenVinoSession` puts an OpenVINO compiled model behind the one ONNX Runtime session method the sampler
and the re-simulation use (``run``), so that the rest of the runtime does not care which engine computes.
The callers (``runtime.sampler``) make every OpenVINO call with one fixed shape (the flow one spectrum at a time,
the once-per-spectrum graphs in blocks of ``OPENVINO_BLOCK`` spectra): OpenVINO may pick other kernels (another
accumulation order) for other batch shapes, and a spectrum's result must not depend on its batch-mates.
"""

from __future__ import annotations

import threading
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from spectra.contracts.manifest import ENGINES

__all__ = ["CPU_FEATURES", "ENGINE_CHOICES", "OpenVinoSession", "bf16_hardware", "cpu_features", "cpu_model",
           "engine_version", "openvino_available", "require_engine"]

#: ``--engine`` values: auto picks per machine (``runtime.precision.choose_engine``)
ENGINE_CHOICES = ("auto", *ENGINES)
#: the CPU flags that decide the fastest precision, as Linux spells them in /proc/cpuinfo
CPU_FEATURES = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


@cache
def cpu_features() -> tuple[str, ...]:
    """The :data:`CPU_FEATURES` this CPU has (from ``/proc/cpuinfo``; empty where it cannot be read), recorded
    in the catalogue next to the engine and precision that ran."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in CPU_FEATURES if f in flags)
    return ()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), as ``lscpu`` shows it; "" where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def bf16_hardware(features: tuple[str, ...] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AMX or AVX-512 BF16): only then is bf16 worth choosing."""
    have = cpu_features() if features is None else features
    return "amx_bf16" in have or "avx512_bf16" in have


def amx_hardware(features: tuple[str, ...] | None = None) -> bool:
    """Whether the CPU has AMX tiles for bf16 (Intel Sapphire Rapids and later): there OpenVINO bf16 beats ONNX
    Runtime's int8 (2.5x at the paper's size); with AVX-512 BF16 alone (AMD Zen 4) it does not (0.6x), though it
    still beats fp32 (``benchmarks/results/throughput*.md``)."""
    have = cpu_features() if features is None else features
    return "amx_bf16" in have


def openvino_available() -> bool:
    return find_spec("openvino") is not None


def engine_version(engine: str) -> str:
    """The installed version of ``engine``'s Python package ("" if it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(engine)
    except PackageNotFoundError:
        return ""


def require_engine(engine: str) -> None:
    """ValueError (one line) unless ``engine`` can run here."""
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
    if engine == "openvino" and not openvino_available():
        raise ValueError("--engine openvino: the openvino package is not installed (pip install 'cinn4most[openvino]')")


class OpenVinoSession:
    """One ONNX graph compiled by OpenVINO for the CPU, called like an ONNX Runtime session.

    Arguments:
        path: the ONNX file (read as it is; OpenVINO converts it in memory).
        precision: ``fp32`` or ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``).
        static: compile the graph again for each new set of input shapes (fixed shapes: faster kernels); for
            callers whose shapes repeat, such as the sampler's one spectrum x n samples per call.
        threads: OpenVINO's inference threads; 0 means one. OpenVINO splits some small calls (a single spectrum's
            features, the few samples recomputed in fp32) differently over different thread counts, which changes
            the last bit of a result, so "all cores" would make a row depend on the machine it ran on; a run's
            rows are the same whenever ``--threads`` is (in process or on workers). Many cores: ``--workers``.

    One infer request per calling thread (requests are not thread-safe; the compiled model is), and outputs are
    copied out of the request's buffers, which the next call overwrites. Thread pinning is off: OpenVINO pins its
    threads to the first cores of the process's affinity, so two worker processes of one node each pinned their
    single thread to the same core (measured: 2 workers x 1 thread ran at 0.66x of 1 x 2 on a 2-core Zen 4).
    """

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int = 0, static: bool = False):
        import openvino as ov

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"the openvino engine runs fp32 or bf16, not {precision!r}")
        self.config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                          "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                          "ENABLE_CPU_PINNING": False, "INFERENCE_NUM_THREADS": threads or 1}
        self.path, self.precision, self.static = Path(path), precision, static
        self.core = ov.Core()
        # static: compiled on first use for each set of shapes (the dynamic compilation would go unused)
        self.compiled = None if static else self.core.compile_model(str(path), "CPU", self.config)
        outputs = (self.compiled or self.core.read_model(str(path))).outputs
        self.output_names = [port.get_any_name() for port in outputs]
        self._by_shape: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compiled_for(self, feeds: dict[str, np.ndarray]):
        """The graph compiled for these input shapes when ``static`` (else the dynamic one).

        OpenVINO's CPU kernels for a graph reshaped to fixed shapes are faster than for dynamic ones (bf16 flow of the
        paper's size on AMX, 4096 samples: 10.1 against 7.5 spectra/s), and a caller that always sends the same
        shapes (one spectrum x the run's samples) compiles once per worker."""
        if not self.static:
            return self.compiled
        key = tuple(sorted((name, a.shape) for name, a in feeds.items()))
        with self._lock:
            compiled = self._by_shape.get(key)
            if compiled is None:
                model = self.core.read_model(str(self.path))
                model.reshape({name: list(a.shape) for name, a in feeds.items()})
                compiled = self._by_shape[key] = self.core.compile_model(model, "CPU", self.config)
        return compiled

    def _request(self, compiled):
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        return request

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (copies) named ``output_names`` (all when None), as ``onnxruntime.InferenceSession.run``."""
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        compiled = self._compiled_for(feeds)
        results = self._request(compiled).infer(feeds)
        wanted = output_names or self.output_names
        return [np.array(results[compiled.output(name)], copy=True) for name in wanted]

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU ({self.precision})"]

