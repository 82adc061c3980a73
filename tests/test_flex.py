"""PlasticFlexLayer against an independent numpy computation of the paper's equation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import equations
from core.config import MaskSigma
from training.flex import PlasticFlexLayer
from training.forward import flat_time


def _np_conv(x, w, stride, pad):
    """Cross-correlation, NCHW, explicit loops (no kernel flip)."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out


def _np_maxpool(x, k, stride, pad):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k].max(axis=(2, 3))
    return out


def _np_interp_channels(x, c_out):
    """Linear interpolation along channels with aligned end points, via np.interp per pixel."""
    c_in = x.shape[1]
    src = np.arange(c_in)
    dst = np.linspace(0, c_in - 1, c_out)
    return np.apply_along_axis(lambda v: np.interp(dst, src, v), 1, x)


def _bn_eval(x, bn):
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    g, b = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    return (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + bn.eps) * g[:, None, None] + b[:, None, None]


def _randomise(layer, gen):
    with torch.no_grad():
        for bn in (layer.bn, layer.logit_bn):
            bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.uniform_(-0.3, 0.3, generator=gen)
        layer.threshold.uniform_(-1, 1, generator=gen)
        layer.eta.uniform_(-2, 2, generator=gen)
        layer.plastic_bias.uniform_(-0.5, 0.5, generator=gen)


@pytest.mark.parametrize("c_in, c_out, k, stride, pad, size", [(3, 5, 3, 1, 1, 6), (4, 4, 2, 2, 0, 6)])
@pytest.mark.parametrize("sigma", list(MaskSigma))
def test_flex_output_equals_paper_equation(c_in, c_out, k, stride, pad, size, sigma):
    gen = torch.Generator().manual_seed(1)
    out_size = (size + 2 * pad - k) // stride + 1
    steps = 3
    layer = PlasticFlexLayer(c_in, c_out, k, stride, pad, (out_size, out_size), steps, sigma).double().eval()
    _randomise(layer, gen)
    x = torch.randn(steps, 2, c_in, size, size, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        got = layer(x, steps)

    w = layer.conv.weight.detach().numpy()
    thr = layer.threshold.detach().numpy()
    eta = layer.eta.detach().numpy()
    b = layer.plastic_bias.numpy()
    for t in range(steps):
        xt = x[t].numpy()
        conv = _bn_eval(_np_conv(xt, w, stride, pad), layer.bn)
        pool = _np_interp_channels(_np_maxpool(xt, k, stride, pad), c_out)
        z = _bn_eval(pool - thr, layer.logit_bn) + eta[t][:, None, None] + b[:, None, None]
        m = np.clip(z / 6 + 0.5, 0, 1) if sigma is MaskSigma.HARD else 1 / (1 + np.exp(-z))
        u = m * conv + (1 - m) * pool
        np.testing.assert_allclose(got.current[t].numpy(), u, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(got.mask[t].numpy(), m, rtol=1e-10, atol=1e-10)


def test_constant_input_equals_repeated_input():
    layer = PlasticFlexLayer(3, 4, 3, 1, 1, (5, 5), 4).eval()
    with torch.no_grad():
        layer.eta.normal_()
    x = torch.randn(1, 2, 3, 5, 5)
    a = layer(x, 4)
    b = layer(x.expand(4, -1, -1, -1, -1), 4)
    torch.testing.assert_close(a.current, b.current)


def test_channel_map_matrix_properties():
    np.testing.assert_array_equal(equations.channel_map_matrix(4, 4), np.eye(4))
    p = equations.channel_map_matrix(3, 8)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[0, 0] == 1 and p[-1, -1] == 1  # end points align
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 2))
    np.testing.assert_allclose(np.einsum("oi,nihw->nohw", p, x), _np_interp_channels(x, 8))


def test_hard_sigmoid_matches_torch():
    z = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(equations.hard_sigmoid(z), F.hardsigmoid(z))
    np.testing.assert_allclose(equations.hard_sigmoid(z.numpy()), F.hardsigmoid(z).numpy(), atol=1e-7)


