"""Reduced-precision variants of the hoisted flow, each verified against fp32 on real posteriors.

``python -m export quantize --bundle B --precision int8 fp16 bf16 [--grid GRID]`` writes, next to the fp32
``hoisted_flow.onnx``:

* ``hoisted_flow.int8.onnx`` — for CPUs: ONNX Runtime's dynamic quantization with signed, per-channel int8
  weights (``quantize_dynamic(weight_type=QInt8, per_channel=True)``); activations are quantized per call.
  Unsigned or per-tensor weights are slower and, per-tensor signed, inaccurate (deployment notes). Only the
  subnets' hidden layers are quantized; their thin input and output layers stay fp32 (:func:`thin_matmuls`).
* ``hoisted_flow.fp16.onnx`` — for GPUs: fp16 weights and arithmetic (``onnxconverter-common``), fp32
  inputs and outputs, with ``Exp``, ``Atan``, the log-Jacobian sums and the coupling arithmetic outside the
  subnets kept in fp32.
* ``hoisted_flow.bf16.onnx`` — for GPUs: every MatMul in bfloat16 (inputs and weights rounded to bf16, fp32
  accumulation as on tensor cores, output rounded to bf16), everything else fp32. ONNX Runtime's CPU provider
  has no bf16 MatMul, so it is verified through a numerically equivalent CPU graph (the same roundings as
  Casts around an fp32 MatMul); the manifest says so.

Verification (the manifest's ``precisions.<name>.verification``): posteriors of real grid spectra with noise at
several S/N, 4096 samples, the same latent draws for fp32 and the variant; for every spectrum and parameter the
differences of the five quantiles and of the MAP are divided by the fp32 posterior's 68 % half-width
((p84 - p16) / 2). The statistics and the rule they are judged by are ``runtime.precision``'s (``variant_check``,
``within_tolerance``): the 99th percentile of the quantile differences and the 95th of the MAP differences within
0.05 half-widths, no quantile beyond 0.10. Recorded beside them, for scale, the fp32 posteriors' own Monte-Carlo
scatter (``fp32_seed_scatter_*``: the same differences between fp32 and fp32 with another latent stream).
``runtime process`` refuses a variant that fails the rule unless forced.

``python -m export quantize --bundle B --engine openvino --precision bf16`` verifies, the same way, what another
engine computes from the unchanged fp32 graphs under its precision hint (no file is added), and records it in the
manifest's ``engine_precisions.openvino.bf16`` with the CPU it was measured on: on a CPU without bf16 units
OpenVINO emulates bf16 in software (slowly, with the same roundings), so the check can be made anywhere.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.bundle import hash_files, load_bundle, write_manifest
from runtime.precision import describe_check, posterior_differences, variant_check, within_tolerance
from spectra.contracts.manifest import HOISTED, VARIANTS

__all__ = ["Fp32Reference", "fp32_reference", "make_variant", "quantize_bundle", "quantize_engine", "thin_matmuls",
           "variant_errors", "verify_variant"]

_FP16_KEEP = ["Exp", "Atan", "ReduceSum", "Sum", "Log", "Div", "Sub", "Mul", "Neg", "Concat", "Gather", "Split"]


def thin_matmuls(model) -> list[str]:
    """MatMuls whose constant weight is thin (a dimension under half the flow's widest): the subnets' input layers
    (6-7 coupling inputs) and output layers (scale and shift). They stay fp32 in the int8 variant: they are ~13 % of
    the arithmetic, but per-tensor int8 activations over 4096 latent draws (tails to 4 sigma) and errors in the
    exponentiated scales are where dynamic quantization moved posteriors most (default model, PySME spectra: largest
    quantile error 0.052 -> 0.039 half-widths, MAP 0.0065 -> 0.0030, same speed). If every MatMul is thin (no hidden
    layer), none is kept: the variant would be fp32."""
    from onnx import numpy_helper

    shapes = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    weights = {n.name: shapes[n.input[1]] for n in model.graph.node
               if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2}
    if not weights:
        return []
    widest = max(max(shape) for shape in weights.values())
    thin = [name for name, shape in weights.items() if 2 * min(shape) < widest]
    return thin if len(thin) < len(weights) else []


def _int8(src: Path, dst: Path) -> None:
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice is for conv nets
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=thin_matmuls(onnx.load(str(src))))


def _fp16(src: Path, dst: Path) -> None:
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ValueError("the fp16 variant needs onnxconverter-common (pip install 'cinn4most[fp16]')") from None
    with warnings.catch_warnings():  # "number truncated to 1e-07": tiny weights flush to fp16's range, expected
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=_FP16_KEEP)
    _float_outputs(half)
    onnx.save(half, str(dst))


def _float_outputs(model) -> None:
    """Cast graph outputs left in fp16 back to fp32 (``keep_io_types`` misses outputs made by some op chains)."""
    from onnx import TensorProto, helper

    for output in model.graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = f"{output.name}/fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT))
        output.type.tensor_type.elem_type = TensorProto.FLOAT


def _bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _bf16(src: Path, dst: Path, emulate: bool = False) -> None:
    """MatMuls with constant weights in bf16; ``emulate``: the same roundings around fp32 MatMuls (runs on CPU)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            nodes.append(node)
            continue
        a, w_name = node.input
        weight = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        bits = _bf16_bits(weight)
        tag = node.name or w_name
        if emulate:
            rounded = (bits.astype(np.uint32) << 16).view(np.float32).reshape(weight.shape)
            inits[w_name].CopyFrom(numpy_helper.from_array(rounded, w_name))
            nodes += [helper.make_node("Cast", [a], [f"{tag}/a_bf16"], to=TensorProto.BFLOAT16),
                      helper.make_node("Cast", [f"{tag}/a_bf16"], [f"{tag}/a_r"], to=TensorProto.FLOAT),
                      helper.make_node("MatMul", [f"{tag}/a_r", w_name], [f"{tag}/y"]),
                      helper.make_node("Cast", [f"{tag}/y"], [f"{tag}/y_bf16"], to=TensorProto.BFLOAT16),
                      helper.make_node("Cast", [f"{tag}/y_bf16"], [node.output[0]], to=TensorProto.FLOAT)]
        else:
            tensor = helper.make_tensor(w_name, TensorProto.BFLOAT16, weight.shape, bits.tobytes(), raw=True)
            inits[w_name].CopyFrom(tensor)
            nodes += [helper.make_node("Cast", [a], [f"{tag}/a_bf16"], to=TensorProto.BFLOAT16),
                      helper.make_node("MatMul", [f"{tag}/a_bf16", w_name], [f"{tag}/y_bf16"]),
                      helper.make_node("Cast", [f"{tag}/y_bf16"], [node.output[0]], to=TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))


def make_variant(precision: str, src: Path, dst: Path, emulate: bool = False) -> None:
    """Write the ``precision`` variant of the fp32 graph ``src`` to ``dst``."""
    if precision == "int8":
        _int8(src, dst)
    elif precision == "fp16":
        _fp16(src, dst)
    elif precision == "bf16":
        _bf16(src, dst, emulate=emulate)
    else:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(VARIANTS)})")


