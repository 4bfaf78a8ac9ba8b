"""Large ONNX weights stored as float16 and computed in float32: half the file size of a graph (the repository's
data budget counts every shipped byte) at the same arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["half_weights"]


def half_weights(path: Path, min_size: int = 1 << 20, exact_only: bool = False) -> int:
    """Store the graph's large float32 weights (>= ``min_size`` values) as float16 with a Cast back to float32:
    half the file, the same float32 arithmetic (ONNX Runtime folds the Cast when the session loads). Returns the
    number of weights converted.

    ``exact_only``: convert only weights whose every value is a float16 value already (the cINN's PCA basis,
    rounded so when it is made: ``training.stream.pca_basis``), so the graph computes exactly what it did; others
    stay float32. Without it (the emulator's ``--weights fp16``) the rounding is part of the export and measured
    by its parity check."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    converted = 0
    for init in list(model.graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_size:
            continue
        values = numpy_helper.to_array(init)
        half_values = values.astype(np.float16)
        if exact_only and not np.array_equal(half_values.astype(np.float32), values):
            continue
        half_name = f"{init.name}/fp16"
        half = numpy_helper.from_array(half_values, half_name)
        model.graph.initializer.remove(init)
        model.graph.initializer.append(half)
        model.graph.node.insert(0, helper.make_node("Cast", [half_name], [init.name], to=TensorProto.FLOAT))
        converted += 1
    if converted:
        onnx.save(model, str(path))
    return converted
