"""Which precision of the flow a run uses: ``--precision auto|fp32|int8|fp16|bf16``.

A bundle always holds the fp32 graphs (the reference) and may hold reduced-precision variants of the hoisted
flow, each with the error ``export quantize`` measured against fp32 on posterior quantiles and MAPs of real
grid spectra, in units of the posterior's 68 % half-width. A variant is used only when its recorded error is
within the tolerance (``runtime.bundle.VARIANT_TOLERANCE``), unless the user forces it.

``auto``: int8 on the CPU (per-channel int8 weights through ONNX Runtime's integer kernels are 2-5x faster
than fp32 there), fp16 on CUDA and TensorRT (tensor cores), each only if the bundle has that variant verified;
fp32 otherwise.
"""

from __future__ import annotations

from spectra.contracts.manifest import VARIANTS

from .bundle import Bundle, BundleError

__all__ = ["PRECISIONS", "choose_precision", "variant_file", "within_tolerance"]

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