def _test_spectra(bundle, grid: Path, n_spectra: int, snrs: tuple[float, ...], seed: int):
    """Noisy real grid spectra at each S/N (first ``n_spectra`` finished rows), in the bundle's convention."""
    from spectra.contracts.conventions import continuum_kind
    from spectra.forward.degrade import add_noise
    from spectra.stores.gridstore import GridReader

    with GridReader(grid) as reader:
        rows = np.flatnonzero(reader.done)[:n_spectra]
        clean = reader.hr_flux(rows).astype(float)
        attrs = dict(reader.attrs)
    if clean.shape[1] != bundle.manifest.n_pixels:
        raise ValueError(f"{grid}: {clean.shape[1]} pixels, the bundle expects {bundle.manifest.n_pixels}")
    rng = np.random.default_rng(seed)
    width = bundle.manifest.raw["pixel_grid"]["pixel_width"]
    flux = np.concatenate([add_noise(clean, np.full(len(rows), s), width, rng) for s in snrs])
    if bundle.manifest.continuum == "pseudo" and continuum_kind(attrs) != "pseudo":
        from spectra.forward.continuum import normalise

        flux = np.stack([normalise(bundle.wavelength, row) for row in flux])
    snr = np.repeat(np.asarray(snrs, dtype=float), len(rows))
    return flux.astype(np.float32), snr, len(rows)


