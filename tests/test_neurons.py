"""LIF dynamics: golden trajectory, single- vs multi-step, gradient flow through time."""
import pytest
import torch

from core.config import Reset
from training.neurons import LIFParams, LIFState, initial_state, lif_run, lif_step
from training.surrogate import ATan, Rectangle

INPUT = torch.tensor([0.6, 0.6, 0.6, 0.0, 1.5], dtype=torch.float64)


@pytest.mark.parametrize("reset, v_golden, s_golden", [
    # hand-computed with beta = 0.5, theta = 1: v[t] = 0.5 v[t-1] + I[t]
    (Reset.SUBTRACT, [0.6, 0.9, 0.05, 0.025, 0.5125], [0, 0, 1, 0, 1]),
    (Reset.ZERO, [0.6, 0.9, 0.0, 0.0, 0.0], [0, 0, 1, 0, 1]),
])
def test_golden_voltage_trajectory(reset, v_golden, s_golden):
    params = LIFParams(0.5, 1.0, reset)
    state = LIFState(torch.zeros((), dtype=torch.float64))
    vs, ss = [], []
    for current in INPUT:
        s, state = lif_step(current, state, params, ATan())
        vs.append(state.v.item())
        ss.append(s.item())
    assert ss == s_golden
    assert vs == pytest.approx(v_golden, abs=1e-12)


def test_spike_exactly_at_threshold_fires():
    s, state = lif_step(torch.tensor(1.0), LIFState(torch.tensor(0.0)), LIFParams(0.5, 1.0, Reset.SUBTRACT), ATan())
    assert s.item() == 1.0 and state.v.item() == 0.0


def test_single_step_equals_multistep():
    torch.manual_seed(0)
    params = LIFParams(0.7, 0.8, Reset.SUBTRACT)
    currents = torch.randn(6, 3, 4, 5)
    multi, final = lif_run(currents, None, 6, params, ATan())
    state = initial_state(currents[0])
    for t in range(6):
        s, state = lif_step(currents[t], state, params, ATan())
        assert torch.equal(s, multi[t])
    assert torch.equal(state.v, final.v)


def test_constant_input_broadcasts_over_time():
    params = LIFParams(0.5, 1.0, Reset.SUBTRACT)
    current = torch.rand(1, 2, 3) * 2
    once, _ = lif_run(current, None, 4, params, ATan())
    expanded, _ = lif_run(current.expand(4, 2, 3), None, 4, params, ATan())
    assert torch.equal(once, expanded)


def test_wrong_time_length_is_refused():
    with pytest.raises(ValueError, match="expected 1 or 4"):
        lif_run(torch.zeros(3, 2), None, 4, LIFParams(0.5, 1.0, Reset.SUBTRACT), ATan())


def _grad_wrt_first_step(detach: bool) -> torch.Tensor:
    currents = torch.full((4, 1), 0.45, requires_grad=True)
    spikes, _ = lif_run(currents, None, 4, LIFParams(0.9, 1.0, Reset.SUBTRACT), ATan(), detach_state=detach)
    spikes[-1].sum().backward()
    return currents.grad


def test_stbp_has_gradient_through_time():
    grad = _grad_wrt_first_step(detach=False)
    assert grad[0].abs().item() > 0  # the last spike depends on the first input through v


def test_hybrid_has_no_gradient_through_time():
    grad = _grad_wrt_first_step(detach=True)
    assert grad[:-1].abs().sum().item() == 0  # only the same step's input gets gradient
    assert grad[-1].abs().item() > 0


def test_hybrid_model_cuts_time_but_keeps_layer_gradient():
    from core.config import Mode, ModelConfig
    from training import forward as fwd
    from training.models import Activation

    for mode, through_time in ((Mode.HYBRID, False), (Mode.STBP, True)):
        act = Activation(ModelConfig(mode=mode, time_steps=3))
        x = torch.full((3, 1, 1), 0.7, requires_grad=True)
        fwd.neurons(act.params(ticks=1), fwd.Drive(None, x), fwd.Time(3, 1))[2].sum().backward()
        assert (x.grad[0].abs().item() > 0) is through_time
        assert x.grad[2].abs().item() > 0
        assert isinstance(act.spike_fn, Rectangle) is (mode is Mode.HYBRID)


def test_refractory_gate_and_countdown_follow_the_core_equations():
    """A neuron driven hard fires, stays silent for `refractory` ticks, then fires again (REFRACTORY_LEFT)."""
    for refractory in (1, 2, 3, 5):
        p = LIFParams(0.5, 1.0, Reset.SUBTRACT, ticks=4, refractory_ticks=refractory)
        s, _ = lif_run(torch.full((1, 1), 50.0), None, 3, p, ATan())
        fired = [i for i, v in enumerate(s[:, 0].tolist()) if v]
        assert fired == list(range(0, 12, max(refractory, 1)))
