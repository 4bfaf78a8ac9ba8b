"""Which precision of the flow a run uses: ``--precision auto|fp32|int8|fp16|bf16``.

A bundle always holds the fp32 graphs (the reference) and may hold reduced-precision variants of the hoisted
flow, each with the error ``export quantize`` measured against fp32 on posterior quantiles and MAPs of real
grid spectra, in units of the posterior's 68 % half-width. A variant is used only when its recorded error is
within the tolerance (``runtime.bundle.VARIANT_TOLERANCE``), unless the user forces it.

``auto``: int8 on the CPU (per-channel int8 weights through ONNX Runtime's integer kernels are 2-5x faster
than fp32 there), fp16 on CUDA and TensorRT (tensor cores), each only if the bundle has that variant verified;
fp32 otherwise.

Engines (``--engine auto|onnxruntime|openvino``, :func:`choose_engine`): onnxruntime runs everything above;
openvino (CPU only) runs the fp32 graphs in fp32 or, by its precision hint, in bf16 on the CPU's matrix units,
verified like a variant (``engine_precisions`` in the manifest). ``auto`` on a CPU, by what was measured on one
core of each kind (``benchmarks/results/throughput*.md``), where OpenVINO is installed and the bundle records a
bf16 verification within the tolerance:

* AMX (Intel Sapphire Rapids and later): openvino bf16, 2.5x ONNX Runtime int8 at the paper's size;
* AVX-512 BF16 without AMX (AMD Zen 4): ONNX Runtime int8 where the bundle has it verified (1.7x OpenVINO bf16
  at the paper's size), else openvino bf16 (1.6-1.9x ONNX Runtime fp32);
* no bf16 units: onnxruntime with its ``auto`` precision (bf16 would be emulated in software, ~20x slower).

Without OpenVINO or a verified bf16 that is onnxruntime's ``auto``, exactly what ran before engines could be
chosen: so ``auto`` is never slower than before on any of these CPUs. OpenVINO fp32 is not chosen by ``auto``:
it is not consistently faster than ONNX Runtime fp32 (0.96x on the default model on an AMX Xeon, 1.25x on an Ice
Lake Xeon, 1.26x on Zen 4); ``--engine openvino`` picks it where it pays.
"""

from __future__ import annotations

from spectra.contracts.manifest import ENGINE_PRECISIONS, VARIANTS

from .bundle import Bundle, BundleError
from .engines import amx_hardware, bf16_hardware, openvino_available, require_engine

__all__ = ["PRECISIONS", "choose_engine", "choose_precision", "engine_verification", "variant_file",
           "within_tolerance"]

PRECISIONS = ("auto", "fp32", *VARIANTS)
_AUTO = {"cpu": ("int8",), "cuda": ("fp16", "bf16"), "tensorrt": ("fp16", "bf16")}


def within_tolerance(check: dict) -> bool:
    """A variant's measured quantile and MAP differences from fp32 are both within its tolerance."""
    return max(check["quantile_error"], check["map_error"]) <= check["tolerance"]


def _verified(variant: dict) -> tuple[bool, str]:
    check = variant.get("verification")
    if not check:
        why = variant.get("unverified_reason", "no verification recorded")
        return False, f"it is unverified ({why})"
    if not within_tolerance(check):
        return False, (f"its recorded error against fp32 is {check['quantile_error']:.3f} (quantiles) / "
                       f"{check['map_error']:.3f} (MAP) half-widths, above the tolerance {check['tolerance']}")
    return True, ""


