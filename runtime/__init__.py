"""runtime: model bundles, ONNX Runtime posterior sampling and survey processing; no torch here.

The Python API for notebooks (``runtime.api``): :func:`read_spectrum`, :func:`prepare`, :func:`load_model` and the
:class:`Model` it returns (``infer``: catalogue rows; ``posterior``: one spectrum's samples), :class:`Posterior`.
They are imported on first use (PEP 562), so ``import runtime.bundle`` or any other submodule stays as light as it
was and no import cycle runs through this file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Model, Posterior, load_model, prepare, read_spectrum

__all__ = ["Model", "Posterior", "load_model", "prepare", "read_spectrum"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