@dataclass(frozen=True)
class Fp32Reference:
    """What every variant of one bundle is compared with: the noisy spectra, the fp32 posteriors and the fp32
    flow's own latent-stream scatter (fp32 against fp32 with ``seed + 1``)."""

    flux: np.ndarray
    snr: np.ndarray
    ids: np.ndarray
    n_rows: int
    posterior: object
    scatter: np.ndarray


_REFERENCES: dict[tuple, Fp32Reference] = {}


def _reference_key(bundle, grid: Path, n_spectra: int, snrs: tuple[float, ...], n_samples: int, seed: int) -> tuple:
    """The fp32 reference depends on the bundle's non-variant files (their recorded hashes), the grid file and the
    draw; a variant added to the manifest in between does not change it."""
    raw = bundle.manifest.raw
    variant_files = {name for entry in (raw.get("precisions") or {}).values()
                     for name in (entry.get("files") or {}).values()}
    fp32_files = tuple(sorted((k, v) for k, v in (raw.get("files") or {}).items() if k not in variant_files))
    stat = Path(grid).stat()
    return (str(Path(bundle.path).resolve()), fp32_files, str(Path(grid).resolve()), stat.st_size, stat.st_mtime_ns,
            n_spectra, tuple(snrs), n_samples, seed)


def fp32_reference(bundle, grid: Path, n_spectra: int, snrs: tuple[float, ...], n_samples: int,
                    seed: int) -> Fp32Reference:
    """The fp32 reference, computed once per process for the same inputs: ``export verify`` checks every variant
    and ``benchmarks/int8_exclusions.py`` many graphs against the same one (~35 s each on 2 cores)."""
    from runtime.sampler import OnnxPosterior

    key = _reference_key(bundle, grid, n_spectra, snrs, n_samples, seed)
    if key not in _REFERENCES:
        flux, snr, n_rows = _test_spectra(bundle, grid, n_spectra, snrs, seed)
        ids = np.arange(flux.shape[0]) + 1
        fp32 = OnnxPosterior(bundle, threads=1, summary="host")
        reference = fp32.posterior(flux, snr, ids, seed, n_samples)
        again = fp32.posterior(flux, snr, ids, seed + 1, n_samples)
        scatter = posterior_differences(reference.quantiles, reference.map, again.quantiles, again.map)[0]
        scatter = scatter[np.isfinite(scatter)]  # NaN where fp32 has no usable posterior
        if scatter.size == 0:
            raise ValueError(f"{grid}: no spectrum gave a usable fp32 posterior to compare against")
        _REFERENCES.clear()  # one bundle at a time: a process verifying another bundle needs no old reference
        _REFERENCES[key] = Fp32Reference(flux, snr, ids, n_rows, reference, scatter)
    return _REFERENCES[key]


