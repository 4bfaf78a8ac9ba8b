"""ONNX Runtime execution providers: pick one, and make sure it is really used.

A GPU session silently falls back to the CPU when its provider fails to load; we therefore disable
the CPU fallback on GPU runs and check the provider the session actually got.
"""

from __future__ import annotations

__all__ = ["DEVICES", "resolve_providers", "session_options"]

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def resolve_providers(device: str, cache_dir: str | None = None, cuda_graph: bool = False,
                      trt_profile: dict[str, tuple[str, str, str]] | None = None) -> tuple[str, list]:
    """(device actually used, provider list) for ``--device``; ``auto`` prefers CUDA, then CPU.

    ``cuda_graph``: capture the session's kernels once as a CUDA graph and replay it (CUDA provider; the caller
    must then run with the same bound buffers and shapes every time, see ``runtime.binding``).
    ``trt_profile``: {input: (min, opt, max) shape strings like ``1x4096x13``}, TensorRT's explicit optimisation
    profile for the batch axis; engines and timing caches are kept in ``cache_dir`` (next to the bundle), since
    building an engine takes minutes.
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if _PROVIDER["cuda"] in available else "cpu"
    provider = _PROVIDER[device]
    if provider not in available:
        raise ValueError(f"--device {device}: ONNX Runtime here offers {available}; install the 'gpu' extra "
                         "(onnxruntime-gpu, and TensorRT 10 for tensorrt) in an environment without onnxruntime")
    cuda_options = {"device_id": 0}
    if cuda_graph:
        cuda_options["enable_cuda_graph"] = "1"
    if device == "tensorrt":
        options = {"device_id": 0, "trt_fp16_enable": False, "trt_engine_cache_enable": bool(cache_dir),
                   "trt_timing_cache_enable": bool(cache_dir)}
        if cache_dir:
            options["trt_engine_cache_path"] = cache_dir
            options["trt_timing_cache_path"] = cache_dir
        if trt_profile:
            for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
                options[key] = ",".join(f"{name}:{shapes[i]}" for name, shapes in trt_profile.items())
        return device, [(provider, options), (_PROVIDER["cuda"], {"device_id": 0})]
    if device == "cuda":
        return device, [(provider, cuda_options)]
    return device, [provider]


def session_options(device: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if device != "cpu":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return options
