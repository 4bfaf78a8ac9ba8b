"""Small helpers shared by the benchmark scripts (machine description, robust scatter, survey subsets)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np


def machine() -> str:
    """CPU model (from lscpu) and platform, recorded in every report."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{model}; {platform.platform()}"


def robust_sigma(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of the finite values (NaN if none)."""
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else float("nan")


def survey_subset(survey: Path, rows: int, tmp: Path) -> Path:
    """The first ``rows`` rows of ``survey`` (at most all of them) as a survey of their own under ``tmp``: the
    same flux, S/N, ids, pixels and attributes, made once and reused."""
    import zarr

    root = zarr.open_group(str(survey), mode="r")
    rows = min(rows, root["flux"].shape[0])
    out_path = tmp / f"survey_{rows}.zarr"
    if out_path.exists():
        return out_path
    out = zarr.open_group(str(out_path), mode="w")
    for key in ("flux", "snr", "source_id"):
        data = root[key][:rows]
        out.create_array(key, data=data, chunks=(min(256, rows), *data.shape[1:]))
    out.create_array("wavelength", data=root["wavelength"][:])
    out.attrs.update(dict(root.attrs))
    return out_path