def variant_errors(bundle_path: Path, precision: str, graph: Path | None, grid: Path, n_spectra: int = 24,
                   snrs: tuple[float, ...] = (250.0, 50.0, 20.0), n_samples: int = 4096, seed: int = 0,
                   engine: str = "onnxruntime") -> dict:
    """Posterior differences against onnxruntime fp32, in half-widths, of ``graph`` (a variant of the bundle's
    hoisted flow) or, with ``engine`` other than onnxruntime (``graph`` None), of that engine at ``precision``."""
    from runtime.sampler import OnnxPosterior

    bundle = load_bundle(bundle_path, check_graphs=False)
    ref = fp32_reference(bundle, Path(grid), n_spectra, snrs, n_samples, seed)
    candidate = OnnxPosterior(bundle, threads=1, summary="host", precision=precision, flow_graph=graph,
                              engine=engine)
    other = candidate.posterior(ref.flux, ref.snr, ref.ids, seed, n_samples)
    reference = ref.posterior
    try:
        errors = variant_check(*posterior_differences(reference.quantiles, reference.map, other.quantiles, other.map))
    except ValueError:  # fp32 had usable posteriors (above), so the variant gave no finite value anywhere
        raise ValueError(f"{graph or engine}: the {precision} variant gave no finite posterior on {grid}") from None
    # the scale: the same differences between fp32 and fp32 with an independent latent stream
    errors.update({"fp32_seed_scatter_median": float(np.median(ref.scatter)),
                   "fp32_seed_scatter_p99": float(np.percentile(ref.scatter, 99)),
                   "fp32_seed_scatter_max": float(ref.scatter.max()),
                   "spectra": int(ref.n_rows), "snr": list(snrs), "samples": n_samples,
                   "grid": str(Path(grid).resolve()), "provider": candidate.providers[0]})
    return errors


