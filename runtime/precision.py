"""Which precision of the flow a run uses: ``--precision auto|fp32|int8|fp16|bf16``.

A bundle always holds the fp32 graphs (the reference) and may hold reduced-precision variants of the hoisted
flow, each with the error ``export quantize`` measured against fp32 on posterior quantiles and MAPs of real
grid spectra, in units of the posterior's 68 % half-width. A variant is used only when its recorded error is
within the tolerance (:func:`within_tolerance`), unless the user forces it.

**The rule** (:func:`variant_check` computes the statistics, :func:`within_tolerance` judges them; one definition
for ``export quantize``, ``export verify``, the runtime and the tests): over every spectrum x parameter x quantile of
the verification set, the 99th percentile of the quantile differences and the 95th percentile of the MAP differences
are at most ``runtime.bundle.VARIANT_TOLERANCE`` (0.05 half-widths), and no single quantile difference exceeds
``VARIANT_WORST_TOLERANCE`` (0.10). Until session 22 the single largest difference had to be within 0.05; that
maximum over ~4700 differences sits in the tails of nearly Gaussian high-S/N posteriors, where the fp32 quantile's
own Monte-Carlo error at 4096 samples is about as large, so it judged the sampling more than the arithmetic. The
verification also records that Monte-Carlo scatter (``fp32_seed_scatter_*``: fp32 against fp32 with another latent
stream) to put the variant's differences in scale. A record made before the rule (no ``quantile_error_p99``) is
judged by the old, stricter one.

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

import numpy as np

from spectra.contracts.manifest import ENGINE_PRECISIONS, VARIANTS

from .bundle import VARIANT_TOLERANCE, VARIANT_WORST_TOLERANCE, Bundle, BundleError
from .engines import amx_hardware, bf16_hardware, openvino_available, require_engine

__all__ = ["MAP_PERCENTILE", "PRECISIONS", "QUANTILE_PERCENTILE", "RULE", "choose_engine", "choose_precision",
           "describe_check", "engine_verification", "posterior_differences", "variant_check", "variant_file",
           "within_tolerance"]

PRECISIONS = ("auto", "fp32", *VARIANTS)
_AUTO = {"cpu": ("int8",), "cuda": ("fp16", "bf16"), "tensorrt": ("fp16", "bf16")}


#: the percentile of a variant's quantile differences held to VARIANT_TOLERANCE
QUANTILE_PERCENTILE = 99
#: the percentile of its MAP differences held to VARIANT_TOLERANCE: the MAP is one sample out of 4096, and slightly
#: different densities may pick a neighbouring sample of nearly equal density
MAP_PERCENTILE = 95
RULE = (f"{QUANTILE_PERCENTILE}th percentile of the quantile differences and {MAP_PERCENTILE}th percentile of the MAP "
        f"differences <= tolerance, largest quantile difference <= worst_tolerance")


def half_widths(quantiles) -> np.ndarray:
    """The 68 % half-widths ((p84 - p16) / 2) of posteriors' quantiles (N, Q, D) -> (N, D): the unit every variant
    difference is measured in."""
    from spectra.contracts import quantiles as levels

    q = np.asarray(quantiles, dtype=float)
    return 0.5 * (q[:, levels.index("p84")] - q[:, levels.index("p16")])


def posterior_differences(reference_quantiles, reference_map, quantiles, map_) -> tuple[np.ndarray, np.ndarray]:
    """|variant - fp32| of the quantiles (N, Q, D) and MAPs (N, D), in units of the fp32 posterior's 68 % half-width
    ((p84 - p16) / 2, quantile levels of ``spectra.contracts.quantiles``). NaN where fp32 has no usable posterior
    (nothing to compare against); +inf where fp32 has one and the variant gives a value that is not finite (a
    failure :func:`variant_check` counts, never drops)."""
    q, m = np.asarray(reference_quantiles, dtype=float), np.asarray(reference_map, dtype=float)
    other_q, other_m = np.asarray(quantiles, dtype=float), np.asarray(map_, dtype=float)
    half = half_widths(q)  # (N, D)
    usable = np.isfinite(half) & (half > 0) & np.isfinite(q).all(axis=1)
    half = np.where(usable, half, np.nan)
    dq = np.abs(other_q - q) / half[:, None, :]
    dmap = np.abs(other_m - m) / half
    dq[~np.isfinite(other_q) & usable[:, None, :]] = np.inf
    dmap[~np.isfinite(other_m) & usable & np.isfinite(m)] = np.inf
    return dq, dmap


def variant_check(quantile_errors, map_errors) -> dict:
    """The verification statistics of a variant from its differences to fp32 in half-widths (arrays of any shape,
    or lists of them, e.g. from :func:`posterior_differences`). NaN entries (no usable fp32 posterior) are left
    out; infinite ones (the variant gave no finite value where fp32 did) are counted in ``nonfinite``, and any
    fails the rule."""
    dq = np.concatenate([np.asarray(a, dtype=float).ravel() for a in _pieces(quantile_errors)])
    dmap = np.concatenate([np.asarray(a, dtype=float).ravel() for a in _pieces(map_errors)])
    nonfinite = int(np.isinf(dq).sum() + np.isinf(dmap).sum())
    dq, dmap = dq[np.isfinite(dq)], dmap[np.isfinite(dmap)]
    if dq.size == 0 or dmap.size == 0:
        raise ValueError("no finite difference to judge the variant by")
    return {"quantile_error": float(dq.max()), "nonfinite": nonfinite,
            "quantile_error_p99": float(np.percentile(dq, QUANTILE_PERCENTILE)),
            "quantile_error_median": float(np.median(dq)),
            "map_error": float(np.percentile(dmap, MAP_PERCENTILE)), "map_error_max": float(dmap.max()),
            "map_error_median": float(np.median(dmap)),
            "tolerance": VARIANT_TOLERANCE, "worst_tolerance": VARIANT_WORST_TOLERANCE, "rule": RULE,
            "map_statistic": f"{MAP_PERCENTILE}th percentile over spectra x parameters",
            "unit": "fraction of the fp32 posterior's 68 % half-width"}


def _pieces(values) -> list:
    """``values`` as a list of arrays: a list or tuple of arrays of different shapes stays a list."""
    return list(values) if isinstance(values, (list, tuple)) else [values]


def within_tolerance(check: dict) -> bool:
    """A variant's recorded differences from fp32 pass this runtime's rule (the module docstring). The tolerances
    are this software's, not the ones the record names: a manifest cannot loosen them."""
    if "quantile_error_p99" not in check:  # recorded before session 22: the largest difference had to pass
        return max(check["quantile_error"], check["map_error"]) <= VARIANT_TOLERANCE
    return (check.get("nonfinite", 0) == 0 and check["quantile_error_p99"] <= VARIANT_TOLERANCE
            and check["map_error"] <= VARIANT_TOLERANCE and check["quantile_error"] <= VARIANT_WORST_TOLERANCE)


def describe_check(check: dict) -> str:
    """One line: a variant's recorded differences against the rule."""
    if "quantile_error_p99" not in check:
        return (f"quantiles differ from fp32 by at most {check['quantile_error']:.3f} half-widths, MAP "
                f"{check['map_error']:.3f} (tolerance {VARIANT_TOLERANCE} on both)")
    failed = (f"{check['nonfinite']} values not finite where fp32's are; "
              if check.get("nonfinite", 0) else "")
    return (f"{failed}quantiles differ from fp32 by {check['quantile_error_p99']:.3f} half-widths at the "
            f"{QUANTILE_PERCENTILE}th percentile (tolerance {VARIANT_TOLERANCE}), {check['quantile_error']:.3f} at "
            f"most ({VARIANT_WORST_TOLERANCE}), MAP {check['map_error']:.3f} ({VARIANT_TOLERANCE})")


def _verified(variant: dict) -> tuple[bool, str]:
    check = variant.get("verification")
    if not check:
        why = variant.get("unverified_reason", "no verification recorded")
        return False, f"it is unverified ({why})"
    if not within_tolerance(check):
        return False, f"its recorded error is above the tolerance: {describe_check(check)}"
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
