"""Grids stored with a wavelength margin (issue 20): training-side readers see the 25 200 HR pixels, rotation runs on
the margin before the crop so that the window edges see real spectrum, and grids without a margin give exactly
what they gave before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spectra import schema
from spectra.forward.degrade import C_KMS
from spectra.forward.margin import hr_index
from spectra.forward.rotation import Rotator, _Window, hr_rotator
from spectra.prior import draw_labels
from spectra.stores.derived import rotate_grid
from spectra.stores.gridstore import GridReader, GridWriter
from spectra.wavegrid import GRID_MARGIN, HR_WINDOWS, WavelengthGrid, hr_grid, hr_pixels
from training.data import GridData

ROOT = Path(__file__).resolve().parents[1]
EDGES = np.array([edge for _, lo, hi in HR_WINDOWS for edge in (lo, hi)])


def edge_spectrum(wave: np.ndarray, seed: int) -> np.ndarray:
    """A continuum-normalised spectrum of Gaussian lines, a function of wavelength alone (the same lines whatever the
    pixels): lines all over, and strong ones at every HR window edge, 1 Å and 0.1 Å outside and 0.3 Å inside; the
    outside ones exist only in a margin, and a rotation carries them into the HR edge pixels."""
    rng = np.random.default_rng(seed)
    centres = np.concatenate([rng.uniform(EDGES.min() - 10.0, EDGES.max() + 10.0, 600),
                              [c for e in EDGES for c in (e - 1.0, e - 0.1, e + 0.3, e + 0.1, e + 1.0)]])
    depths = np.concatenate([rng.uniform(0.05, 0.6, 600), np.full(5 * EDGES.size, 0.7)])
    flux = np.ones_like(wave)
    for c, d in zip(centres, depths, strict=True):
        near = np.abs(wave - c) < 1.0
        flux[near] *= 1.0 - d * np.exp(-0.5 * ((wave[near] - c) / 0.1) ** 2)
    return flux


def write_grid(path: Path, grid: WavelengthGrid, n: int = 12, rotation: str = "none") -> Path:
    """A grid file of ``n`` edge spectra on ``grid`` (every row finished)."""
    attrs = {"seed": 1, "prior": "test", "engine": "fake", "engine_version": "0", "linelist_sha256": "none",
             "rotation": rotation, "hr_grid": grid.name}
    with GridWriter(path, n, grid, attrs) as writer:
        for i, row in enumerate(draw_labels(n, seed=1)):
            writer.write_row(i, edge_spectrum(grid.wave, seed=i), row, "interpolated", 0.0)
    return path


def distance_to_edge(wave: np.ndarray) -> np.ndarray:
    return np.min(np.abs(wave[:, None] - EDGES[None]), axis=1)


@pytest.fixture
def margin_grid(tmp_path: Path) -> Path:
    return write_grid(tmp_path / "margin.h5", hr_grid(GRID_MARGIN))


def test_only_margin_grids_are_cropped():
    wide, hr = hr_grid(GRID_MARGIN), hr_grid()
    np.testing.assert_array_equal(hr_index(wide.wave), hr_pixels(wide))
    assert hr_index(hr.wave) is None  # the HR grid itself: nothing to crop
    assert hr_index(np.linspace(5000.0, 5100.0, 300)) is None  # no HR grid at all: used as stored, as before
    np.testing.assert_array_equal(hr_rotator(wide.wave).wave, hr.wave)
    with pytest.raises(ValueError, match="not the 4MOST HR grid"):
        hr_rotator(np.linspace(5000.0, 5100.0, 300))


def test_grid_data_yields_hr_pixels_of_a_margin_grid(margin_grid):
    """Training on a margin grid: 25 200 pixels everywhere, the HR pixels of the stored rows, cached or not."""
    keep = hr_pixels(hr_grid(GRID_MARGIN))
    with GridReader(margin_grid) as reader:
        stored = reader.flux[:].astype(float)
    rows = np.array([3, 0, 3, 7])
    for cache_bytes in (4 << 30, 0):
        data = GridData(margin_grid, cache_bytes=cache_bytes)
        assert data.n_pixels == 25_200
        np.testing.assert_array_equal(data.wavelength, hr_grid().wave)
        np.testing.assert_array_equal(data.flux(rows), stored[rows][:, keep])
        noisy, snr, x = data.noisy_batch(rows, np.random.default_rng(0), "paper")
        assert noisy.shape == (4, 25_200) and snr.shape == (4, 1) and x.shape == (4, 13)
        data.close()


def test_rotation_on_the_margin_matches_a_longer_spectrum_and_differs_from_cropping_first():
    """The point of the margin: rotated on it and then cropped, the HR pixels equal those of a spectrum stored with
    much more beyond the edges; rotating the cropped spectrum instead misses the lines outside the windows in the
    edge pixels, and agrees (to rounding) away from the edges."""
    wide, wider, hr = hr_grid(GRID_MARGIN), hr_grid(5.0), hr_grid()
    v = np.array([0.0, 5.0, 30.0, 60.0])  # the kernel reaches 1.4 Å < the 2 Å margin at 60 km/s
    flux = np.stack([edge_spectrum(wide.wave, seed=3)] * v.size)
    with_margin = hr_rotator(wide.wave)(flux, v)
    reference = hr_rotator(wider.wave)(np.stack([edge_spectrum(wider.wave, seed=3)] * v.size), v)
    cropped_first = Rotator(hr)(flux[:, hr_pixels(wide)], v)
    assert with_margin.shape == (4, 25_200)
    np.testing.assert_allclose(with_margin, reference, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(with_margin[0], flux[0, hr_pixels(wide)])  # v_broad 0: the crop alone
    distance = distance_to_edge(hr.wave)
    for k in range(1, v.size):
        reach = v[k] / C_KMS * EDGES.max() + 0.2  # kernel half-width + an interpolation step either side
        gap = np.abs(with_margin[k] - cropped_first[k])
        assert gap[distance > reach].max() < 1e-8, f"{v[k]} km/s: away from the edges"
        assert gap[distance < 0.3].max() > 1e-3, f"{v[k]} km/s: at the edges the margin's lines must show"


def test_rotate_grid_rotates_on_the_margin_then_stores_hr_pixels(margin_grid, tmp_path):
    out = rotate_grid(margin_grid, tmp_path / "rotated.h5", copies=2, progress=False)
    with GridReader(margin_grid) as source, GridReader(out) as rotated:
        base = source.flux[:].astype(float)
        np.testing.assert_array_equal(rotated.wavelength, hr_grid().wave)
        assert rotated.hr_index is None and rotated.attrs["hr_grid"] == hr_grid().name
        assert "margin" in rotated.attrs["rotated_on"]
        v = rotated.labels[:, rotated.label_names.index("vbroad")]
        expected = hr_rotator(hr_grid(GRID_MARGIN).wave)(np.concatenate([base, base]), v)
        np.testing.assert_allclose(rotated.flux[:], expected, rtol=0, atol=1e-6)  # float32 storage
    assert GridData(out).n_pixels == 25_200


def test_grids_without_a_margin_give_what_they_gave_before(tmp_path):
    """No margin, no change: GridData's flux, the rotation's ln λ grid and rotate-grid's output against the code
    paths that were there before margins (copied here as they were)."""
    hr = hr_grid()
    path = write_grid(tmp_path / "plain.h5", hr)
    rows = np.array([5, 1, 5, 2])
    with GridReader(path) as reader:
        unique, inverse = np.unique(rows, return_inverse=True)
        before = reader.flux[unique, :][inverse].astype(float)
        everything = reader.flux[:]
    for cache_bytes in (4 << 30, 0):
        data = GridData(path, cache_bytes=cache_bytes)
        np.testing.assert_array_equal(data.flux(rows), before)
        np.testing.assert_array_equal(data.wavelength, hr.wave)
        data.close()
    for s in hr.segments:  # the ln λ grid as it was built before it was anchored to the first returned pixel
        ln_pix = np.log(hr.wave[s])
        np.testing.assert_array_equal(_Window(hr.wave[s], 0.5).ln, np.arange(ln_pix[0], ln_pix[-1], 0.5 / C_KMS))
    out = rotate_grid(path, tmp_path / "rotated.h5", progress=False)
    with GridReader(out) as rotated:
        v = rotated.labels[:, rotated.label_names.index("vbroad")]
        np.testing.assert_array_equal(rotated.flux[:], Rotator(hr)(everything.astype(float), v).astype(np.float32))
        assert "rotated_on" not in rotated.attrs
    np.testing.assert_array_equal(hr_rotator(hr.wave)(everything, v), Rotator(hr)(everything, v))


def test_emulator_on_a_margin_grid_keeps_the_margin_and_feeds_hr_pixels(margin_grid, tmp_path):
    """The emulator outputs the margin (its output is always rotated); emulate-grid, the stream and the error table
    see HR pixels, and a margin emulator is evaluated on a grid without a margin on the pixels they share."""
    pytest.importorskip("torch")
    from training import emulator as em
    from training.stream import EmulatedData, StreamSpec

    wide = hr_grid(GRID_MARGIN)
    em.fit_emulator([margin_grid], tmp_path / "emu", em.EmulatorConfig(hidden=(16, 16), steps=20, log_every=10),
                    progress=False)
    model, _, wave = em.load_emulator(tmp_path / "emu")
    np.testing.assert_array_equal(wave, wide.wave)
    assert em.validation_residuals(tmp_path / "emu").shape[1] == wide.size  # added before the rotation
    plain = write_grid(tmp_path / "plain.h5", hr_grid())
    table = em.evaluate_emulator(tmp_path / "emu", [plain], tmp_path / "report")
    labels = draw_labels(12, seed=1)
    index = [schema.label_names().index(n) for n in em.EMULATOR_INPUTS]
    emulated = em.emulate(model, labels[:, index])
    expected_rms = np.sqrt(np.mean((emulated[:, hr_pixels(wide)] - np.stack(
        [edge_spectrum(hr_grid().wave, seed=i) for i in range(12)]).astype(np.float32)) ** 2, axis=1))
    np.testing.assert_allclose(table["rms"], expected_rms, rtol=1e-5)
    out = em.emulate_grid(tmp_path / "emu", tmp_path / "emulated.h5", 0, 0, progress=False, labels_from=plain)
    with GridReader(out) as grid:
        np.testing.assert_array_equal(grid.wavelength, hr_grid().wave)
        v = grid.labels[:, grid.label_names.index("vbroad")]
        expected = hr_rotator(wide.wave)(emulated.astype(float), v)
        np.testing.assert_allclose(grid.flux[:], expected, rtol=0, atol=1e-6)
    stream = EmulatedData(StreamSpec(str(tmp_path / "emu"), stars=1, copies=2))
    inputs, _, _ = next(stream.batches([[0, 0]]))
    stream.close()
    assert inputs.shape == (2, 25_200) and stream.n_pixels == 25_200 and np.all(np.isfinite(inputs))


def test_shipped_margin_grid_is_read_on_hr_pixels_and_rotated_on_its_margin(tmp_path):
    """The re-synthesised held-out set (2 Å margin, 25 360 pixels): GridData sees 25 200 pixels, rotation with the
    margin changes only the edges, and the information-limit script takes it against the bundle's emulator."""
    from spectra.stores.gridpack import unpack_grid

    shard = ROOT / "training" / "grids" / "test-sun-s9001-0000.h5"
    if not shard.is_file():
        pytest.skip("shipped margin grid shard not in this checkout")
    path = unpack_grid([shard], tmp_path / "sun.h5")
    with GridReader(path) as reader:
        assert reader.wavelength.size == 25_360 and reader.hr_index is not None
        flux = reader.flux[:4].astype(float)
        wide = hr_grid(GRID_MARGIN)
    data = GridData(path)
    assert data.n_pixels == 25_200 and data.flux(np.arange(4)).shape == (4, 25_200)
    data.close()
    v = np.full(4, 60.0)
    gap = np.abs(hr_rotator(wide.wave)(flux, v) - Rotator(hr_grid())(flux[:, hr_pixels(wide)], v))
    distance = distance_to_edge(hr_grid().wave)
    assert gap[:, distance > 1.6].max() < 1e-8 and gap[:, distance < 0.3].max() > 1e-4
    if not (ROOT / "runtime" / "default_bundle" / "emulator.onnx").is_file():
        pytest.skip("bundle emulator not in this checkout")
    pytest.importorskip("onnxruntime")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "information_limit.py"), "--grid", str(path),
                    "--stars", "2", "--snr", "50", "--out", str(tmp_path / "limit"), "--quiet"], check=True, cwd=ROOT,
                   capture_output=True)
    assert (tmp_path / "limit" / "bound.json").is_file()


