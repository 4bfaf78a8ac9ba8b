import numpy as np
import pytest

from spectra import schema


def test_targets_in_paper_order_with_log_transforms():
    assert schema.target_names() == [
        "teff", "logg", "fe_h", "vmic", "vbroad", "ca_fe", "c_fe", "mg_fe", "mn_fe", "n_fe", "si_fe", "ti_fe", "li_fe",
    ]
    logs = [p.name for p in schema.TARGETS if p.transform == "log10"]
    assert logs == ["teff", "vbroad"]


def test_the_21_varied_elements_of_the_paper():
    assert sorted(schema.ABUNDANCE_ELEMENTS) == sorted(
        "Li C N O Na Mg Al Si Ca Ti V Cr Mn Co Ni Sr Y Zr Ba Ce Eu".split()
    )
    assert schema.label_names()[:13] == schema.target_names()


def test_transforms_round_trip_and_bounds_are_ordered():
    for p in schema.ALL_LABELS:
        assert p.lower < p.upper
        mid = 0.5 * (p.lower + p.upper)
        assert np.isclose(p.from_network(p.to_network(mid)), mid)
    assert schema.parameter("fe_h").lower == -5.0 and schema.parameter("fe_h").upper == 0.5
    assert (schema.parameter("vmic").lower, schema.parameter("vmic").upper) == (0.5, 2.0)


def test_out_of_bounds_error_names_the_parameter_and_bounds():
    with pytest.raises(ValueError, match=r"T_eff = 9000 K is outside the training bounds \[4000, 7000\]"):
        schema.check_in_bounds({"teff": 9000.0, "logg": 4.0})
    with pytest.raises(KeyError, match="unknown parameter 'tef'"):
        schema.parameter("tef")
