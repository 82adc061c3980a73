"""core.equations: every Brian2 rendering computes its function, on numpy and torch alike; the users call it."""
import numpy as np
import pytest
import torch
from export_helpers import random_export

from core import equations
from core.config import MaskSigma
from core.equations import Equation

RNG = np.random.default_rng(0)
N = 2000


def _inputs(eq: Equation) -> dict[str, np.ndarray]:
    """Random float64 inputs for every argument, in ranges that reach every branch (both clips, etc.)."""
    ranges = {"z": (-8.0, 8.0), "m": (0.0, 1.0), "mean_relu": (0.0, 1.0), "mean_square": (0.0, 2.0),
              "std": (0.2, 0.3), "plasticity_rate": (0.0, 0.1), "plasticity_decay": (0.0, 0.1),
              "decay": (0.0, 1.0), "gain": (0.0, 1.0), "theta": (0.5, 1.5), "wait": (0.0, 4.0)}
    return {name: RNG.uniform(*ranges.get(name, (-3.0, 3.0)), N) for name in eq.args}


EQUATIONS = [v for v in vars(equations).values() if isinstance(v, Equation)]


def brian_eval(expr: str, values: dict[str, np.ndarray], condition: bool = False) -> np.ndarray:
    """Evaluate a Brian2 expression (a condition as 0/1) with Brian2's runtime code generation (as sim/ runs
    it), one value per neuron."""
    from brian2 import Network, NeuronGroup, defaultclock

    from sim.devices import device_session

    with device_session("runtime"):
        group = NeuronGroup(N, "".join(f"{k} : 1\n" for k in values) + "out : 1", namespace={})
        for k, v in values.items():
            setattr(group, k, v)
        group.run_regularly(f"out = int({expr})" if condition else f"out = {expr}")
        Network(group).run(defaultclock.dt)
        return np.asarray(group.out[:])


def test_every_equation_is_checked_here():
    names = {eq.name for eq in EQUATIONS}
    assert {"logits", "mask_input", "hard_sigmoid", "logistic", "mix", "normalise", "drive", "plasticity",
            "membrane", "tick_drive", "spikes", "reset_subtract", "reset_zero", "refractory_left"} <= names


@pytest.mark.brian
@pytest.mark.parametrize("eq", EQUATIONS, ids=lambda e: e.name)
def test_brian2_rendering_computes_the_function(eq):
    values = _inputs(eq)
    expected = np.broadcast_to(eq(**values), (N,)) * 1.0
    got = brian_eval(eq.brian(**{k: k for k in eq.args}), values, eq.condition)
    # Brian2 passes expressions through sympy, which re-associates sums and turns `/ 6.0` into `* 0.1666...`:
    # a few ulp apart (inputs are O(1)), not bit for bit; a wrong formula is off by O(1)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-14, err_msg=eq.brian(**{k: k for k in eq.args}))


@pytest.mark.brian
def test_the_numeric_check_catches_a_wrong_rendering():
    values = _inputs(equations.MIX)
    wrong = "{conv} + {m}*({pool} - {conv})"  # the shares of the two paths swapped
    got = brian_eval(wrong.format(**{k: k for k in values}), values)
    assert not np.allclose(got, equations.MIX(**values))


def test_rendering_substitutes_sub_expressions_and_names_missing_arguments():
    logits = equations.LOGITS.brian(scale="lscale", pool="Ip", threshold="thr", shift="lshift")
    assert equations.MASK_INPUT.brian(logits=logits, eta="eta(t, ch)", b="b") == \
        "lscale*(Ip - thr) + lshift + (eta(t, ch) + b)"
    with pytest.raises(KeyError, match="shift"):
        equations.LOGITS.brian(scale="s", pool="p", threshold="t")


@pytest.mark.parametrize("eq", EQUATIONS, ids=lambda e: e.name)
def test_torch_and_numpy_give_the_same_result(eq):
    values = _inputs(eq)
    expected = eq(**values) * 1.0
    got = eq(**{k: torch.from_numpy(v) for k, v in values.items()})
    assert isinstance(got, torch.Tensor)
    got = got.double()
    # the same float64 arithmetic, except torch's own sigmoid and pow kernels (logistic, drive): one ulp
    np.testing.assert_allclose(got.numpy(), expected, rtol=0 if eq.name not in ("logistic", "drive") else 1e-15,
                               atol=0)


def test_mask_sigma_dispatch():
    assert equations.mask_sigma("hard") is equations.mask_sigma(MaskSigma.HARD) is equations.HARD_SIGMOID
    assert equations.mask_sigma(MaskSigma.LOGISTIC) is equations.LOGISTIC
    assert set(equations.SIGMAS) == {s.value for s in MaskSigma}
    with pytest.raises(ValueError, match="relu"):
        equations.mask_sigma("relu")


def test_channel_map_rule():
    assert not equations.maps_channels(5, 5) and equations.maps_channels(4, 6)
    np.testing.assert_array_equal(equations.channel_map_matrix(5, 5), np.eye(5))
    from training.forward import map_channels

    x = torch.randn(2, 4, 3, 3)
    assert map_channels(x, torch.eye(4)) is x  # the identity is skipped
    p = torch.from_numpy(equations.channel_map_matrix(4, 6)).float()
    torch.testing.assert_close(map_channels(x, p), torch.einsum("oc,nchw->nohw", p, x))


