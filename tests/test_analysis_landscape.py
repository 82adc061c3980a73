"""Loss landscapes: filter normalisation, the surface's centre, exact Hessian eigenvalues, surrogate curvature."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.landscape import asymmetry, filter_normalized_direction, landscape, model_hvp, power_iteration
from analysis.robustness import select_images
from analysis.settings import LandscapeSettings
from core.config import make_config
from training.data import load_split, to_float
from training.models import build_model
from training.runs import load_model
from training.surrogate import ATan, spike

SMALL = LandscapeSettings(grid=3, n_images=32, batch_size=32, hessian_iterations=8)


def flex_model(mode: str = "stbp"):
    torch.manual_seed(0)
    return build_model(make_config("smoke", mode=mode, flex=True).model).eval()


def test_filter_normalisation_matches_each_weight_filter():
    model = flex_model()
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    filters = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    checked = 0
    for name, p in model.named_parameters():
        if id(p) in filters:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.equal(d[name], p)  # a random direction, not the weights
            checked += 1
        else:  # biases, batch-norm affines, flex threshold and eta
            assert torch.count_nonzero(d[name]) == 0, name
    assert checked == len(filters) == 7  # the conv of each of the 6 flex stages, and the read-out
    assert any(n.endswith("threshold") for n in d) and any(n.endswith("eta") for n in d)


def quadratic_hvp(a: torch.Tensor):
    """HVP of L(θ) = ½ θᵀ A θ by double backward (θ split over two tensors, like model parameters)."""
    theta = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]

    def hvp(v):
        flat = torch.cat(theta)
        loss = 0.5 * flat @ a @ flat
        grads = torch.autograd.grad(loss, theta, create_graph=True)
        return list(torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), theta))

    return hvp, theta


@pytest.mark.parametrize("eigenvalues, top", [([5.0, 2.0, -1.0, 0.5, 0.1], 5.0), ([3.0, -7.0, 1.0, 0.0, 2.0], -7.0)])
def test_hessian_top_eigenvalue_of_a_quadratic_is_exact(eigenvalues, top):
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    a = (q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T).float()
    hvp, theta = quadratic_hvp(a)
    estimates = power_iteration(hvp, theta, iterations=200, tolerance=1e-9, generator=torch.Generator().manual_seed(0))
    assert estimates[-1] == pytest.approx(top, rel=1e-5) and len(estimates) < 200
    assert asymmetry(hvp, theta, torch.Generator().manual_seed(0)) < 1e-5


def test_surrogate_enters_the_second_derivative():
    """Double backward through a spike gives the surrogate's own derivative: for L = c · H(w x − θ) with
    the atan surrogate g, d²L/dw² = c · g''(w x − θ) · x²."""
    surrogate = ATan(alpha=2.0)
    x, theta, c, w0 = 0.7, 1.0, 3.0, 1.2
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    loss = c * spike(w * x - theta, surrogate)
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)
    (second,) = torch.autograd.grad(grad, w)
    z = w0 * x - theta
    k = math.pi / 2 * surrogate.alpha
    g2 = -(surrogate.alpha / 2) * 2 * k ** 2 * z / (1 + (k * z) ** 2) ** 2  # derivative of (a/2) / (1 + (k z)^2)
    assert float(grad.detach()) == pytest.approx(c * float(surrogate.derivative(torch.tensor(z))) * x)
    assert float(second) == pytest.approx(c * g2 * x ** 2, rel=1e-12)


@pytest.mark.parametrize("mode", ["stbp", "hybrid", "ann"])
def test_hessian_of_flex_models_is_finite_and_symmetric(cifar_dir, mode):
    """Double backward works through every flex layer (hard-sigmoid mask, LIF, surrogate)."""
    model = flex_model(mode)
    images, _ = select_images(load_split("test", cifar_dir), 16)
    x, y = to_float(images.images), images.labels
    hvp, params = model_hvp(model, x, y, batch_size=8)
    v = [torch.randn_like(p) for p in params]
    hv = hvp(v)
    assert all(torch.isfinite(h).all() for h in hv) and sum(h.abs().sum() for h in hv) > 0
    if mode != "hybrid":  # the hybrid's truncated (detached) gradient field need not be symmetric
        assert asymmetry(hvp, params, torch.Generator().manual_seed(0)) < 1e-3


def test_landscape_dataset_and_centre(analysis_runs, cifar_dir):
    model, _ = load_model(analysis_runs["vgg-stbp"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = load_split("train", cifar_dir)
    ds = landscape(model, train, SMALL, attrs={"variant": "vgg-stbp"})
    assert ds.loss.dims == ("alpha", "beta") and ds.sizes["alpha"] == 3
    np.testing.assert_allclose(ds.alpha, [-1, 0, 1])
    images, _ = select_images(train, SMALL.n_images)
    with torch.no_grad():
        centre = F.cross_entropy(model(to_float(images.images)), images.labels).item()
    assert float(ds.loss.sel(alpha=0, beta=0)) == pytest.approx(centre, rel=1e-5)
    assert float(ds.loss.max()) > centre  # a trained minimum: moving a whole filter norm away costs loss
    assert np.isfinite(float(ds.hessian_top_eigenvalue)) and int(ds.hessian_iterations) >= 1
    assert float(ds.hessian_estimates[int(ds.hessian_iterations) - 1]) == float(ds.hessian_top_eigenvalue)
    assert float(ds.hessian_asymmetry) < 1e-3
    assert "filter-normalised" in ds.attrs["directions"] and ds.loss.attrs["units"] == "nat"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # functional: weights untouched