def verify_variant(bundle_path: Path, precision: str, graph: Path, grid: Path, n_spectra: int = 24) -> dict:
    """{"verification": errors[, "verified_by": how]} of the variant file ``graph`` against the bundle's fp32 flow.
    bf16 is checked through its CPU emulation (same roundings), made from the fp32 graph in a temporary folder."""
    if precision != "bf16":
        return {"verification": variant_errors(bundle_path, precision, graph, grid, n_spectra=n_spectra)}
    tmp = Path(tempfile.mkdtemp())
    try:
        emulated = tmp / "bf16_emulated.onnx"
        make_variant("bf16", bundle_path / HOISTED["flow"], emulated, emulate=True)
        return {"verification": variant_errors(bundle_path, precision, emulated, grid, n_spectra=n_spectra),
                "verified_by": "emulated on the CPU: a graph with the same bf16 roundings (MatMul inputs, weights and "
                               "outputs) around fp32 MatMuls; ONNX Runtime's CPU provider has no bf16 MatMul"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def quantize_bundle(bundle_path: str | Path, precisions: list[str], grid: str | Path | None = None,
                    n_spectra: int = 24, overwrite: bool = False, log=print) -> dict:
    """Add verified ``precisions`` variants to a bundle (see the module docstring); returns the manifest entry."""
    bundle_path = Path(bundle_path)
    bundle = load_bundle(bundle_path, check_graphs=False)
    raw = dict(bundle.manifest.raw)
    if not bundle.has_hoisted:
        raise ValueError(f"{bundle_path}: no hoisted flow graph to quantize; re-export the bundle")
    grid = _verification_grid(raw, grid)
    variants = dict(raw.get("precisions") or {})
    source = bundle_path / HOISTED["flow"]
    for precision in precisions:
        target = bundle_path / HOISTED["flow"].replace(".onnx", f".{precision}.onnx")
        if precision in variants and not overwrite:
            raise FileExistsError(f"{bundle_path}: already has a {precision} variant; add --overwrite to remake it")
        if target.exists() and precision not in variants:
            raise FileExistsError(f"{target} exists and is not a variant this bundle lists; remove it first")
        entry = {"files": {"hoisted_flow": target.name}, "for": "cpu" if precision == "int8" else "cuda, tensorrt"}
        if precision == "int8":
            import onnx

            kept = thin_matmuls(onnx.load(str(source)))
            entry["fp32_layers"] = (f"{len(kept)} thin MatMuls (subnet input and output layers) kept fp32"
                                    if kept else "none: every MatMul quantized")
        staging = Path(tempfile.mkdtemp())
        try:  # made and verified outside the bundle, which holds only listed files
            made = staging / target.name
            make_variant(precision, source, made)
            log(f"{precision}: verifying against fp32 on {grid.name} ...")
            entry.update(verify_variant(bundle_path, precision, made, grid, n_spectra))
            shutil.move(made, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        check = entry["verification"]
        passed = within_tolerance(check)
        check["passed"] = passed
        _log_check(log, precision, check)
        variants[precision] = entry
        raw["precisions"] = variants  # listed at once: the bundle is consistent after every variant
        raw["files"] = hash_files(bundle_path, raw)
        write_manifest(bundle_path, raw)
    return variants


def quantize_engine(bundle_path: str | Path, engine: str, precisions: list[str], grid: str | Path | None = None,
                    n_spectra: int = 24, overwrite: bool = False, log=print) -> dict:
    """Verify ``engine`` at ``precisions`` (its precision hint on the fp32 graphs) against onnxruntime fp32 and
    record each in the manifest's ``engine_precisions`` (see the module docstring); returns that engine's entry."""
    from runtime.engines import bf16_hardware, cpu_features, cpu_model, engine_version, require_engine
    from spectra.contracts.manifest import ENGINE_PRECISIONS

    require_engine(engine)
    bundle_path = Path(bundle_path)
    raw = dict(load_bundle(bundle_path, check_graphs=False).manifest.raw)
    known = ENGINE_PRECISIONS.get(engine, ())
    unknown = [p for p in precisions if p not in known]
    if unknown:
        raise ValueError(f"--engine {engine} verifies {', '.join(known) or 'nothing'} (its fp32 is the fp32 graphs "
                         f"unchanged), not {', '.join(unknown)}")
    grid = _verification_grid(raw, grid)
    entries = {k: dict(v) for k, v in (raw.get("engine_precisions") or {}).items()}
    mine = entries.setdefault(engine, {})
    for precision in precisions:
        if precision in mine and not overwrite:
            raise FileExistsError(f"{bundle_path}: already records {engine} {precision}; add --overwrite to remeasure")
        log(f"{engine} {precision}: verifying against onnxruntime fp32 on {grid.name} ...")
        check = variant_errors(bundle_path, precision, None, grid, n_spectra=n_spectra, engine=engine)
        check["passed"] = within_tolerance(check)
        hardware = precision != "bf16" or bf16_hardware()
        mine[precision] = {
            "verification": check, "hint": f"INFERENCE_PRECISION_HINT={precision} on the fp32 graphs",
            "verified_on": {"cpu": cpu_model(), "cpu_features": list(cpu_features()),
                            f"{engine}": engine_version(engine),
                            "arithmetic": "hardware" if hardware else "emulated in software (no bf16 units)"}}
        _log_check(log, f"{engine} {precision}", check)
        raw["engine_precisions"] = entries
        raw["files"] = hash_files(bundle_path, raw)
        write_manifest(bundle_path, raw)
    return mine


def _verification_grid(raw: dict, grid: str | Path | None) -> Path:
    """The grid of real spectra to verify on: ``grid``, else the bundle's training grid (FileNotFoundError)."""
    path = Path(grid) if grid else Path(raw["provenance"].get("grid", ""))
    if not path.is_file():
        raise FileNotFoundError(f"real spectra are needed to verify the variants: the training grid "
                                f"{str(path)!r} is not here; give --grid GRID (a spectra grid on the bundle's "
                                "pixel grid)")
    return path


def _log_check(log, what: str, check: dict) -> None:
    log(f"{what}: {describe_check(check)} (fp32 against itself with another latent stream: "
        f"{check['fp32_seed_scatter_p99']:.3f} at the 99th percentile): "
        f"{'within' if check['passed'] else 'ABOVE'} the tolerance")