def test_plasticity_moves_mask_toward_the_stronger_pathway():
    layer = PlasticFlexLayer(2, 2, 3, 1, 1, (4, 4), 1).train()
    x = torch.randn(1, 8, 2, 4, 4)
    with torch.no_grad():
        layer.bn.bias.fill_(30.0)  # conv path positive everywhere (train-mode BN: shift after normalising)
    out = layer(x, 1)
    assert (out.r_sel > out.r_inv).all()
    m_before = out.mask.mean().item()
    layer.apply_plasticity(out.r_sel, out.r_inv, plasticity_rate=0.5, plasticity_decay=0.1)
    assert (layer.plastic_bias > 0).all()  # conv path won: its share grows
    torch.testing.assert_close(layer.plastic_bias, 0.5 * (out.r_sel - out.r_inv))
    assert layer(x, 1).mask.mean().item() > m_before
    with torch.no_grad():
        layer.bn.bias.fill_(-5.0)  # conv drive now rectifies to ~0: the pool path wins
    out = layer(x, 1)
    assert (out.r_sel < out.r_inv).all()
    before = layer.plastic_bias.clone()
    layer.apply_plasticity(out.r_sel, out.r_inv, plasticity_rate=0.5, plasticity_decay=0.1)
    assert (layer.plastic_bias < before).all()
    torch.testing.assert_close(layer.plastic_bias, 0.9 * before + 0.5 * (out.r_sel - out.r_inv))


def test_zero_rate_disables_plasticity():
    layer = PlasticFlexLayer(2, 3, 3, 1, 1, (4, 4), 1).train()
    out = layer(torch.rand(1, 4, 2, 4, 4), 1)
    layer.apply_plasticity(out.r_sel, out.r_inv, plasticity_rate=0.0, plasticity_decay=0.0)
    assert torch.count_nonzero(layer.plastic_bias) == 0


def test_pathway_drive_is_scale_free_and_in_unit_interval():
    x = torch.randn(3, 5, 4, 6, 6, dtype=torch.float64)
    d = equations.pathway_drive(x, (1, 3, 4))
    assert d.shape == (3, 4) and ((d >= 0) & (d <= 1)).all()
    torch.testing.assert_close(equations.pathway_drive(7.5 * x, (1, 3, 4)), d)
    torch.testing.assert_close(equations.pathway_drive(torch.full_like(x, 0.3), (1, 3, 4)), torch.ones_like(d))
    spikes = (torch.rand(200_000, dtype=torch.float64) < 0.25).double()  # binary spikes at rate q: sqrt(q)
    assert equations.pathway_drive(spikes, 0).item() == pytest.approx(0.5, abs=0.01)
    gauss = torch.randn(200_000, dtype=torch.float64)  # a centred Gaussian path: 1/sqrt(2 pi)
    assert equations.pathway_drive(gauss, 0).item() == pytest.approx((2 * np.pi) ** -0.5, abs=0.01)
    assert (equations.pathway_drive(torch.zeros(2, 3), 0) == 0).all()  # a silent path has drive 0
    np.testing.assert_allclose(equations.pathway_drive(x.numpy(), (1, 3, 4)), d.numpy())
    # the value from its definition, written out for one channel and step
    xc = x[1, :, 2]
    expected = xc.clamp(min=0).mean() / (xc.pow(2).mean() + equations.EPS).sqrt()
    torch.testing.assert_close(d[1, 2], expected)


def test_conv_only_mask_is_the_conv_path():
    layer = PlasticFlexLayer(2, 3, 3, 1, 1, (4, 4), 2, mask_mode="conv_only").train()
    x = torch.rand(1, 4, 2, 4, 4)
    out = layer(x, 2)
    torch.testing.assert_close(out.current, flat_time(layer.conv_path, x))
    assert (out.mask == 1).all() and out.r_sel is None


def test_conv_path_gain_is_guarded_for_negative_mask_init():
    layer = PlasticFlexLayer(2, 3, 3, 1, 1, (4, 4), 2, mask_init=-2.9)
    assert layer.bn.weight.max().item() <= 1.0 / 0.25 + 1e-6  # not 1/share = 1/0.017


def test_plastic_bias_gets_no_gradient():
    layer = PlasticFlexLayer(2, 3, 3, 1, 1, (4, 4), 2).train()
    layer(torch.rand(2, 4, 2, 4, 4), 2).current.sum().backward()
    assert "plastic_bias" not in dict(layer.named_parameters())
    assert layer.eta.grad is not None and layer.threshold.grad is not None
