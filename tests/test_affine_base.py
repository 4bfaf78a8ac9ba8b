"""The affine base (``Config.affine_base``): x = mu(c) + sigma(c) * flow(z; c), so that the flow works in units
of each posterior's own location and scale. The contract is unchanged: the bundle's graphs take and give the
same tensors, and the log-density is the change of variables through both parts."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export.hoisted import hoisted_modules  # noqa: E402
from export.onnx import export_bundle  # noqa: E402
from export.verify import verify_bundle  # noqa: E402
from runtime.bundle import load_bundle  # noqa: E402
from runtime.sampler import OnnxPosterior  # noqa: E402
from training.config import CONFIGS  # noqa: E402
from training.fit import load_run, save_untrained_run  # noqa: E402
from training.model import CINN, affine_scale  # noqa: E402

AFFINE = replace(CONFIGS["tiny"], name="tiny-affine", affine_base=True, input_mask=None)


def _model(seed: int = 0) -> CINN:
    torch.manual_seed(seed)
    model = CINN(AFFINE, 50, 13).eval()
    with torch.no_grad():
        model.base.weight.normal_(0.0, 0.3)
        model.base.bias.normal_(0.0, 0.5)
    return model


def test_a_new_affine_base_is_the_identity_and_plain_configs_have_none():
    """Zero-initialised: training starts from the plain flow; models without the option are unchanged."""
    torch.manual_seed(1)
    plain = CINN(replace(AFFINE, affine_base=False), 50, 13).eval()
    torch.manual_seed(1)
    fresh = CINN(AFFINE, 50, 13).eval()
    assert plain.base is None and "base.weight" not in plain.state_dict()
    c, z = torch.randn(4, plain.n_features), torch.randn(4, 13)
    for a, b in zip(plain.reverse(z, c), fresh.reverse(z, c), strict=True):
        torch.testing.assert_close(a, b)


def test_forward_and_reverse_invert_each_other_with_the_change_of_variables():
    model = _model()
    c, z = torch.randn(6, model.n_features), torch.randn(6, 13)
    with torch.no_grad():
        x, log_det_xz = model.reverse(z, c)
        z_back, log_det_zx = model.forward(x, c)
        mu, log_sigma = model._affine(c)
        u, log_det_flow = model.flow(z, c=[c], rev=True, jac=True)
    torch.testing.assert_close(z_back, z, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det_xz, -log_det_zx, atol=1e-5, rtol=0)
    torch.testing.assert_close(x, mu + torch.exp(log_sigma) * u)
    torch.testing.assert_close(log_det_xz, log_det_flow + log_sigma.sum(1))  # d x / d z = sigma x d u / d z


def test_log_sigma_is_bounded_and_the_identity_near_zero():
    raw = torch.tensor([-1e6, -3.0, 0.0, 1e-4, 3.0, 1e6])
    out = affine_scale(raw)
    assert out.abs().max() <= 6.0 and out[2] == 0
    torch.testing.assert_close(out[3], raw[3], rtol=1e-6, atol=0)


def test_the_hoisted_graphs_carry_the_affine_and_the_bundle_verifies(tmp_path):
    """cond_proj gains (mu, raw log sigma) after the subnets' projections; the hoisted flow applies them last.
    Exported, the bundle passes ``export verify`` (all three flow graphs against PyTorch) and samples like torch."""
    model = _model()
    projection, flow = hoisted_modules(model)
    c, z = torch.randn(3, model.n_features), torch.randn(3, 7, 13)
    with torch.no_grad():
        proj = projection(c)
        assert proj.shape == (3, 2 * AFFINE.n_blocks * AFFINE.subnet_width + 26)
        x, log_det = flow(z, proj)
        x_ref, log_det_ref = model.reverse(z.reshape(21, 13), c.repeat_interleave(7, dim=0))
    torch.testing.assert_close(x.reshape(21, 13), x_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_det.reshape(21), log_det_ref, atol=1e-4, rtol=1e-5)

    _, run = save_untrained_run(AFFINE, 25_200, 13, tmp_path / "run", perturb=0.05)
    trained, _ = load_run(run)[:2]
    assert trained.base is not None and trained.base.weight.abs().max() > 0  # perturbed: not the identity
    bundle = export_bundle(run, tmp_path / "bundle")
    report = verify_bundle(bundle, run, n_samples=256)
    assert report.ok, report.lines()
    rng = np.random.default_rng(3)
    flux = rng.uniform(0.6, 1.0, (2, 25_200)).astype(np.float32)
    posterior = OnnxPosterior(load_bundle(bundle), threads=1, precision="fp32")
    plain = OnnxPosterior(load_bundle(bundle), threads=1, precision="fp32", use_hoisted=False)
    a = posterior.posterior(flux, np.array([50.0, 200.0]), np.arange(2), 0, 256)
    b = plain.posterior(flux, np.array([50.0, 200.0]), np.arange(2), 0, 256)
    np.testing.assert_allclose(a.quantiles, b.quantiles, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.map, b.map, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a.n_valid, b.n_valid)
