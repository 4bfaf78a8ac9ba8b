"""Small helpers shared by the benchmark scripts (machine description, robust scatter)."""

from __future__ import annotations

import platform
import subprocess

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