def test_flex_layer_and_fused_path_follow_the_core_definitions():
    """PlasticFlexLayer's mask is sigma(MASK_INPUT); its current is MIX up to the one rounding of addcmul."""
    from training import fused
    from training.flex import PlasticFlexLayer

    for sigma in MaskSigma:
        layer = PlasticFlexLayer(3, 4, 3, 1, 1, (6, 6), steps=3, sigma=sigma).eval()
        with torch.no_grad():
            layer.eta.normal_(0, 2)
            layer.plastic_bias.normal_(0, 1)
        x = torch.rand(1, 2, 3, 6, 6)
        for use_fused in (True, False):
            layer.fused = use_fused
            with torch.no_grad():
                assert use_fused == fused.use_fused(layer)
                out = layer(x, 3)
                pool, conv = layer.pool_path(x[0]), layer.conv_path(x[0])[None]
                logits, pool = layer.logits(pool)[None], pool[None]
                z = equations.mask_input(logits, layer.eta[:3, None, :, None, None],
                                         layer.plastic_bias[:, None, None])
                mask = equations.mask_sigma(sigma)(z)
            torch.testing.assert_close(out.mask, mask, rtol=0, atol=0)
            torch.testing.assert_close(out.current, equations.mix(mask, conv, pool), rtol=1e-6, atol=1e-6)


def test_input_normalisation_is_the_same_in_torch_and_sim():
    from sim.analog import normalise

    images = RNG.integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    mean, std = np.array(equations.CIFAR10_MEAN), np.array(equations.CIFAR10_STD)
    x = torch.from_numpy(images).double() / 255.0
    expected = equations.normalise_input(x, torch.from_numpy(mean).view(1, 3, 1, 1),
                                          torch.from_numpy(std).view(1, 3, 1, 1)).numpy()
    np.testing.assert_array_equal(normalise(images, mean, std), expected)


@pytest.mark.brian
@pytest.mark.parametrize("sigma, mode", [("hard", "exact"), ("logistic", "biophysical")])
def test_printed_neuron_model_holds_the_rendered_equations(tmp_path, sigma, mode):
    from sim.simulate import SimOptions, neuron_model_text

    export = random_export(tmp_path / "e.npz", sigma=sigma, n_images=1)
    text = neuron_model_text(export, SimOptions(n_images=1, mode=mode, ticks=None if mode == "exact" else 2))
    seen = "Ip" if mode == "exact" else "pstep"  # delta synapses: the mask sees the step's pool charge
    logits = equations.LOGITS.brian(scale="lscale", pool=seen, threshold="thr", shift="lshift")
    assert f"z = {equations.MASK_INPUT.brian(logits=logits, eta='eta(t, ch)', b='b')}" in text
    assert f"m = {equations.mask_sigma(sigma).brian(z='z')}" in text
    assert equations.MIX.brian(m="m", conv="Ic" if mode == "exact" else "acc_c", pool="Ip") in text
    assert ("v >= theta" if mode == "exact" else "v >= v_th") in text
    assert "b += " + equations.PLASTICITY.brian(plasticity_rate="plasticity_rate_tick", r_sel="rs", r_inv="ri",
                                                  plasticity_decay="plasticity_decay_tick", b="b") in text
    assert "driven by the image" in text and "driven by spikes" in text  # the analog first layer and the others


@pytest.mark.brian
def test_cli_prints_the_model_without_simulating(tmp_path, capsys):
    from bioflexnet.cli import main

    random_export(tmp_path / "e.npz", n_images=1)
    main(["sim", str(tmp_path / "e.npz"), "--print-model"])
    out = capsys.readouterr().out
    assert "m = clip(z / 6.0 + 0.5, 0.0, 1.0)" in out and "v = beta*v + (Ip + m*(Ic - Ip))" in out
    assert not (tmp_path / "sim").exists()


def test_the_torch_neuron_step_is_the_core_neuron_equations():
    """training.neurons.lif_step = MEMBRANE (to the one rounding of its fused multiply-add), SPIKES, the reset
    of the neurons that fired, REFRACTORY_LEFT; float64, both resets."""
    from core.config import Reset
    from training.neurons import LIFParams, LIFState, lif_step

    v0, drive = RNG.uniform(-1, 2, N), RNG.uniform(-1, 1, N)
    wait0 = RNG.integers(0, 3, N).astype(float)
    for reset in Reset:
        p = LIFParams(0.7, 1.0, reset, ticks=4, refractory_ticks=3)
        s, state = lif_step(torch.from_numpy(drive), LIFState(torch.from_numpy(v0), torch.from_numpy(wait0)), p,
                            lambda x: (x >= 0).double())
        v = equations.membrane(v0, p.decay, drive)
        wait = equations.refractory_left(wait0)
        fired = equations.spikes(v, p.theta) & (wait < 0.5)
        reset_v = equations.reset_zero(0.0) if reset is Reset.ZERO else equations.reset_subtract(v, p.theta)
        np.testing.assert_array_equal(s.numpy(), fired * 1.0)
        np.testing.assert_allclose(state.v.numpy(), np.where(fired, reset_v, v), rtol=0, atol=1e-15)
        np.testing.assert_array_equal(state.wait.numpy(), wait + 3 * fired)
