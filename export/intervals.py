"""Fit a bundle's interval calibration (``runtime.intervals``) from catalogues of spectra with known labels.

``python -m export calibrate-intervals --bundle B --catalog C [C2 ...] --survey S [S2 ...]``: each ``C`` is
``runtime process`` of the synthetic survey ``S`` beside it (made by ``spectra survey``, so it has ``truth``; several
noise draws of the same stars are pooled) with this very bundle, at a few S/N values spanning the trained range
(every row at one of them, the same values in each). The factors are fitted per parameter at each of those S/N
values, smoothed in log S/N, and stored in the manifest with what they were fitted on, the unsmoothed values, and
the coverage before and after. Fit on spectra the model is not judged on: ``scripts/build-default-model.sh`` uses
the PySME training spectra, never the held-out set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.bundle import Bundle, hash_files, load_bundle, write_manifest
from runtime.intervals import COVERAGE, IntervalCalibration, fit_scales, side_ratio, smooth_in_log_snr
from spectra.contracts.quantiles import QUANTILE_LEVELS

__all__ = ["calibrate_intervals", "labelled_rows"]

DEFINITION = ("reported quantile q = p50 + s(S/N) * (q_flow - p50) per parameter; s linear in log S/N between the "
              "listed S/N values, constant beyond; MAP and p50 unchanged (runtime.intervals)")


def calibrate_intervals(bundle_path: str | Path, catalogs: Sequence[str | Path], surveys: Sequence[str | Path]) -> dict:
    """Fit and store the factors from the paired ``catalogs`` and ``surveys``; returns the manifest entry."""
    bundle_path = Path(bundle_path)
    bundle = load_bundle(bundle_path, check_graphs=False)
    manifest = bundle.manifest
    if len(catalogs) != len(surveys) or not catalogs:
        raise ValueError(f"{len(catalogs)} catalogue(s) for {len(surveys)} survey(s): give one survey per catalogue")
    parts = [labelled_rows(bundle, Path(c), Path(s)) for c, s in zip(catalogs, surveys, strict=True)]
    truth, _, quantiles, snr = (np.concatenate(x) for x in zip(*parts, strict=True))
    nodes = np.unique(np.round(snr[np.isfinite(snr)], 3))
    current = manifest.interval_calibration
    raw_scales = fit_scales(truth, quantiles, snr, nodes, current)
    scales = smooth_in_log_snr(nodes, raw_scales)
    ok = np.isfinite(quantiles).all(axis=(1, 2))
    new = IntervalCalibration(nodes, scales, tuple(manifest.names))
    # the catalogues' quantiles carry `current`: undo it, then apply the new factors, to report before and after
    flow = quantiles if current is None else current.undo(quantiles, snr)
    before = _coverage(truth[ok], flow[ok], snr[ok], nodes)
    after = _coverage(truth[ok], new.apply(flow[ok], snr[ok], manifest.lower, manifest.upper), snr[ok], nodes)
    entry = {"definition": DEFINITION, "coverage": COVERAGE, "snr": [float(v) for v in nodes],
             "scale": {p: [round(float(v), 4) for v in scales[:, j]] for j, p in enumerate(manifest.names)},
             "scale_unsmoothed": {p: [round(float(v), 4) for v in raw_scales[:, j]]
                                  for j, p in enumerate(manifest.names)},
             "fitted_on": {"surveys": [str(Path(s).resolve()) for s in surveys],
                           "catalogs": [str(Path(c).resolve()) for c in catalogs],
                           "rows_per_snr": [int(((np.abs(snr / v - 1) < 1e-3) & ok).sum()) for v in nodes]},
             "coverage68_flow": before, "coverage68_calibrated": after}
    raw = dict(manifest.raw)
    raw["interval_calibration"] = entry
    raw["files"] = hash_files(bundle_path, raw)
    write_manifest(bundle_path, raw)
    return entry


def labelled_rows(bundle: Bundle, catalog: Path, survey: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """(truth (N, D), MAP (N, D), quantiles (N, Q, D), S/N (N,)) in the bundle's parameter order, from a catalogue
    made with ``bundle`` (as it is now) from the synthetic ``survey``; one line naming what does not fit."""
    import zarr

    from catalog.writers import CatalogueStore

    names = bundle.manifest.names
    store = CatalogueStore.open(catalog)
    if store.attrs.get("bundle_sha256") != bundle.sha256:
        raise ValueError(f"{catalog} was not made with {bundle.path} as it is now (bundle sha256 "
                         f"{str(store.attrs.get('bundle_sha256', ''))[:16]}... against {bundle.sha256[:16]}...): "
                         "process the survey with this bundle first")
    root = zarr.open_group(str(survey), mode="r")
    if "truth" not in root:
        raise ValueError(f"{survey}: no truth array; calibrate on a synthetic survey (spectra survey)")
    if not np.array_equal(np.asarray(root["source_id"][:]), store.column("source_id")):
        raise ValueError(f"{catalog}: rows are not those of {survey}")
    truth_names = list(root["truth"].attrs["names"])
    missing = [p for p in names if p not in truth_names]
    if missing:
        raise ValueError(f"{survey}: truth has no {', '.join(missing)}")
    truth = np.asarray(root["truth"][:])[:, [truth_names.index(p) for p in names]]
    quantiles = np.stack([np.stack([store.column(p + q.suffix) for p in names], axis=1)
                          for q in QUANTILE_LEVELS], axis=1).astype(float)
    estimates = np.stack([store.column(p) for p in names], axis=1).astype(float)
    return truth, estimates, quantiles, store.column("snr").astype(float)


def _coverage(truth: np.ndarray, quantiles: np.ndarray, snr: np.ndarray, nodes: np.ndarray) -> dict[str, list]:
    """Fraction of rows with the truth inside p16-p84, per S/N value (rows) and parameter (columns)."""
    inside = side_ratio(truth, quantiles) <= 1
    return {f"{v:g}": [round(float(x), 3) for x in inside[np.abs(snr / v - 1) < 1e-3].mean(axis=0)] for v in nodes}
