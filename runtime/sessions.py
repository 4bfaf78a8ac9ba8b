"""ONNX Runtime execution providers: pick one, and make sure it is really used.

A GPU session silently falls back to the CPU when its provider fails to load; we therefore disable
the CPU fallback on GPU runs and check the provider the session actually got (:class:`ProviderError` if not).
``--device auto`` that settles on the CPU on a machine that seems to have a GPU says so (``notify``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["DEVICES", "ProviderError", "check_provider", "engine_cache_dir", "gpu_evidence", "resolve_providers",
           "session_options"]

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class ProviderError(ValueError, RuntimeError):
    """A session did not get the execution provider asked for (a GPU provider listed by ONNX Runtime whose libraries
    did not load). A ValueError, so the command line shows one line and exit status 2 instead of a traceback; also
    a RuntimeError, as it was before, for callers that catch that."""


def gpu_evidence() -> str:
    """Why this machine seems to have an NVIDIA GPU ("" if nothing suggests one): the NVIDIA driver's
    ``/proc/driver/nvidia`` or ``nvidia-smi`` on the PATH, or the onnxruntime-gpu package installed.

    Used only to decide whether ``--device auto`` falling back to the CPU is worth a line: on a plain CPU machine the
    CPU is the expected answer and a note every run would be noise; where a GPU is plausible, running on the CPU is
    usually a wrong install (plain onnxruntime, or both packages) that costs a factor of ten in speed unnoticed.
    """
    from importlib.metadata import PackageNotFoundError, version

    if Path("/proc/driver/nvidia").exists():
        return "the NVIDIA driver is loaded"
    if shutil.which("nvidia-smi"):
        return "nvidia-smi is installed"
    try:
        version("onnxruntime-gpu")
    except PackageNotFoundError:
        return ""
    return "onnxruntime-gpu is installed"


def _auto_note(available: list[str], evidence: str) -> str:
    return (f"--device auto runs on the CPU: {evidence}, but ONNX Runtime here offers {available} (no "
            "CUDAExecutionProvider); for the GPU install the 'gpu' extra (onnxruntime-gpu) in an environment without "
            "onnxruntime, or give --device cpu to choose the CPU")


def resolve_providers(device: str, cache_dir: str | None = None, cuda_graph: bool = False,
                      trt_profile: dict[str, tuple[str, str, str]] | None = None,
                      notify: Callable[[str], None] | None = None) -> tuple[str, list]:
    """(device actually used, provider list) for ``--device``; ``auto`` prefers CUDA, then CPU.

    ``notify``: told (one line) when ``auto`` settles on the CPU although :func:`gpu_evidence` finds a GPU; the
    driver passes it, once per run (workers resolve ``auto`` again and stay quiet).

    ``cuda_graph``: capture the session's kernels once as a CUDA graph and replay it (CUDA provider; the caller
    must then run with the same bound buffers and shapes every time, see ``runtime.binding``).
    ``trt_profile``: {input: (min, opt, max) shape strings like ``1x4096x13``}, TensorRT's explicit optimisation
    profile for the batch axis; engines and timing caches are kept in ``cache_dir`` (:func:`engine_cache_dir`),
    since building an engine takes minutes.
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if _PROVIDER["cuda"] in available else "cpu"
        evidence = gpu_evidence() if device == "cpu" and notify is not None else ""
        if evidence and notify is not None:
            notify(_auto_note(available, evidence))
    provider = _PROVIDER[device]
    if provider not in available:
        raise ValueError(f"--device {device}: ONNX Runtime here offers {available}; install the 'gpu' extra "
                         "(onnxruntime-gpu, and TensorRT 10 for tensorrt) in an environment without onnxruntime")
    cuda_options: dict[str, int | str] = {"device_id": 0}
    if cuda_graph:
        cuda_options["enable_cuda_graph"] = "1"
    if device == "tensorrt":
        options: dict[str, int | str | bool] = {
            "device_id": 0, "trt_fp16_enable": False, "trt_engine_cache_enable": bool(cache_dir),
            "trt_timing_cache_enable": bool(cache_dir)}
        if cache_dir:
            Path(cache_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            options["trt_engine_cache_path"] = cache_dir
            options["trt_timing_cache_path"] = cache_dir
        if trt_profile:
            for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
                options[key] = ",".join(f"{name}:{shapes[i]}" for name, shapes in trt_profile.items())
        return device, [(provider, options), (_PROVIDER["cuda"], {"device_id": 0})]
    if device == "cuda":
        return device, [(provider, cuda_options)]
    return device, [provider]


def engine_cache_dir(bundle_sha256: str) -> str:
    """Where TensorRT keeps the engines it built for one bundle: the user's cache folder
    (``$CINN4MOST_CACHE`` or ``$XDG_CACHE_HOME/cinn4most`` or ``~/.cache/cinn4most``), one private (0700) folder
    per bundle identity.

    Why not beside the bundle: a serialised engine is code TensorRT runs, and the bundle's identity covers only the
    files its manifest lists (a bundle holds nothing else). Keyed by identity, an engine is never reused for
    another model, and a read-only bundle folder still gets a cache.
    """
    root = os.environ.get("CINN4MOST_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cinn4most")
    return str(Path(root) / "tensorrt" / bundle_sha256[:32])


def check_provider(session, wanted: str, device: str) -> None:
    """:class:`ProviderError` unless ``session`` runs on ``wanted`` (ONNX Runtime may hand back a CPU session when a
    GPU provider fails to load, even with the CPU fallback disabled in some versions)."""
    got = session.get_providers()
    if not got or got[0] != wanted:
        raise ProviderError(f"--device {device}: ONNX Runtime gave {got} instead of {wanted} (its GPU libraries did "
                            "not load: check the CUDA/cuDNN versions onnxruntime-gpu needs, or run with --device "
                            "cpu)")


def session_options(device: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if device != "cpu":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return options
