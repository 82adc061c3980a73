"""Discrete-time leaky integrate-and-fire (LIF) neurons as pure step functions.

Equations (one step = ``dt``; DESIGN.md §1)::

    v[t] = beta * v[t-1] + I[t]
    s[t] = H(v[t] - theta)
    reset "subtract":  v[t] <- v[t] - theta * s[t]
    reset "zero":      v[t] <- v[t] * (1 - s[t])

``lif_step`` is the single place these equations live; ``lif_multistep``
loops it over time. The Brian2 network (``sim/``) runs the same update with the
parameters taken from the export, see ``sim`` for its schedule.

Gradient flow:

* ``stbp``: full backprop through time; ``H`` gets the surrogate derivative.
* ``hybrid``: the state passed from one step to the next is detached, so no
  gradient flows through time; ``H`` gets the straight-through rate derivative.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from core.config import Reset
from training.surrogate import SurrogateFn


class LIFParams(NamedTuple):
    beta: float
    theta: float
    reset: Reset


class LIFState(NamedTuple):
    v: torch.Tensor


def lif_step(
    current: torch.Tensor, state: LIFState, params: LIFParams, spike_fn: SurrogateFn
) -> tuple[torch.Tensor, LIFState]:
    """Advance one step: ``(spikes, new_state)`` for input current ``current``."""
    v = torch.add(current, state.v, alpha=params.beta)
    s = spike_fn(v - params.theta)
    if params.reset is Reset.SUBTRACT:
        v = torch.sub(v, s, alpha=params.theta)
    else:
        v = v * (1.0 - s)
    return s, LIFState(v)


def initial_state(like: torch.Tensor) -> LIFState:
    """Resting state (v = 0) shaped like one step of input."""
    return LIFState(torch.zeros_like(like))


def lif_multistep(
    currents: torch.Tensor,
    steps: int,
    params: LIFParams,
    spike_fn: SurrogateFn,
    *,
    detach_state: bool = False,
    state: LIFState | None = None,
) -> tuple[torch.Tensor, LIFState]:
    """Run :func:`lif_step` over ``steps`` steps.

    Parameters
    ----------
    currents
        ``[T', B, ...]`` input currents with ``T' == steps`` or ``T' == 1``
        (a constant current broadcast over time, e.g. direct encoding).
    steps
        Number of steps T.
    detach_state
        Cut the gradient between steps (hybrid mode).
    state
        Initial state; resting if omitted.

    Returns
    -------
    spikes ``[T, B, ...]`` and the final state.
    """
    if currents.shape[0] not in (1, steps):
        raise ValueError(f"currents has {currents.shape[0]} time steps; expected 1 or {steps}.")
    if state is None:
        state = initial_state(currents[0])
    # unbind, not currents[t]: indexing leaves one full-size zero-filled gradient per step in the backward
    inputs = currents.unbind(0)
    out = []
    for t in range(steps):
        if detach_state:
            state = LIFState(state.v.detach())
        s, state = lif_step(inputs[t if len(inputs) > 1 else 0], state, params, spike_fn)
        out.append(s)
    return torch.stack(out), state


# --- K ticks per step (DESIGN.md §6) -------------------------------------------------------------
#
# With ``K`` ticks per step the same neuron is integrated at a finer time resolution, exactly as the
# biophysical Brian2 mode integrates ``tau_m dV/dt = V_rest - V + R I`` (``sim.dynamics``), in units
# of the discrete membrane::
#
#     v[k] = d v[k-1] + g held[step(k)] + jump[k],    d = beta**(1/K),  g = (1 - d) / (1 - beta)
#     spike if v[k] >= theta and the neuron is not refractory; reset as above; refractory for K ticks
#
# ``held`` is a current held over its step (bias, the first layer's image drive): ``g`` is the exact
# integral of a constant input over one tick, so K ticks of it add what one discrete step adds.
# ``jump`` is the charge of synaptic (delta) inputs arriving in tick k. The refractory period is one
# step (K ticks, counted from the spike), so a neuron fires at most once per step as in the discrete
# model. ``K = 1`` is the discrete model (``lif_multistep`` is used for it, bit for bit).


class TickParams(NamedTuple):
    ticks: int  # K ticks per step
    decay: float  # d: membrane decay per tick
    gain: float  # g: a held drive's contribution per tick


def tick_params(beta: float, ticks: int) -> TickParams:
    """Decay and held-drive gain of one tick (see :func:`core.equations.tick_decay`)."""
    from core.equations import tick_decay, tick_gain

    return TickParams(ticks, tick_decay(beta, ticks), tick_gain(beta, ticks))


def lif_ticks(
    held: torch.Tensor | None,
    jump: torch.Tensor | None,
    steps: int,
    params: LIFParams,
    tick: TickParams,
    spike_fn: SurrogateFn,
    *,
    detach_state: bool = False,
) -> torch.Tensor:
    """LIF over ``steps * K`` ticks (equations above).

    Parameters
    ----------
    held
        Drive held over its step, ``[T', B, ...]`` with ``T' == 1`` (constant), ``steps`` (one per step)
        or ``steps * K`` (one per tick, e.g. a bias scaled by a mask that changes within the step); or ``None``.
    jump
        ``[T·K, B, ...]`` synaptic charge arriving in each tick, or ``None``.

    Returns
    -------
    spikes ``[T·K, B, ...]``.
    """
    k = tick.ticks
    if held is None and jump is None:
        raise ValueError("lif_ticks needs a held drive, a synaptic charge, or both.")
    if held is not None and held.shape[0] not in (1, steps, steps * k):
        raise ValueError(f"held drive has {held.shape[0]} entries; expected 1, {steps} or {steps * k}.")
    if jump is not None and jump.shape[0] != steps * k:
        raise ValueError(f"synaptic charge has {jump.shape[0]} ticks; expected {steps * k}.")
    like = jump[0] if jump is not None else held[0]
    per_tick = held is not None and held.shape[0] == steps * k > steps
    v = torch.zeros_like(like)
    wait = torch.zeros_like(like)  # ticks of refractoriness left
    out = []
    for i in range(steps * k):
        if detach_state:
            v = v.detach()
        v = v * tick.decay
        if held is not None:
            v = v + tick.gain * held[i if per_tick else (i // k if held.shape[0] > 1 else 0)]
        if jump is not None:
            v = v + jump[i]
        wait = (wait - 1).clamp_(min=0)
        s = spike_fn(v - params.theta) * (wait < 0.5)
        if params.reset is Reset.SUBTRACT:
            v = torch.sub(v, s, alpha=params.theta)
        else:
            v = v * (1.0 - s)
        wait = wait + k * s.detach()
        out.append(s)
    return torch.stack(out)