def choose_precision(bundle: Bundle, requested: str, device: str, force: bool = False) -> str:
    """The precision to run on ``device`` (cpu, cuda, tensorrt) for ``--precision requested``; raises a
    :class:`BundleError` naming the bundle when the request cannot be honoured."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    variants = bundle.manifest.precisions
    if requested == "auto":
        for name in _AUTO.get(device, ()):
            if name in variants and _verified(variants[name])[0]:
                return name
        return "fp32"
    if requested == "fp32":
        return "fp32"
    if requested not in variants:
        have = ", ".join(["fp32", *variants]) or "fp32"
        raise BundleError(f"{bundle.path}: the bundle has no {requested} variant (it has {have}); add one with "
                          f"`python -m export quantize --bundle {bundle.path} --precision {requested}`")
    ok, why = _verified(variants[requested])
    if not ok and not force:
        raise BundleError(f"{bundle.path}: refusing the {requested} variant: {why}. Use --force-precision to run "
                          "it anyway (the catalogue records that it was forced)")
    return requested


def variant_file(bundle: Bundle, precision: str, key: str, default: str) -> str:
    """File name of graph ``key`` in ``precision`` (``default``, the fp32 file, for fp32)."""
    if precision == "fp32":
        return default
    return bundle.manifest.precisions[precision]["files"].get(key, default)


def engine_verification(bundle: Bundle, engine: str, precision: str) -> dict | None:
    """The recorded check against fp32 of what ``engine`` runs at ``precision`` (None for the references:
    onnxruntime fp32 and any engine's fp32, which run the fp32 graphs unchanged)."""
    if precision == "fp32":
        return None
    if engine == "onnxruntime":
        return (bundle.manifest.precisions.get(precision) or {}).get("verification")
    return (bundle.manifest.engine_precisions.get(engine, {}).get(precision) or {}).get("verification")


def _engine_precision(bundle: Bundle, engine: str, requested: str, force: bool) -> str:
    """The precision a non-reference engine runs for ``--precision requested`` (BundleError if refused)."""
    known = ENGINE_PRECISIONS.get(engine, ())
    if requested == "auto":
        return "bf16" if "bf16" in known and bf16_hardware() and _engine_ok(bundle, engine, "bf16") else "fp32"
    if requested == "fp32":
        return "fp32"
    if requested not in known:
        raise BundleError(f"--engine {engine} runs fp32 or {', '.join(known)}, not {requested}; int8 and fp16 run "
                          "on --engine onnxruntime")
    entry = bundle.manifest.engine_precisions.get(engine, {}).get(requested)
    if entry is None:
        ok, why = False, "no verification recorded"
    else:
        ok, why = _verified(entry)
    if not ok and not force:
        raise BundleError(f"{bundle.path}: refusing {engine} {requested}: {why}. Verify it with `python -m export "
                          f"quantize --bundle {bundle.path} --engine {engine} --precision {requested}`, or use "
                          "--force-precision to run it anyway (the catalogue records that it was forced)")
    return requested


def _engine_ok(bundle: Bundle, engine: str, precision: str) -> bool:
    entry = bundle.manifest.engine_precisions.get(engine, {}).get(precision)
    return entry is not None and _verified(entry)[0]


def choose_engine(bundle: Bundle, engine: str, precision: str, device: str,
                  force: bool = False) -> tuple[str, str]:
    """(engine, precision) to run on ``device`` for ``--engine engine --precision precision`` (see the module
    docstring); BundleError or ValueError (one line) when the request cannot be honoured."""
    if engine != "auto":
        require_engine(engine)
    if device != "cpu":
        if engine == "openvino":
            raise ValueError(f"--engine openvino runs on the CPU; --device {device} runs on onnxruntime")
        return "onnxruntime", choose_precision(bundle, precision, device, force)
    if engine == "auto":
        openvino_bf16 = openvino_available() and bf16_hardware() and _engine_ok(bundle, "openvino", "bf16")
        # AVX-512 BF16 alone: ONNX Runtime's verified int8 is faster than OpenVINO bf16 (module docstring)
        beats_onnxruntime = amx_hardware() or choose_precision(bundle, "auto", device) == "fp32"
        if openvino_bf16 and (precision == "bf16" or (precision == "auto" and beats_onnxruntime)):
            return "openvino", "bf16"
        engine = "onnxruntime"
    if engine == "onnxruntime":
        return engine, choose_precision(bundle, precision, device, force)
    return engine, _engine_precision(bundle, engine, precision, force)