def test_a_model_trained_on_a_margin_grid_exports_the_hr_pixel_grid_and_verifies(tmp_path):
    """The bundle records the pixels the network was trained on (the HR ones), not the margin grid's, and its
    verification feeds the network the HR pixels of the training grid's spectra."""
    pytest.importorskip("torch")
    pytest.importorskip("FrEIA")
    pytest.importorskip("onnxruntime")
    from dataclasses import replace

    from export.onnx import export_bundle
    from export.verify import verify_bundle
    from runtime.bundle import load_bundle
    from training.config import CONFIGS
    from training.fit import fit

    grid = write_grid(tmp_path / "margin.h5", hr_grid(GRID_MARGIN), n=24, rotation="applied")
    fit(grid, replace(CONFIGS["tiny"], epochs=1), tmp_path / "run", device="cpu", progress=False)
    bundle = load_bundle(export_bundle(tmp_path / "run", tmp_path / "bundle"), check_graphs=False)
    np.testing.assert_array_equal(bundle.wavelength, hr_grid().wave)
    assert bundle.manifest.raw["pixel_grid"]["definition"] == hr_grid().definition
    report = verify_bundle(bundle.path, tmp_path / "run", n_samples=256)
    assert "posterior MAP [grid spectra]" in report.errors and report.ok, report.lines()


