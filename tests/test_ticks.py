"""Time resolution K (ticks per step): the PyTorch tick model and Brian2's biophysical mode are one system."""
import numpy as np
import pytest
import torch
from export_helpers import random_export

from core.config import ConfigError, Reset, make_config
from core.export_format import read_export, write_export
from training.export import build_export, reference_forward
from training.models import build_model
from training.neurons import LIFParams, lif_run


def _heaviside(x):
    return (x >= 0).to(x.dtype)


def test_tick_constants_integrate_a_held_drive_exactly():
    """K ticks of decay d and gain g on a held drive give the discrete membrane at every step end."""
    u = torch.tensor([[0.3], [1.1], [-0.4], [2.0]], dtype=torch.float64)
    steps = len(u)
    for k in (1, 3, 8):
        tick = params = LIFParams(0.6, 1e9, Reset.SUBTRACT, k)
        v, expected = 0.0, []
        for t in range(steps):
            for _ in range(k):
                v = tick.decay * v + tick.gain * float(u[t, 0])
            expected.append(v)
        ref, disc = [], 0.0
        for t in range(steps):
            disc = 0.6 * disc + float(u[t, 0])
            ref.append(disc)
        np.testing.assert_allclose(expected, ref, rtol=1e-12, atol=1e-12)
        assert lif_run(u, None, steps, params, _heaviside)[0].shape == (steps * k, 1)


def test_one_tick_is_the_discrete_model():
    """K = 1: v[t] = beta v[t-1] + u[t], by hand; held drive, synaptic charge and the fused kernel alike."""
    torch.manual_seed(0)
    u = torch.randn(5, 3, 7, dtype=torch.float64)
    params = LIFParams(0.6, 1.0, Reset.SUBTRACT)
    v, expected = torch.zeros(3, 7, dtype=torch.float64), []
    for t in range(5):
        v = torch.add(u[t], v, alpha=0.6)
        expected.append((v >= 1.0).double())
        v = v - expected[-1]
    for held, jump, fused in ((u, None, False), (None, u, False), (u, None, True)):
        assert torch.equal(lif_run(held, jump, 5, params, _heaviside, allow_fused=fused)[0], torch.stack(expected))


def test_refractory_period_is_one_step():
    """A neuron with a strong held drive fires once per step, K ticks apart."""
    k, steps = 4, 3
    s, _ = lif_run(torch.full((1, 1), 50.0), None, steps, LIFParams(0.5, 1.0, Reset.SUBTRACT, k), _heaviside)
    assert s[:, 0].tolist() == [1, 0, 0, 0] * steps


def test_surrogate_gradient_flows_through_ticks():
    cfg = make_config("smoke", mode="stbp", overrides=["model.ticks=3"])
    model = build_model(cfg.model).train()
    out = model.run(torch.rand(4, 3, 32, 32))
    out.logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    assert out.layers[0].output.shape[0] == cfg.model.steps  # traces hold spikes per step
    assert max(float(tr.output.detach().max()) for tr in out.layers) <= 1.0  # at most one spike per step


@pytest.mark.parametrize("overrides", [["model.ticks=4"], ["model.ticks=4", "model.mode=stbp",
                                                              "model.down_neurons=false"]])
def test_ticks_need_spiking_neurons_after_every_stage(overrides):
    with pytest.raises(ConfigError, match="model.ticks"):
        make_config("smoke", mode="ann", overrides=overrides)


def test_ticks_apply_to_spiking_networks_only():
    assert make_config("quick", mode="stbp").model.ticks == 1  # the CPU demo stays at one tick per step
    assert make_config("quick", mode="stbp", overrides=["model.ticks=4"]).model.ticks == 4
    with pytest.raises(ValueError, match="model.ticks"):
        make_config("quick", mode="ann", overrides=["model.ticks=4"])


