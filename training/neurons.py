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

from training.config import Reset
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