def _cropped_copy(path: Path, out: Path) -> Path:
    """The same grid stored on the HR pixels only (the margin cut off, every row finished)."""
    with GridReader(path) as reader:
        flux, labels, attrs = reader.flux[:][:, reader.hr_index], reader.labels, reader.attrs
    keep = {k: attrs[k] for k in ("seed", "prior", "engine", "engine_version", "linelist_sha256", "rotation")}
    with GridWriter(out, len(labels), hr_grid(), {**keep, "hr_grid": hr_grid().name}) as writer:
        for i, (f, row) in enumerate(zip(flux, labels, strict=True)):
            writer.write_row(i, f, row, "interpolated", 0.0)
    return out


def test_surveys_plots_and_the_peer_library_of_a_margin_grid_are_on_the_hr_pixels(margin_grid, tmp_path, monkeypatch):
    """Grid -> survey tools crop a margin: ``make_survey`` writes 25 200 pixels, the HR wavelengths and their hash,
    and the very spectra (noise draws included) of a survey of the same grid stored without the margin; so does a
    simulated survey; the quick-look plot and the χ² peer's library take the HR pixels too."""
    import importlib.util

    import zarr

    from spectra.plots import plot_grid_rows
    from spectra.stores.simulated import write_simulated_survey
    from spectra.stores.survey import make_survey, parse_snr
    from spectra.stores.survey_reader import open_survey

    plain = _cropped_copy(margin_grid, tmp_path / "plain.h5")
    surveys = [make_survey(g, parse_snr("50,250"), tmp_path / f"{g.stem}.zarr", seed=4, chunk=5, progress=False)
               for g in (margin_grid, plain)]
    wide, narrow = (zarr.open_group(str(s), mode="r") for s in surveys)
    assert wide["flux"].shape == (24, 25_200)
    np.testing.assert_array_equal(wide["wavelength"][:], hr_grid().wave)
    assert wide["wavelength"].attrs["sha256"] == narrow["wavelength"].attrs["sha256"] == hr_grid().sha256()
    np.testing.assert_array_equal(wide["flux"][:], narrow["flux"][:])
    simulated = [open_survey(write_simulated_survey(g, 6, "100", tmp_path / f"{g.stem}.json", seed=2))
                 for g in (margin_grid, plain)]
    np.testing.assert_array_equal(simulated[0].wavelength, hr_grid().wave)
    block, reference = simulated[0].read_rows(0, 6), simulated[1].read_rows(0, 6)
    assert block.flux.shape == (6, 25_200)
    np.testing.assert_array_equal(block.flux, reference.flux)
    assert plot_grid_rows(margin_grid, [0, 3, 0], tmp_path / "rows.png").is_file()
    spec = importlib.util.spec_from_file_location("peer_chi2", ROOT / "benchmarks" / "peer_chi2.py")
    assert spec is not None and spec.loader is not None
    peer = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "peer_chi2", peer)  # its dataclasses look their module up there
    spec.loader.exec_module(peer)
    with GridReader(plain) as reader:
        expected = reader.flux[:]
    library = peer.Chi2Fitter(margin_grid, maker=object()).library_flux  # any maker: the library needs no synthesis
    np.testing.assert_array_equal(library, expected)
