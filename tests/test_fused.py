"""The fused operations (training.fused) compute what the reference step functions compute."""
from __future__ import annotations

import pytest
import torch

from core.config import Arch, MaskSigma, Mode, ModelConfig, Reset, Surrogate
from training import fused
from training.flex import PlasticFlexLayer
from training.models import build_model
from training.neurons import LIFParams, LIFState, lif_run
from training.surrogate import make_surrogate

SURROGATES = [(Surrogate.ATAN, 2.0), (Surrogate.SIGMOID, 4.0), (Surrogate.RECTANGLE, 1.0)]


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("reset", list(Reset))
@pytest.mark.parametrize("detach", [False, True], ids=["stbp", "hybrid"])
@pytest.mark.parametrize("surrogate", SURROGATES, ids=[s[0].value for s in SURROGATES])
@pytest.mark.parametrize("t_in", [1, 4], ids=["constant-input", "per-step-input"])
def test_fused_lif_equals_lif_step_loop(reset, detach, surrogate, t_in):
    torch.manual_seed(0)
    steps, beta, theta = 4, 0.6, 0.8
    spike_fn = make_surrogate(*surrogate)
    currents = (torch.randn(t_in, 3, 5, 4, 4, dtype=torch.float64) * 1.2 + 0.4).requires_grad_()
    v0 = (torch.randn(3, 5, 4, 4, dtype=torch.float64) * 0.5).requires_grad_()
    w_s = torch.randn(steps, 3, 5, 4, 4, dtype=torch.float64)
    w_v = torch.randn(3, 5, 4, 4, dtype=torch.float64)

    ref_s, ref_state = lif_run(currents, None, steps, LIFParams(beta, theta, reset), spike_fn,
                                     detach_state=detach, state=LIFState(v0))
    new_s, new_v = fused.lif_fused(currents, steps, beta, theta, reset, spike_fn, detach_state=detach, v0=v0)
    assert torch.equal(ref_s, new_s)
    assert torch.equal(ref_state.v, new_v)
    assert ref_s.sum() > 0 and (ref_s == 0).sum() > 0  # both spikes and silence are exercised

    ref_g = _grads((ref_s * w_s).sum() + (ref_state.v * w_v).sum(), [currents, v0])
    new_g = _grads((new_s * w_s).sum() + (new_v * w_v).sum(), [currents, v0])
    torch.testing.assert_close(new_g[0], ref_g[0], rtol=1e-10, atol=1e-12)
    if detach:  # the initial state is detached before the first step
        assert ref_g[1] is None and new_g[1] is None
    else:
        torch.testing.assert_close(new_g[1], ref_g[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reset", list(Reset))
@pytest.mark.parametrize("detach", [False, True], ids=["stbp", "hybrid"])
@pytest.mark.parametrize("refractory", [None, 1, 3], ids=["one-step", "none", "three-ticks"])
@pytest.mark.parametrize("held_len", [1, 3, 12], ids=["held-constant", "held-per-step", "held-per-tick"])
def test_fused_lif_at_k_ticks_equals_the_tick_loop(reset, detach, refractory, held_len):
    """K = 4 ticks, a held drive and a synaptic charge, with and without a refractory period: the fused kernel
    (lif_run's allow_fused) gives the loop's spikes and membrane exactly and its gradients to rounding."""
    torch.manual_seed(2)
    steps, k = 3, 4
    spike_fn = make_surrogate(Surrogate.ATAN, 2.0)
    held = (torch.randn(held_len, 2, 3, 4, dtype=torch.float64) * 0.8 + 0.5).requires_grad_()
    jump = (torch.randn(steps * k, 2, 3, 4, dtype=torch.float64) * 0.6).requires_grad_()
    params = LIFParams(0.6, 1.0, reset, k, refractory)
    w = torch.randn(steps * k, 2, 3, 4, dtype=torch.float64)
    ref_s, ref_state = lif_run(held, jump, steps, params, spike_fn, detach_state=detach)
    new_s, new_state = lif_run(held, jump, steps, params, spike_fn, detach_state=detach, allow_fused=True)
    assert torch.equal(ref_s, new_s) and torch.equal(ref_state.v, new_state.v)
    assert ref_s.sum() > 0 and (ref_s == 0).sum() > 0
    ref_g = _grads((ref_s * w).sum() + ref_state.v.sum(), [held, jump])
    new_g = _grads((new_s * w).sum() + new_state.v.sum(), [held, jump])
    for a, b in zip(new_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_lif_spikes_only_gradient():
    torch.manual_seed(1)
    spike_fn = make_surrogate(Surrogate.ATAN, 2.0)
    currents = torch.randn(3, 2, 8, dtype=torch.float64).requires_grad_()
    ref, _ = lif_run(currents, None, 3, LIFParams(0.5, 1.0, Reset.SUBTRACT), spike_fn)
    new, _ = fused.lif_fused(currents, 3, 0.5, 1.0, Reset.SUBTRACT, spike_fn)
    torch.testing.assert_close(_grads(new.sum(), [currents])[0], _grads(ref.sum(), [currents])[0])


def test_fused_lif_refuses_double_backward():
    currents = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    s, _ = fused.lif_fused(currents, 2, 0.5, 0.0, Reset.SUBTRACT, make_surrogate(Surrogate.ATAN, 2.0))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(s.sum(), currents, create_graph=True)


def _flex_pair(sigma, c_in, c_out, kernel, stride, padding, size, steps):
    torch.manual_seed(2)
    layer = PlasticFlexLayer(c_in, c_out, kernel, stride, padding, (size, size), steps, sigma).double()
    with torch.no_grad():  # leave the initial values so every branch of the mask is visited
        layer.threshold.normal_(0, 1.0)
        layer.eta.normal_(0, 2.0)
        layer.plastic_bias.normal_(0, 1.0)
        layer.logit_bn.weight.uniform_(1.0, 4.0)
    return layer


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("sigma", list(MaskSigma))
@pytest.mark.parametrize("geometry", [(3, 6, 3, 1, 1, 8, 1), (4, 4, 2, 2, 0, 4, 3)],
                         ids=["3x3-constant-input", "2x2-down-per-step-input"])
def test_fused_flex_equals_reference(train, sigma, geometry):
    c_in, c_out, k, s, p, size_in, t_in = geometry
    steps = 3
    size = (size_in + 2 * p - k) // s + 1
    layer = _flex_pair(sigma, c_in, c_out, k, s, p, size, steps)
    layer.train(train)
    x = torch.randn(t_in, 5, c_in, size_in, size_in, dtype=torch.float64)
    w_u = torch.randn(steps, 5, c_out, size, size, dtype=torch.float64)
    w_m = torch.randn(steps, 5, c_out, size, size, dtype=torch.float64)
    params = [q for q in layer.parameters() if q.requires_grad]

    outs, grads, buffers = [], [], []
    for use in (False, True):
        layer.fused = use
        xi = x.clone().requires_grad_()
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        # eval with gradients takes the reference path; force the fused op there for this comparison
        out = layer(xi, steps) if train else _forced(layer, xi, steps, use)
        outs.append(out)
        grads.append(_grads((out.current * w_u).sum() + (out.mask * w_m).sum(), [xi, *params]))
        buffers.append({k: v.clone() for k, v in layer.state_dict().items()})
        layer.load_state_dict(state)  # undo the running-statistics update of the first pass
    ref, new = outs
    assert torch.equal(ref.current, new.current) and torch.equal(ref.mask, new.mask)
    if train:
        torch.testing.assert_close(new.r_sel, ref.r_sel)
        torch.testing.assert_close(new.r_inv, ref.r_inv)
    assert 0 < (ref.mask == 0).sum() + (ref.mask == 1).sum() or sigma is MaskSigma.LOGISTIC
    for g_new, g_ref in zip(grads[1], grads[0]):
        assert (g_new is None) == (g_ref is None)
        if g_ref is not None:
            torch.testing.assert_close(g_new, g_ref, rtol=1e-10, atol=1e-12)
    for key in buffers[0]:
        torch.testing.assert_close(buffers[1][key], buffers[0][key])


def _forced(layer, x, steps, use):
    """Run ``layer`` with the fused op forced on (``use``) even in eval mode with gradients."""
    if not use:
        return layer(x, steps)
    original = fused.use_fused
    fused.use_fused = lambda module: True
    try:
        return layer(x, steps)
    finally:
        fused.use_fused = original


def test_eval_with_gradients_takes_reference_path_for_double_backward():
    """analysis.landscape needs Hessian-vector products: eval mode keeps the reference ops."""
    cfg = ModelConfig(arch=Arch.VGG5, width=1 / 16, mode=Mode.STBP, time_steps=2, flex=True)
    torch.manual_seed(3)
    model = build_model(cfg).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    loss = model(x).logsumexp(1).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(sum((g * g).sum() for g in grads), params, allow_unused=True)
    assert any(h is not None for h in hv)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("flex", [True, False], ids=["flex", "vgg"])
def test_model_training_step_fused_equals_reference(mode, flex):
    cfg = ModelConfig(arch=Arch.VGG5, width=1 / 16, mode=mode, time_steps=3, flex=flex)
    torch.manual_seed(4)
    model = build_model(cfg).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    results = []
    for use in (False, True):
        model.load_state_dict(state)
        for m in model.modules():
            if hasattr(m, "fused"):
                m.fused = use
        out = model.run(x)
        grads = torch.autograd.grad(out.logits.square().sum(), list(model.parameters()), allow_unused=True)
        results.append((out, grads))
    (ref, g_ref), (new, g_new) = results
    torch.testing.assert_close(new.logits, ref.logits, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_new, g_ref):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
