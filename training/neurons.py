"""Leaky integrate-and-fire (LIF) neurons: one tick as a pure step function, and its loop over time.

The equations are :mod:`core.equations`' neuron equations (docs/model.md, "Neuron"); with ``K`` ticks per
discrete step (``model.ticks``) one tick is::

    drive[k] = g held[step(k)] + jump[k]           g = (1 - d) / (1 - beta)          (TICK_DRIVE)
    v[k]     = d v[k-1] + drive[k]                 d = beta ** (1/K)                 (MEMBRANE)
    s[k]     = H(v[k] - theta), where not refractory                                 (SPIKES)
    reset:     v <- v - theta s        ("subtract")  or  v <- v (1 - s)  ("zero")    (RESET_*)
    refractory for ``refractory_ticks`` ticks after a spike (default K: one step)    (REFRACTORY_LEFT)

``held`` is a drive held over its step (a bias current, the first layer's image current): ``g`` is the exact
integral of a constant input over one tick, so K ticks of it add what one discrete step adds. ``jump`` is the
charge of synaptic (delta) inputs arriving in tick ``k``. ``K = 1`` is the discrete model
``v[t] = beta v[t-1] + I[t]`` (``d = beta``, ``g = 1``, and a refractory period of one tick is none);
:func:`lif_step` is the single place one tick is written, :func:`lif_run` loops it (or runs the fused kernel of
:mod:`training.fused`, tested equal to it, where that applies).

Gradient flow: ``stbp`` backpropagates through time, ``H`` gets the surrogate derivative; ``hybrid`` detaches
the state passed from one tick to the next (no gradient through time) and ``H`` gets the straight-through rate
derivative. The refractory gate and the countdown carry no gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from core import equations
from core.config import Reset
from training import fused
from training.surrogate import SurrogateFn


class LIFParams(NamedTuple):
    """A LIF layer's constants. ``ticks`` is K; ``refractory_ticks`` defaults to K (one step)."""

    beta: float
    theta: float
    reset: Reset
    ticks: int = 1
    refractory_ticks: int | None = None

    @property
    def decay(self) -> float:
        """``d``: the membrane decay per tick (:func:`core.equations.tick_decay`)."""
        return equations.tick_decay(self.beta, self.ticks)

    @property
    def gain(self) -> float:
        """``g``: a held drive's contribution per tick (:func:`core.equations.tick_gain`)."""
        return equations.tick_gain(self.beta, self.ticks)

    @property
    def refractory(self) -> int:
        """Ticks a neuron stays silent after a spike (counted from the spike's tick)."""
        return self.ticks if self.refractory_ticks is None else self.refractory_ticks


class LIFState(NamedTuple):
    v: torch.Tensor
    wait: torch.Tensor | None = None  # refractory ticks left (None: no refractoriness, at most one tick)


def initial_state(like: torch.Tensor, params: LIFParams | None = None) -> LIFState:
    """Resting state (v = 0, not refractory) shaped like one tick of input."""
    refractory = params is not None and params.refractory > 1
    return LIFState(torch.zeros_like(like), torch.zeros_like(like) if refractory else None)


def lif_step(drive: torch.Tensor, state: LIFState, params: LIFParams,
             spike_fn: SurrogateFn) -> tuple[torch.Tensor, LIFState]:
    """Advance one tick with this tick's ``drive`` (TICK_DRIVE): ``(spikes, new_state)``."""
    v = torch.add(drive, state.v, alpha=params.decay)  # MEMBRANE, decay v + drive, as one fused multiply-add
    s = spike_fn(v - params.theta)  # SPIKES: H(v - theta)
    wait = state.wait
    if wait is not None:
        wait = equations.refractory_left(wait)
        s = s * (wait < 0.5)
    if params.reset is Reset.SUBTRACT:  # RESET_SUBTRACT where s = 1 (s is 0 or 1)
        v = torch.sub(v, s, alpha=params.theta)
    else:  # RESET_ZERO where s = 1
        v = v * (1.0 - s)
    if wait is not None:
        wait = wait + params.refractory * s.detach()
    return s, LIFState(v, wait)


