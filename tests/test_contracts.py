"""The contracts of ``spectra.contracts``: each one defined once, and each check able to fail.

Quantile levels checked when a bundle is loaded; the torch log-density equal to the numpy one; every flag bit of
both tables decoded by ``catalog flags``, in the FITS and Parquet exports and in the README; the TSFitPy importer
drawing v_broad from the prior with its metal-poor cap; the conventions and transforms used where they apply.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from catalog.schema import Column
from catalog.writers import CatalogueStore, export_fits, export_parquet
from runtime.bundle import BundleError, Manifest, _validate, load_bundle
from spectra import schema
from spectra.contracts import conventions, density, flags, parameters, quantiles

from conftest import line_spectrum

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "runtime" / "default_bundle"


# ------------------------------------------------------------------------------------------------ quantiles
def test_quantile_levels_and_suffixes_are_one_table_used_by_name():
    assert tuple(q.level for q in quantiles.QUANTILE_LEVELS) == quantiles.QUANTILES
    assert [q.suffix for q in quantiles.QUANTILE_LEVELS] == ["_p2_5", "_p16", "_p50", "_p84", "_p97_5"]
    assert quantiles.QUANTILES[quantiles.index("p16")] == 0.16 and quantiles.QUANTILES[quantiles.index("p84")] == 0.84
    with pytest.raises(KeyError, match="unknown quantile 'p68'"):
        quantiles.index("p68")


def _default_manifest() -> dict:
    return json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())


@pytest.mark.parametrize("recorded", [[0.025, 0.16, 0.5, 0.84, 0.99], [0.16, 0.025, 0.5, 0.84, 0.975],
                                      [0.16, 0.5, 0.84], None, "0.16"])
def test_a_manifest_with_other_quantile_levels_is_refused(recorded):
    raw = _default_manifest()
    assert raw["extra_graphs"]["posterior_summary"]["quantiles"] == list(quantiles.QUANTILES)
    _validate(raw, Path("manifest.json"))  # the shipped levels pass
    if recorded is None:
        del raw["extra_graphs"]["posterior_summary"]["quantiles"]
    else:
        raw["extra_graphs"]["posterior_summary"]["quantiles"] = recorded
    with pytest.raises(BundleError, match=r"posterior_summary: quantile levels .* differ"):
        _validate(raw, Path("manifest.json"))


def test_load_bundle_refuses_a_bundle_whose_summary_graph_has_other_levels(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    load_bundle(bundle, check_graphs=False)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["extra_graphs"]["posterior_summary"]["quantiles"] = [0.05, 0.16, 0.5, 0.84, 0.95]
    (bundle / "manifest.json").write_text(json.dumps(raw, indent=2))
    with pytest.raises(BundleError, match=r"quantile levels \[0.05, 0.16, 0.5, 0.84, 0.95\] differ"):
        load_bundle(bundle, check_graphs=False)


def test_catalogue_quantile_columns_come_from_the_contract():
    from catalog.schema import catalogue_columns

    cols = {c.name: c for c in catalogue_columns([{"name": "teff", "label": "T_eff", "unit": "K"}])}
    for q in quantiles.QUANTILE_LEVELS:
        assert f"{100 * q.level:g} % quantile" in cols["teff" + q.suffix].description


# ------------------------------------------------------------------------------------------------ density
def test_log_density_formula():
    z = np.array([[0.0, 0.0], [1.0, -2.0]])
    log_det = np.array([0.5, -1.0])
    expected = [-np.log(2 * np.pi) - 0.5, -2.5 - np.log(2 * np.pi) + 1.0]
    assert np.allclose(density.log_density(z, log_det), expected, rtol=0, atol=1e-14)


def test_torch_log_density_equals_the_contract():
    torch = pytest.importorskip("torch")
    from training.model import torch_log_density

    rng = np.random.default_rng(3)
    z, log_det = rng.standard_normal((7, 40, 13)), 5 * rng.standard_normal((7, 40))
    numpy_value = density.log_density(z, log_det)
    torch_value = torch_log_density(torch.from_numpy(z), torch.from_numpy(log_det)).numpy()
    assert np.allclose(torch_value, numpy_value, rtol=0, atol=1e-12)


def test_model_log_prob_is_the_contract_with_the_forward_jacobian():
    torch = pytest.importorskip("torch")
    from training.config import Config
    from training.model import CINN

    config = Config(name="tiny", feature_layers=(16,), n_blocks=2, subnet_width=8, subnet_layers=1)
    model = CINN(config, n_pixels=20, n_params=3).double()
    torch.manual_seed(0)
    x, c = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    z, log_det_forward = model.forward(x, c)
    expected = density.log_density(z.detach().numpy(), -log_det_forward.detach().numpy())
    assert np.allclose(model.log_prob(x, c).detach().numpy(), expected, rtol=0, atol=1e-10)


def test_summary_graph_ranks_samples_by_the_contract_density():
    torch = pytest.importorskip("torch")
    from export.summary import PosteriorSummaryGraph
    from runtime.posterior import summarize

    rng = np.random.default_rng(5)
    b, s, d = 3, 64, 2
    x, z = rng.standard_normal((b, s, d)), rng.standard_normal((b, s, d))
    log_det = rng.standard_normal((b, s))
    lower, upper = np.full(d, -10.0), np.full(d, 10.0)
    graph = PosteriorSummaryGraph(np.zeros(d), np.ones(d), parameters.log10_mask(["identity"] * d), lower, upper)
    map_graph, q_graph, _ = graph(torch.from_numpy(x), torch.from_numpy(log_det), torch.from_numpy(z))
    reference = summarize(x, density.log_density(z, log_det), lower, upper)
    assert np.array_equal(map_graph.numpy(), reference.map)
    assert np.allclose(q_graph.numpy(), reference.quantiles, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------ transforms
def test_transform_contract_and_its_users():
    assert parameters.TRANSFORMS == ("identity", "log10")
    x = np.array([[0.5, -1.0], [1.0, 2.0]])
    mean, std = np.array([3.7, 0.1]), np.array([0.1, 2.0])
    physical = parameters.to_physical(x, mean, std, ["log10", "identity"])
    assert np.allclose(physical[:, 0], 10 ** (x[:, 0] * 0.1 + 3.7)) and np.allclose(physical[:, 1], x[:, 1] * 2 + 0.1)
    raw = _default_manifest()
    manifest = Manifest(raw)
    assert np.array_equal(manifest.to_physical(x.repeat(7, axis=1)[:, :13]),
                          parameters.to_physical(x.repeat(7, axis=1)[:, :13], manifest.x_mean, manifest.x_std,
                                                 manifest.transforms))
    teff = schema.parameter("teff")
    assert teff.from_network(teff.to_network(5772.0)) == pytest.approx(5772.0)
    with pytest.raises(ValueError, match="unknown transform 'ln'"):
        schema.Parameter("x", "x", "", "ln", 1.0, 2.0)
    raw["parameters"][0]["transform"] = "ln"
    with pytest.raises(BundleError, match=r"unknown transform .ln. .known: identity, log10"):
        _validate(raw, Path("manifest.json"))


# ------------------------------------------------------------------------------------------------ flags
def test_flag_enums_and_tables_are_one_definition():
    for enum, table in ((flags.Flag, flags.FLAGS), (flags.IngestFlag, flags.INGEST_FLAGS)):
        assert [(int(f), f.name) for f in enum] == [(f.bit, f.name) for f in table]
        assert all(f.bit & (f.bit - 1) == 0 for f in table)  # one bit each
    assert flags.IngestFlag.READ_FAILED == 1 and flags.Flag.READ_FAILED == 512  # two bit spaces, on purpose
    assert flags.decode(513) == ["HIGH_REJECTION", "READ_FAILED"]
    assert flags.decode(17, "ingest_flags") == ["READ_FAILED", "RV_UNCERTAIN"]


def test_thresholds_are_formatted_into_the_descriptions():
    for f in (*flags.FLAGS, *flags.INGEST_FLAGS):
        if f.threshold is not None:
            shown = f"{f.threshold:g}" if abs(f.threshold) >= 0.1 else f"{100 * f.threshold:g} %"
            assert shown in f.description, (f.name, f.description)
    from spectra.observed.ingest import FLAG_NOTES
    from spectra.observed.prepare import MIN_RESOLUTION

    assert pytest.approx(flags.MIN_RESOLUTION_FRACTION * 20_000) == MIN_RESOLUTION
    assert set(FLAG_NOTES) <= set(flags.IngestFlag)


def test_catalog_flags_decodes_every_bit_of_both_tables():
    out = subprocess.run([sys.executable, "-m", "catalog", "flags"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert flags.flags_markdown("flags") in out and flags.flags_markdown("ingest_flags") in out
    for f in (*flags.FLAGS, *flags.INGEST_FLAGS):
        assert f"| {f.bit} | {f.name} |" in out


def test_readme_shows_both_flag_tables():
    readme = (ROOT / "README.md").read_text()
    assert flags.flags_markdown("flags") in readme and flags.flags_markdown("ingest_flags") in readme


def test_exports_carry_both_flag_tables(tmp_path):
    from astropy.table import Table

    columns = [Column("source_id", "int64", "", "id", -1), Column("ingest_flags", "int32", "", "ingest bits", 0),
               Column("flags", "int32", "", "bits", 0)]
    store = CatalogueStore.create(tmp_path / "c.zarr", 2, 2, columns, {"format_note": "test"})
    store.write_chunk(0, {"source_id": np.array([1, 2]), "ingest_flags": np.array([0, 17]),
                          "flags": np.array([64, 512])})
    assert store.attrs["ingest_flag_table"] == flags.flag_records("ingest_flags")
    fits_file = export_fits(tmp_path / "c.zarr", tmp_path / "c.fits")
    for hdu, table in (("FLAGS", flags.FLAGS), ("INGEST_FLAGS", flags.INGEST_FLAGS)):
        read = Table.read(fits_file, hdu=hdu)
        assert list(read["bit"]) == [f.bit for f in table] and list(read["name"]) == [f.name for f in table]
        assert list(read["description"]) == [f.description for f in table]
    import pyarrow.parquet as pq

    meta = pq.read_schema(export_parquet(tmp_path / "c.zarr", tmp_path / "c.parquet")).metadata
    assert json.loads(meta[b"flag_table"]) == flags.flag_records("flags")
    assert json.loads(meta[b"ingest_flag_table"]) == flags.flag_records("ingest_flags")


# ------------------------------------------------------------------------------------------------ conventions
def test_continuum_and_vbroad_conventions_are_used():
    from runtime.resim import CONTINUUM_WINDOW
    from spectra.forward.continuum import ContinuumOptions

    assert ContinuumOptions().knot_spacing == conventions.KNOT_SPACING == CONTINUUM_WINDOW
    assert ContinuumOptions().describe().startswith(conventions.PSEUDO_CONTINUUM)
    assert conventions.continuum_kind({"continuum": ContinuumOptions().describe()}) == "pseudo"
    assert conventions.continuum_kind({}) == "true"
    assert schema.parameter("vbroad").upper == conventions.VBROAD_MAX
    assert list(conventions.vbroad_max([0.0, -2.0, -3.0])) == [conventions.VBROAD_MAX,
                                                               conventions.VBROAD_MAX_METAL_POOR,
                                                               conventions.VBROAD_MAX_METAL_POOR]
    from spectra.prior import draw_labels

    labels = draw_labels(512, seed=1)
    names = schema.label_names()
    feh, vbroad = labels[:, names.index("fe_h")], labels[:, names.index("vbroad")]
    assert np.all(vbroad[feh <= conventions.VBROAD_CAP_FEH] <= conventions.VBROAD_MAX_METAL_POOR)


def test_software_version_is_one_definition():
    import spectra

    assert spectra.__version__ == conventions.software_version()


def _tsfitpy_folder(folder: Path, feh: list[float]) -> None:
    folder.mkdir()
    wave = np.arange(5150.0, 6800.0, 0.01)
    rows = ["specname,rv,teff,logg,feh,vmic"]
    for i, value in enumerate(feh):
        flux = line_spectrum(wave, seed=i, n_lines=500)
        body = "\n".join(f"{w:.3f}  {f:.6f}" for w, f in zip(wave, flux, strict=True))
        (folder / f"{i}.spec").write_text("#TSFitPy\n" + body)
        rows.append(f"{i}.spec,0.0,5500,4.0,{value},1.2")
    (folder / "spectra_parameters.csv").write_text("\n".join(rows) + "\n")


def test_tsfitpy_importer_draws_vbroad_from_the_prior_with_its_metal_poor_cap(tmp_path):
    from spectra.stores.gridstore import GridReader
    from spectra.synth.importers import import_tsfitpy

    feh, seed = [-3.0, -0.5], 4
    _tsfitpy_folder(tmp_path / "ts", feh)
    report = import_tsfitpy(tmp_path / "ts", tmp_path / "grid.h5", vbroad="prior", seed=seed, progress=False)
    assert report.written == 2
    deviates = np.random.default_rng(seed).uniform(0, 1, 2)
    assert 10.0 ** (2 * deviates[0]) > conventions.VBROAD_MAX_METAL_POOR  # this seed would break the cap without it
    with GridReader(tmp_path / "grid.h5") as grid:
        vbroad = grid.labels[:, schema.label_names().index("vbroad")]
    assert np.allclose(vbroad, conventions.vbroad_from_uniform(deviates, np.array(feh)))
    assert vbroad[0] <= conventions.VBROAD_MAX_METAL_POOR


def test_model_invalid_bands_are_masked_wherever_the_forward_model_is_compared():
    """The O₂ γ band and the Hα core are one definition; the solar calibration leaves them out (padded by 1 Å)."""
    from spectra.contracts.masks import CHROMOSPHERIC_CORES_AIR, MODEL_INVALID_BANDS_AIR, TELLURIC_BANDS_AIR, band_mask
    from spectra.synth.linecal import observed_on_hr
    from spectra.wavegrid import hr_grid

    assert set(MODEL_INVALID_BANDS_AIR) == set(TELLURIC_BANDS_AIR) | set(CHROMOSPHERIC_CORES_AIR)
    hr = hr_grid()
    mask = band_mask(hr.wave)
    assert mask[np.argmin(np.abs(hr.wave - 6300.0))] and mask[np.argmin(np.abs(hr.wave - 6562.8))]
    assert not mask[np.argmin(np.abs(hr.wave - 6555.0))] and not mask[hr.segments[0]].any()
    wave = np.linspace(5100.0, 6800.0, 200_000)
    _, usable = observed_on_hr(wave, np.ones_like(wave), hr)
    assert not (usable & mask).any() and usable[~mask].all()
    _, with_core = observed_on_hr(wave, np.ones_like(wave), hr, chromospheric_cores=True)
    assert with_core[np.argmin(np.abs(hr.wave - 6562.8))] and not with_core[np.argmin(np.abs(hr.wave - 6300.0))]
