import collections

import numpy as np
import pytest

from spectra import schema
from spectra.prior import draw_labels
from spectra.synth.atmospheres import default_grid


def test_prior_is_deterministic_and_extends_by_prefix():
    a = draw_labels(300, seed=5)
    np.testing.assert_array_equal(a[:100], draw_labels(100, seed=5))
    assert not np.allclose(a, draw_labels(300, seed=6))


def test_prior_stays_in_bounds_and_mimics_the_paper():
    labels = draw_labels(4096, seed=0)
    names = schema.label_names()
    for j, p in enumerate(schema.ALL_LABELS):
        assert labels[:, j].min() >= p.lower and labels[:, j].max() <= p.upper, p.name
    feh = labels[:, names.index("fe_h")]
    assert np.mean(feh > -1.0) > 0.5            # weighted toward solar
    assert np.mean(feh < -2.5) > 0.1            # but metal-poor stars are present
    vbroad = labels[:, names.index("vbroad")]
    assert vbroad[feh <= -2.0].max() <= 30.0    # old stars rotate slower
    logg = labels[:, names.index("logg")]
    assert np.mean(logg < 3.5) > 0.3 and np.mean(logg > 4.0) > 0.2  # giants, subgiants and dwarfs


def test_every_prior_point_has_an_atmosphere():
    """Every prior point gets a physical model atmosphere: for the requested (T_eff, log g, [M/H]) and geometry, with
    gas pressure rising inwards and T(tau_Ross = 2/3) = T_eff within a few per cent (the Eddington relation
    MARCS models follow to 0-8 %), whichever of the three methods made it; the prior reaches all three."""
    grid = default_grid()
    labels = draw_labels(2000, seed=11)
    methods = collections.Counter()
    for teff, logg, monh in labels[:, :3]:
        atm = grid.atmosphere(teff, logg, monh)
        methods[atm.method] += 1
        assert (atm.teff, atm.logg, atm.monh) == (teff, logg, monh)
        assert atm.geometry == ("plane" if logg >= 3.0 else "sphere")
        assert np.isfinite(atm.data).all() and np.all(np.diff(atm.quantity("Pg")) > 0)
        t_surface = np.interp(np.log10(2 / 3), atm.lgtaur, atm.quantity("T"))
        assert 0.98 < t_surface / teff < 1.10, (teff, logg, monh, atm.method, t_surface)
    assert set(methods) == {"interpolated", "interpolated_wide", "metallicity_transfer"}, methods


def test_bad_n():
    with pytest.raises(ValueError, match="positive"):
        draw_labels(0, seed=1)


def test_focus_regions_narrow_one_range_and_stay_in_the_prior():
    """``focus``: the same prior restricted to a region of the Kiel diagram (more emulator training spectra where it
    is worst): cool giants are all giants of log g 1.0-2.6, metal-rich stars all have [Fe/H] 0-0.5, metal-poor ones
    [Fe/H] from the lower bound to -2 (spread over it, with the alpha enhancement of their metallicity), cool dwarfs
    all dwarfs of 4000-4800 K; all extend by
    prefix like the prior, differ from its draw, and stay in bounds."""
    from spectra.prior import FOCUS_REGIONS, prior_name

    names = schema.label_names()
    full = draw_labels(2048, seed=3)
    for focus in FOCUS_REGIONS:
        labels = draw_labels(2048, seed=3, focus=focus)
        np.testing.assert_array_equal(labels[:50], draw_labels(50, seed=3, focus=focus))
        assert not np.allclose(labels, full)
        for j, p in enumerate(schema.ALL_LABELS):
            assert labels[:, j].min() >= p.lower and labels[:, j].max() <= p.upper, (focus, p.name)
        assert prior_name(focus) == f"kiel-fgk-v1+{focus}"
    giants = draw_labels(2048, seed=3, focus="cool-giants")
    logg, teff = giants[:, names.index("logg")], giants[:, names.index("teff")]
    assert logg.min() >= 1.0 and logg.max() <= 2.6
    assert np.median(teff) < np.median(full[full[:, names.index("logg")] < 3.4, names.index("teff")])
    feh = draw_labels(2048, seed=3, focus="metal-rich")[:, names.index("fe_h")]
    assert feh.min() >= 0.0 and feh.max() <= 0.5
    poor = draw_labels(2048, seed=3, focus="metal-poor")
    feh = poor[:, names.index("fe_h")]
    assert feh.max() <= -2.0 and feh.min() < schema.parameter("fe_h").lower + 0.1 and np.median(feh) < -3.0
    assert abs(np.median(poor[:, names.index("mg_fe")]) - 0.4) < 0.05  # alpha-enhanced around +0.4
    assert 0.4 < np.mean(poor[:, names.index("logg")] <= 3.4) < 0.95  # dwarfs and giants, as in the prior
    dwarfs = draw_labels(2048, seed=3, focus="cool-dwarfs")
    teff, logg = dwarfs[:, names.index("teff")], dwarfs[:, names.index("logg")]
    assert teff.min() >= 4000.0 and teff.max() <= 4800.0 and logg.min() >= 3.6  # dwarfs of the prior's branch
    prior_dwarfs = (full[:, names.index("logg")] > 3.6) & (full[:, names.index("teff")] <= 4800.0)
    assert abs(np.median(logg) - np.median(full[prior_dwarfs, names.index("logg")])) < 0.1
    assert prior_name() == "kiel-fgk-v1"
    with pytest.raises(ValueError, match="cool-giants"):
        draw_labels(10, seed=3, focus="hot-dwarfs")
