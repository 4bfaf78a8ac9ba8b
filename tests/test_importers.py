import numpy as np
import pytest

from spectra import schema
from spectra.stores.gridstore import GridReader
from spectra.synth.importers import import_tsfitpy

from conftest import line_spectrum


def _write_tsfitpy(folder, n=3):
    folder.mkdir()
    wave = np.arange(5150.0, 6800.0, 0.01)
    rows = ["specname,rv,teff,logg,feh,vmic,Mg_Fe,Ca_Fe,A_Li"]
    for i in range(n):
        flux = line_spectrum(wave, seed=i, n_lines=2000)
        if i == 1:
            flux[100] = np.nan  # NLTE convergence failure, as TSFitPy warns
        header = ("#Generated using TurboSpectrum and TSFitPy wrapper\n#teff: 5000\n"
                  "#Wavelength Normalised_flux Unnormalised_flux\n")
        body = "\n".join(f"{w:.3f}  {f:.6f}  {f * 5e6:.1f}" for w, f in zip(wave, flux, strict=True))
        (folder / f"{i}.spec").write_text(header + body)
        rows.append(f"{i}.spec,0.0,{5000 + 100 * i},{4.0},{-0.5},{1.2},{0.2},{0.1},{2.0}")
    rows.append("9.spec,0.0,5000,4.0,-0.5,1.2,0.0,0.0,1.0")  # file missing: TS failed
    (folder / "spectra_parameters.csv").write_text("\n".join(rows) + "\n")


def test_import_tsfitpy_grid(tmp_path):
    _write_tsfitpy(tmp_path / "ts")
    report = import_tsfitpy(tmp_path / "ts", tmp_path / "grid.h5", vbroad=5.0, progress=False)
    assert report.written == 2 and set(report.skipped) == {"1.spec", "9.spec"}
    assert "non-finite" in report.skipped["1.spec"] and "9.spec" in report.skipped["9.spec"]
    with GridReader(tmp_path / "grid.h5") as grid:
        assert list(grid.done) == [True, False, True, False]
        names = schema.label_names()
        lab = grid.labels[2]
        assert lab[names.index("teff")] == 5200 and lab[names.index("mg_fe")] == pytest.approx(0.2)
        assert lab[names.index("li_fe")] == pytest.approx(2.0 - 1.05 + 0.5)
        assert lab[names.index("vbroad")] == 5.0 and lab[names.index("o_fe")] == 0.0
        flux = grid.flux[0]
        assert np.all(np.isfinite(flux)) and 0.3 < flux.mean() < 1.0
        assert grid.attrs["engine"].startswith("turbospectrum")


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"spectra_parameters.csv not found"):
        import_tsfitpy(tmp_path, tmp_path / "g.h5")
