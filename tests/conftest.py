"""Shared fixtures: paths to the shared data and small synthetic grids that need no synthesis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spectra import schema
from spectra.prior import draw_labels
from spectra.stores.gridstore import GridWriter
from spectra.wavegrid import hr_grid

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not available")
    return path


def rehash_bundle(bundle: Path) -> None:
    """Record the current sha256 of every file a bundle's manifest lists: what a crafted (or re-exported) bundle
    does to pass the integrity check, so tests can probe what lies beyond it."""
    import json

    from runtime.bundle import hash_files

    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = hash_files(bundle, manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def line_spectrum(wave: np.ndarray, seed: int = 0, n_lines: int = 400) -> np.ndarray:
    """A continuum-normalised spectrum of Gaussian absorption lines (no synthesis needed)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(wave.min(), wave.max(), n_lines)
    depths = rng.uniform(0.05, 0.6, n_lines)
    flux = np.ones_like(wave)
    for c, d in zip(centres, depths, strict=True):
        near = np.abs(wave - c) < 1.0
        flux[near] *= 1.0 - d * np.exp(-0.5 * ((wave[near] - c) / 0.08) ** 2)
    return flux


@pytest.fixture
def fake_grid(tmp_path: Path) -> Path:
    """A 6-row grid file with line spectra instead of syntheses (row 4 left unfinished)."""
    path = tmp_path / "fake.h5"
    grid = hr_grid()
    labels = draw_labels(6, seed=1)
    attrs = {"seed": 1, "prior": "test", "engine": "fake", "engine_version": "0", "linelist_sha256": "none"}
    with GridWriter(path, 6, grid, attrs) as writer:
        for i in range(6):
            if i != 4:
                writer.write_row(i, line_spectrum(grid.wave, seed=i), labels[i], "interpolated", 0.0)
    assert len(labels[0]) == len(schema.ALL_LABELS)
    return path


@pytest.fixture
def labelled_grid(tmp_path: Path) -> Path:
    """A 60-row grid whose line depths depend on T_eff, log g and [Fe/H]: learnable without synthesis."""
    path = tmp_path / "labelled.h5"
    grid = hr_grid()
    labels = draw_labels(60, seed=2)
    names = schema.label_names()
    base_a = 1.0 - line_spectrum(grid.wave, seed=10, n_lines=300)  # depth patterns
    base_b = 1.0 - line_spectrum(grid.wave, seed=11, n_lines=300)
    attrs = {"seed": 2, "prior": "test", "engine": "fake", "engine_version": "0", "linelist_sha256": "none"}
    with GridWriter(path, 60, grid, attrs) as writer:
        for i, row in enumerate(labels):
            teff, logg, feh = row[names.index("teff")], row[names.index("logg")], row[names.index("fe_h")]
            a = 0.3 + 0.25 * (feh + 5) / 5.5 - 0.15 * (teff - 5500) / 1500
            b = 0.2 + 0.1 * (logg - 3)
            flux = np.clip(1.0 - a * base_a - b * base_b, 0.05, 1.0)
            writer.write_row(i, flux, row, "interpolated", 0.0)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The `tiny` cINN trained for 2 epochs on the labelled grid, exported: (folder, grid, run, bundle).

    Shared by the export, runtime, trust and scale tests (read-only: tests that alter a bundle copy it first).
    Trained without an input mask (``input_mask=None``: every pixel, no manifest entry, as bundles made before the
    mask existed), so that these tests keep the model whose chance-dependent numbers they pin (its int8 variant
    verifies; the same 2-epoch recipe with the mask landed at a largest difference of 0.055 half-widths, above the
    0.05 that the rule before session 22 held the maximum to);
    ``tests/test_input_mask.py`` trains and checks the masked one.
    """
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from dataclasses import replace

    from export.onnx import export_bundle
    from training.config import CONFIGS
    from training.fit import fit

    tmp = tmp_path_factory.mktemp("tiny")
    grid = labelled_grid.__wrapped__(tmp)
    fit(grid, replace(CONFIGS["tiny"], epochs=2, input_mask=None), tmp / "run", device="cpu", progress=False)
    return tmp, grid, tmp / "run", export_bundle(tmp / "run", tmp / "bundle", bias_correction="paper")
