"""The classical peer: a χ² best fit of each spectrum with the same forward model (the TSFitPy analogue).

Per spectrum: a grid pre-search (the training grid's spectra as a library: the row of lowest χ² gives
the start), then Levenberg-Marquardt-style trust-region least squares (``scipy.optimize.least_squares``)
in T_eff, log g, [Fe/H], v_mic and v_broad, each model spectrum synthesised on the fly with PySME through
the same 4MOST-ification as the grid (``spectra.synth.synthesis.SpectrumMaker``). [X/Fe] are held at 0, as a
parameter-only synthesis fit does (TSFitPy fits abundances line by line afterwards).

Cost control: the R 80 000 working-grid synthesis depends on (T_eff, log g, [Fe/H], v_mic) only and is
cached; v_broad steps reuse it (broadening and rebinning only). The Jacobian is a forward difference with
fixed steps. Errors: sqrt(diag((JᵀJ)⁻¹)) scaled by the reduced χ² when above 1.

Used by ``benchmarks/accuracy.py``; can also run alone on survey rows:

    python benchmarks/peer_chi2.py --survey S.zarr --library GRID.h5 --rows 0 1 2 --out fits.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from spectra.forward.degrade import fourmostify
from spectra.stores.gridstore import GridReader
from spectra.synth.synthesis import SpectrumMaker, labels_from_values

PARAMS = ("teff", "logg", "fe_h", "vmic", "vbroad")
STEPS = np.array([25.0, 0.05, 0.03, 0.1, 0.02])  # forward-difference steps (v_broad in log10)
LOWER = np.array([4000.0, 1.0, -5.0, 0.5, 0.0])
UPPER = np.array([7000.0, 5.0, 0.5, 2.0, 2.0])


@dataclass
class Chi2Fit:
    values: list[float]
    errors: list[float]
    start: list[float]
    chi2_reduced: float
    syntheses: int
    seconds: float
    status: str


class Chi2Fitter:
    def __init__(self, library: str | Path, maker: SpectrumMaker | None = None):
        self.maker = maker or SpectrumMaker()
        with GridReader(library) as grid:
            done = np.flatnonzero(grid.done)
            self.library_flux = grid.hr_flux()[done]  # on the HR pixels of the model and the survey: no margin
            names = grid.label_names
            self.library_labels = grid.labels[done][:, [names.index(p) for p in PARAMS]]
        self._cache: dict[tuple, np.ndarray] = {}
        self.syntheses = 0

    def _working(self, teff: float, logg: float, feh: float, vmic: float) -> np.ndarray:
        key = tuple(np.round([teff, logg, feh, vmic], 6))
        if key not in self._cache:
            labels = labels_from_values(float(teff), float(logg), float(feh), vmic=float(vmic), vbroad=1.0)
            self._cache[key], _ = self.maker.working_spectrum(labels)
            self.syntheses += 1
        return self._cache[key]

    def model(self, u: np.ndarray) -> np.ndarray:
        """u = (teff, logg, feh, vmic, log10 vbroad) -> HR spectrum."""
        working = self._working(*u[:4])
        return fourmostify(working, 10.0 ** u[4], self.maker.working, self.maker.hr)

    def fit(self, flux: np.ndarray, snr: float, max_iterations: int = 12) -> Chi2Fit:
        start_time = time.perf_counter()
        self._cache.clear()
        self.syntheses = 0
        sigma = np.abs(flux) / (snr * np.sqrt(self.maker.hr.step))
        sigma = np.where(sigma > 0, sigma, np.median(sigma))
        chi2_library = (((self.library_flux - flux) / sigma) ** 2).sum(axis=1)
        start = self.library_labels[int(np.argmin(chi2_library))].copy()
        u0 = np.array([*start[:4], np.log10(start[4])])

        def residual(u):
            return (flux - self.model(u)) / sigma

        def jacobian(u):
            base = residual(u)
            columns = []
            for k, step in enumerate(STEPS):
                v = u.copy()
                v[k] = v[k] + step if v[k] + step <= UPPER[k] else v[k] - step
                columns.append((residual(v) - base) / (v[k] - u[k]))
            return np.column_stack(columns)

        status = "ok"
        try:
            result = least_squares(residual, u0, jac=jacobian, bounds=(LOWER, UPPER), x_scale=STEPS * 4,
                                   max_nfev=max_iterations, method="trf")
            u, jac, cost = result.x, result.jac, 2 * result.cost
            status = result.message
        except Exception as exc:  # a failed synthesis (atmosphere coverage...) ends this fit, not the run
            u, jac, cost, status = u0, None, float("nan"), f"failed: {exc}"
        dof = max(flux.size - len(PARAMS), 1)
        red = float(cost / dof) if np.isfinite(cost) else float("nan")
        errors = [float("nan")] * len(PARAMS)
        if jac is not None:
            try:
                cov = np.linalg.inv(jac.T @ jac) * max(red, 1.0)
                errors = list(np.sqrt(np.diag(cov)))
            except np.linalg.LinAlgError:
                pass
        values = [*u[:4], 10.0 ** u[4]]
        errors[4] = errors[4] * np.log(10) * values[4] if np.isfinite(errors[4]) else float("nan")
        return Chi2Fit([float(v) for v in values], [float(e) for e in errors], [float(v) for v in start], red,
                       self.syntheses, time.perf_counter() - start_time, str(status))


def main() -> None:
    import zarr

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--survey", required=True)
    parser.add_argument("--library", required=True, help="grid used as the pre-search library (training grid)")
    parser.add_argument("--rows", type=int, nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    survey = zarr.open_group(args.survey, mode="r")
    fitter = Chi2Fitter(args.library)
    results = {}
    out = Path(args.out)
    if out.exists():
        results = json.loads(out.read_text())  # resume: rows already fitted are kept
    for row in args.rows:
        if str(row) in results:
            continue
        fit = fitter.fit(survey["flux"][row].astype(float), float(survey["snr"][row]))
        results[str(row)] = {"source_id": int(survey["source_id"][row]), **asdict(fit)}
        out.write_text(json.dumps(results, indent=1))
        print(f"row {row}: {dict(zip(PARAMS, np.round(fit.values, 3), strict=True))} "
              f"{fit.syntheses} syntheses, {fit.seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
