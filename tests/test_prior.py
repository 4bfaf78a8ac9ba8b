import collections

import numpy as np
import pytest

from spectra import schema
from spectra.atmospheres import default_grid
from spectra.prior import draw_labels


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
    grid = default_grid()
    labels = draw_labels(2000, seed=11)
    methods = collections.Counter(grid.atmosphere(*row[:3]).method for row in labels)
    assert sum(methods.values()) == 2000
    assert set(methods) <= {"interpolated", "interpolated_wide", "metallicity_transfer"}


def test_bad_n():
    with pytest.raises(ValueError, match="positive"):
        draw_labels(0, seed=1)
