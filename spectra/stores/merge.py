"""``spectra merge``: several surveys (e.g. one ingest per instrument) -> one survey for ``runtime process``.

Surveys merge when they share the pixel grid and the continuum convention (a model is trained for one) and
their ``source_id`` values are distinct (give each ingest its own ``--first-id``). Every per-row array is
carried over; one that only some inputs have is filled for the others (empty text, NaN, 0) so that rows from
a synthetic survey and an observed one can sit together. ``truth`` is kept only when every input has it with
the same label names. Rows are copied a chunk at a time: memory does not grow with the survey.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import zarr

from ..common.outputs import claim_output
from ..contracts.conventions import continuum_kind
from ..contracts.survey import check_flux_chunk
from .survey import SURVEY_FORMAT
from .survey_reader import ZarrSurvey

__all__ = ["merge_surveys"]


def _open(path: Path) -> zarr.Group:
    if not path.exists():
        raise FileNotFoundError(f"survey {path} not found")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for non-stores
        raise ValueError(f"{path}: not a readable Zarr survey ({exc})") from None
    if root.attrs.get("format") != SURVEY_FORMAT or "flux" not in root:
        raise ValueError(f"{path}: not a survey made by `spectra survey` or `spectra ingest` "
                         f"(format {root.attrs.get('format')!r})")
    ZarrSurvey(path)  # the reader's limits (chunk sizes, row counts, codecs) before any array is read whole
    return root


def _fill(dtype) -> object:
    if dtype.kind in "OTU":
        return ""
    if dtype.kind == "f":
        return np.nan
    return 0


def merge_surveys(inputs: list[str | Path], out: str | Path, chunk: int = 256, overwrite: bool = False) -> Path:
    """Concatenate the rows of ``inputs`` (in order) into a new survey at ``out``."""
    if len(inputs) < 2:
        raise ValueError("give at least two surveys to merge")
    if chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    paths = [Path(p) for p in inputs]
    roots = [_open(p) for p in paths]
    first = roots[0]
    wave = first["wavelength"][:]
    check_flux_chunk(chunk, wave.size)
    conventions = [continuum_kind(dict(r.attrs)) for r in roots]
    kinds = set(conventions)
    if len(kinds) > 1:
        raise ValueError("the surveys are normalised differently (" + ", ".join(
            f"{p}: {c}" for p, c in zip(paths, conventions, strict=True)) + "); a model expects one convention")
    for path, root in zip(paths[1:], roots[1:], strict=True):
        other = root["wavelength"][:]
        if other.shape != wave.shape or np.max(np.abs(other - wave)) > 1e-6:
            raise ValueError(f"{path}: pixel grid differs from {paths[0]}'s; surveys must share one grid")
    ids = np.concatenate([r["source_id"][:] for r in roots])
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = unique[counts > 1]
        raise ValueError(f"source_id {', '.join(map(str, dup[:5]))}{' ...' if dup.size > 5 else ''} occur in more "
                         "than one survey; re-ingest with distinct --first-id values")
    sizes = [r["flux"].shape[0] for r in roots]
    n = int(sum(sizes))
    row_arrays: dict[str, tuple] = {}
    for root, size in zip(roots, sizes, strict=True):
        for name, arr in root.arrays():
            if name != "wavelength" and arr.shape and arr.shape[0] == size and name not in row_arrays:
                row_arrays[name] = (arr.shape[1:], arr.dtype)
    if "truth" in row_arrays and not all(
            "truth" in r and list(r["truth"].attrs.get("names", [])) == list(first["truth"].attrs.get("names", []))
            for r in roots):
        del row_arrays["truth"]
    out = claim_output(Path(out), "survey", (SURVEY_FORMAT,), overwrite=overwrite)
    dest = zarr.open_group(str(out), mode="w-")
    for name, (tail, dtype) in row_arrays.items():
        dest.create_array(name, shape=(n, *tail), chunks=(chunk, *tail), dtype=dtype, fill_value=_fill(dtype))
        source = next(r for r in roots if name in r)
        dest[name].attrs.update(dict(source[name].attrs))
    dest.create_array("wavelength", data=wave)
    dest["wavelength"].attrs.update(dict(first["wavelength"].attrs))
    start = 0
    for root, size in zip(roots, sizes, strict=True):
        for a in range(0, size, chunk):
            b = min(a + chunk, size)
            for name in row_arrays:
                if name in root:
                    dest[name][start + a:start + b] = root[name][a:b]
        start += size
    dest.attrs.update({
        "format": SURVEY_FORMAT, "kind": "merged", "continuum_kind": kinds.pop(),
        "continuum": str(first.attrs.get("continuum", "")), "merged_from": [str(p.resolve()) for p in paths],
        "rows_per_input": sizes, "inputs": [dict(r.attrs) for r in roots],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })
    return out