def lif_run(held: torch.Tensor | None, jump: torch.Tensor | None, steps: int, params: LIFParams,
            spike_fn: SurrogateFn, *, detach_state: bool = False, state: LIFState | None = None,
            allow_fused: bool = False) -> tuple[torch.Tensor, LIFState]:
    """Run :func:`lif_step` over the ``steps * K`` ticks of a presentation.

    Parameters
    ----------
    held
        Drive held over its step: ``[T', B, ...]`` with ``T'`` = 1 (constant), ``steps`` (one per step) or
        ``steps * K`` (one per tick, e.g. a bias scaled by a mask that changes within the step); or ``None``.
    jump
        ``[T·K, B, ...]`` synaptic charge arriving in each tick, or ``None``.
    detach_state
        Cut the gradient between ticks (hybrid mode).
    state
        Initial state; resting if omitted.
    allow_fused
        Run the fused kernel (:func:`training.fused.lif_fused`, the same numbers in one autograd node) where it
        applies: one tick per step, one kind of drive, no initial state.

    Returns
    -------
    spikes ``[T·K, B, ...]`` and the final state.
    """
    k = params.ticks
    if held is None and jump is None:
        raise ValueError("a LIF layer needs a held drive, a synaptic charge, or both.")
    if held is not None and held.shape[0] not in (1, steps, steps * k):
        allowed = f"1 or {steps}" if k == 1 else f"1, {steps} or {steps * k}"
        raise ValueError(f"held drive has {held.shape[0]} entries; expected {allowed}.")
    if jump is not None and jump.shape[0] != steps * k:
        raise ValueError(f"synaptic charge has {jump.shape[0]} ticks; expected {steps * k}.")
    gain = params.gain
    if allow_fused and state is None:  # one autograd node over all ticks, each tick's drive computed up front
        drive = _tick_drives(held, jump, steps, k, gain)
        spikes, v = fused.lif_fused(drive, steps * k, params.decay, params.theta, params.reset, spike_fn,
                                    detach_state=detach_state, refractory=params.refractory)
        return spikes, LIFState(v)
    held_at = _held_index(held, steps, k)
    # unbind, not x[i]: indexing leaves one full-size zero-filled gradient per tick in the backward
    helds = held.unbind(0) if held is not None else None
    jumps = jump.unbind(0) if jump is not None else None
    if state is None:
        state = initial_state((jumps or helds)[0], params)
    out = []
    for i in range(steps * k):
        if detach_state:
            state = LIFState(state.v.detach(), state.wait)
        h = None if helds is None else (helds[held_at(i)] if gain == 1.0 else gain * helds[held_at(i)])
        drive = h if jumps is None else (jumps[i] if h is None else h + jumps[i])  # TICK_DRIVE
        s, state = lif_step(drive, state, params, spike_fn)
        out.append(s)
    return torch.stack(out), state


def _tick_drives(held: torch.Tensor | None, jump: torch.Tensor | None, steps: int, ticks: int,
                 gain: float) -> torch.Tensor:
    """Each tick's drive ``g held + jump`` (TICK_DRIVE) as one tensor ``[T·K or 1, B, ...]``, with the same
    arithmetic as :func:`lif_run`'s loop."""
    if held is None:
        return jump
    if gain != 1.0:
        held = gain * held
    if held.shape[0] not in (1, steps * ticks) and ticks > 1:  # per step: repeat over the step's ticks
        held = held.repeat_interleave(ticks, 0)
    if jump is None:
        return held
    return (held if held.shape[0] == steps * ticks else held.expand_as(jump)) + jump


def _held_index(held: torch.Tensor | None, steps: int, ticks: int):
    """Tick ``i`` -> the entry of ``held`` that drives it (constant, per step or per tick)."""
    n = 0 if held is None else held.shape[0]
    if n == steps * ticks:
        return lambda i: i
    if n == steps and steps > 1:
        return lambda i: i // ticks
    return lambda i: 0
