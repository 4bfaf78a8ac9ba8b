"""v_broad as augmentation: broadening stored unrotated spectra on the fly equals the full chain."""

import numpy as np
import pytest

from spectra.forward.degrade import fourmostify, gaussian_broaden
from spectra.forward.rotation import Rotator
from spectra.wavegrid import hr_grid, working_grid

from conftest import line_spectrum


@pytest.fixture(scope="module")
def unrotated():
    """A line spectrum at R 80 000 on the working grid and its unrotated 4MOST HR version."""
    wg, hg = working_grid(), hr_grid()
    intrinsic = line_spectrum(wg.wave, seed=3, n_lines=1500)
    work = np.concatenate([gaussian_broaden(wg.wave[s], intrinsic[s], 80_000, wg.wave[s]) for s in wg.segments])
    return work, fourmostify(work, 0.0, wg, hg)


def test_on_the_fly_rotation_equals_the_full_chain(unrotated):
    work, base = unrotated
    wg, hg = working_grid(), hr_grid()
    speeds = np.array([1.0, 5.0, 30.0, 100.0])
    batch = Rotator(hg)(np.repeat(base[None], speeds.size, axis=0), speeds)  # one call, a kernel per row
    interior = np.zeros(hg.size, dtype=bool)
    for s in hg.segments:  # away from the windows' edges, where the full chain saw spectrum beyond them
        w = hg.wave[s]
        interior[s] = (w - w[0] > 2.0) & (w[-1] - w > 2.0)
    for v, fly in zip(speeds, batch, strict=True):
        full = fourmostify(work, v, wg, hg)
        rms_interior = np.sqrt(np.mean((fly - full)[interior] ** 2))
        rms_all = np.sqrt(np.mean((fly - full) ** 2))
        assert rms_interior < 5e-4, f"{v} km/s: interior rms {rms_interior:.2e}"
        assert rms_all < 2.5e-3, f"{v} km/s: rms {rms_all:.2e}"


def test_zero_rotation_is_the_identity_and_bad_speeds_are_refused(unrotated):
    _, base = unrotated
    rotator = Rotator(hr_grid())
    np.testing.assert_array_equal(rotator(base, 0.0), base)
    with pytest.raises(ValueError, match="v_broad must be finite"):
        rotator(base, -1.0)
    with pytest.raises(ValueError, match="pixels"):
        rotator(base[:100], 5.0)
