"""Surrogates: Heaviside forward, backward equals autograd of the smooth primitive."""
import pytest
import torch

from core.config import Surrogate
from training.surrogate import ATan, Rectangle, Sigmoid, make_surrogate, spike

SURROGATES = [ATan(2.0), ATan(0.7), Sigmoid(4.0), Sigmoid(1.5)]


@pytest.mark.parametrize("sg", SURROGATES, ids=repr)
def test_backward_equals_autograd_of_primitive(sg):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    spike(x, sg).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    sg.primitive(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_rectangle_backward_equals_autograd_of_clamp_away_from_kinks():
    sg = Rectangle(1.0)
    x = torch.tensor([-2.0, -0.7, -0.3, 0.0, 0.2, 0.49, 0.51, 3.0], dtype=torch.float64, requires_grad=True)
    spike(x, sg).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    sg.primitive(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("sg", SURROGATES + [Rectangle(1.0)], ids=repr)
def test_forward_is_heaviside_and_primitive_approximates_it(sg):
    x = torch.tensor([-5.0, -1e-6, 0.0, 1e-6, 5.0])
    assert spike(x, sg).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert sg.primitive(torch.tensor(-50.0)).item() == pytest.approx(0.0, abs=0.02)
    assert sg.primitive(torch.tensor(50.0)).item() == pytest.approx(1.0, abs=0.02)


def test_make_surrogate_covers_every_choice():
    for kind in Surrogate:
        assert make_surrogate(kind, 2.0).alpha == 2.0