@pytest.mark.parametrize("flex", [True, False])
def test_model_at_k_ticks_equals_the_float64_reference_of_its_export(tmp_path, flex):
    """The model at K (float32, live modules) and the export's reference forward (folded, float64) agree."""
    cfg = make_config("smoke", mode="stbp", flex=flex, overrides=["model.ticks=3", "model.width=0.0625"])
    torch.manual_seed(1)
    model = build_model(cfg.model)
    with torch.no_grad():
        for module in model.modules():  # a positive bias current makes the deep layers of a random net fire
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.fill_(1.0)
    model.eval()
    images = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8).numpy()
    header, arrays = build_export(model, cfg, images, np.zeros(4, dtype=np.int64))
    assert header["model"]["ticks"] == 3 and header["physics"]["dt_ms"] == pytest.approx(10 * np.log(2) / 3)
    export = read_export(write_export(tmp_path / "e.npz", header, arrays))
    with torch.no_grad():
        out = model.run(torch.from_numpy(images).float() / 255.0)
    np.testing.assert_allclose(arrays["ref.model_logits"], arrays["ref.logits"], atol=1e-4)
    for tr in out.layers:
        ref = export.reference_spikes(tr.name).reshape(tr.output.transpose(0, 1).shape)
        assert (ref == tr.output.transpose(0, 1).numpy().astype(bool)).mean() > 0.999
        assert ref.any()


@pytest.mark.brian
@pytest.mark.parametrize("encoding, refractory", [("direct", "step"), ("poisson", "step"), ("direct", "none")])
@pytest.mark.parametrize("flex", [True, False])
def test_biophysical_mode_at_the_trained_k_agrees_spike_for_spike(tmp_path, flex, encoding, refractory):
    """Brian2 at --ticks K (the export's default) reproduces the tick of every spike and the logits; with
    model.refractory=none too, where a neuron may fire in consecutive ticks (the logits then count them)."""
    from sim.simulate import SimOptions, simulate

    k = 4
    export = random_export(tmp_path / "e.npz", flex=flex, n_images=3, beta=0.6, ticks=k, encoding=encoding,
                           refractory=refractory)
    ref = reference_forward(export, export.arrays["ref.images"])
    result = simulate(export, SimOptions(n_images=3, mode="biophysical"))
    assert result.timing.ticks == k
    for layer in export.neuron_layers:
        assert result.spikes[layer.name].any()
        np.testing.assert_array_equal(result.spikes[layer.name], export.reference_spikes(layer.name))
        np.testing.assert_array_equal(result.spike_ticks[layer.name], ref[f"spike_ticks.{layer.name}"])
    np.testing.assert_allclose(result.logits, export.arrays["ref.logits"], atol=1e-9)


@pytest.mark.brian
def test_sim_refuses_what_does_not_fit_the_trained_dynamics(tmp_path):
    from sim.simulate import SimError, SimOptions, make_timing

    export = random_export(tmp_path / "e.npz", n_images=1, beta=0.6, ticks=4)
    with pytest.raises(SimError, match="trained at 4 ticks per step"):
        make_timing(export, SimOptions(n_images=1))
    with pytest.raises(SimError, match="only apply to --mode biophysical"):
        make_timing(export, SimOptions(n_images=1, tau_m_ms=20.0))
    with pytest.raises(SimError, match="whole number"):
        make_timing(export, SimOptions(n_images=1, mode="biophysical", refractory_ms=0.1))
    with pytest.raises(SimError, match="must be positive"):
        make_timing(export, SimOptions(n_images=1, mode="biophysical", tau_m_ms=-1.0))
    timing = make_timing(export, SimOptions(n_images=1, mode="biophysical", ticks=8))
    assert timing.ticks == 8 and float(timing.bio.refractory / timing.dt) == pytest.approx(8)


def test_without_a_refractory_period_a_neuron_fires_in_consecutive_ticks():
    """model.refractory=none: a strong held drive fires every tick; the default fires once per step."""
    for refractory, expected in (("none", [1] * 12), ("step", [1, 0, 0, 0] * 3)):
        cfg = make_config("smoke", mode="stbp", overrides=["model.ticks=4", f"model.refractory={refractory}"])
        model = build_model(cfg.model)
        lif = model.activations["conv1"].params(ticks=4).lif
        s, _ = lif_run(torch.full((1, 1), 50.0), None, 3, lif, _heaviside)
        assert s[:, 0].tolist() == expected
