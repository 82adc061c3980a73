"""Neuron, relay and synapse code of the two simulation modes, as Brian2 strings.

``exact`` (one tick = one PyTorch step): synaptic inputs are summed into
``acc_c`` / ``acc_p`` during the tick and cleared when the next tick starts,
the membrane follows ``v = beta v + u`` and a max-pool relay fires when any
input of its window fired in this tick.

``biophysical`` (``K`` ticks per step, physical units): the membrane
integrates ``tau_m dV/dt = V_rest - V + R I`` exactly over each tick
(constant input within a tick); held drives (the image current of the first
layer, every bias) enter as currents. A spike reaches its targets through one
of two synapse models, both delivering the discrete model's charge whatever
``dt`` is:

- ``delta`` (default): a jump of the target's membrane by ``w`` units in the
  tick of the spike, as in the discrete model, where a spike's input is added
  in full in the step it is emitted. A spike can cross all layers within one
  tick. A max-pool relay fires in the first tick of a step in which any input
  of its window fires, and not again in that step (the OR over the step). The
  mask of a flex layer sees the pool charge since the step began.
- ``pulse``: a rectangular current pulse one step long, switched on by the
  ``up`` pathway and off by the ``down`` pathway one step later. A relay counts
  the active pulses in its window and signals ``on`` / ``off`` when the count
  leaves / returns to zero (the OR of the pulses). A neuron needs up to a step
  to integrate a pulse, so every layer adds up to one step of latency.
  Pulses still running when an image ends are cut there: inputs are cleared
  when an image starts and ``down`` events of pulses from the previous image
  are ignored (``late(t)`` is 0 during the first step of an image).

After a spike a neuron is refractory for ``refractory`` (default: one step,
the discrete model's one spike per step). With ``K = 1`` both synapse models
reproduce the discrete update.

In both modes the membrane returns to rest when an image starts.
"""
from __future__ import annotations

import numpy as np
from brian2 import TimedArray

from core import equations
from sim.biophysics import BiophysicalParams

SYNAPSES = ("delta", "pulse")


class Dynamics:
    """Strings and constants of one mode; ``namespace`` holds the shared time signals."""

    def __init__(self, model: dict, steps: int, n_images: int, ticks: int, dt, bio: BiophysicalParams | None,
                 synapse: str = "delta"):
        if synapse not in SYNAPSES:
            raise ValueError(f"synapse model {synapse!r} is not one of {SYNAPSES}.")
        self.bio, self.ticks, self.dt, self.synapse = bio, ticks, dt, synapse
        image = np.zeros(steps * ticks)
        image[0] = 1.0
        late = np.ones(steps * ticks)
        late[:ticks] = 0.0
        step = np.zeros(ticks)
        step[0] = 1.0
        self.namespace = {"image_start": TimedArray(np.tile(image, n_images), dt=dt),
                          "step_start": TimedArray(np.tile(step, n_images * steps), dt=dt),
                          "late": TimedArray(np.tile(late, n_images), dt=dt)}
        reset = equations.RESETS[model.reset]
        if bio is None:
            self.constants = {"beta": model.beta, "theta": model.theta}
            self.v_unit, self.decay, self.v = "1", "beta", "v"
            self.threshold = equations.SPIKES.brian(v="v", theta="theta")
            self.reset = f"v = {reset.brian(v='v', theta='theta', rest='0')}"
            self.start = "acc_c = 0\nacc_p = 0\nv = v*(1 - image_start(t))"
            self.v_init = 0.0
        else:
            # exp(-dt/tau_m) = beta**(1/K): the one formula PyTorch's tick model uses (core.equations)
            decay = equations.tick_decay(model.beta, ticks)
            refractory_ticks = max(1, int(round(float(bio.refractory / dt))))
            self.constants = {"v_rest": bio.v_rest, "v_th": bio.v_threshold, "decay": decay,
                              "gain": (1.0 - decay) * bio.drive, "refractory_ticks": refractory_ticks}
            self.v_unit, self.decay, self.v = "volt", "decay", "(v - v_rest)"  # the membrane measured from rest
            self.threshold = f"{equations.SPIKES.brian(v='v', theta='v_th')} and wait < 0.5"
            self.reset = f"v = {reset.brian(v='v', theta='(v_th - v_rest)', rest='v_rest')}\nwait = refractory_ticks"
            clear = "acc_c = 0\nacc_p = 0\n" if self.delta else ("acc_c = acc_c*(1 - image_start(t))\n"
                                                                 "acc_p = acc_p*(1 - image_start(t))\n")
            self.constants["unit"] = bio.unit  # membrane jump per unit of delta input
            self.start = (clear + "v = v_rest + (v - v_rest)*(1 - image_start(t))\n"
                          f"wait = {equations.REFRACTORY_LEFT.brian(wait='wait')}*(1 - image_start(t))")
            self.v_init = bio.v_rest

    @property
    def exact(self) -> bool:
        return self.bio is None

    @property
    def delta(self) -> bool:
        """Biophysical mode with delta synapses."""
        return not self.exact and self.synapse == "delta"

    @property
    def impulse(self) -> bool:
        """Every input of a tick is added once (exact mode, delta synapses), not held while a pulse lasts."""
        return self.exact or self.delta

    def membrane(self, u: str) -> str:
        """Update of ``v`` by the drive ``u``, held for the tick (:data:`core.equations.MEMBRANE`)."""
        if self.exact:
            return f"v = {equations.MEMBRANE.brian(decay='beta', v='v', drive=u)}"
        return f"v = v_rest + {equations.MEMBRANE.brian(decay='decay', v=self.v, drive='gain*' + u)}"

    def membrane_split(self, held: str, jump: str) -> str:
        """Delta synapses: update of ``v`` by a ``held`` drive (bias currents) and the ``jump`` of this
        tick's synaptic charge (``u = held + jump``; :data:`core.equations.TICK_DRIVE`)."""
        drive = equations.TICK_DRIVE.brian(gain="gain", held=f"({held})", jump=f"unit*({jump})")
        return f"v = v_rest + {equations.MEMBRANE.brian(decay='decay', v=self.v, drive=drive)}"

    def neuron_state(self) -> str:
        return f"v : {self.v_unit}\n" + ("" if self.exact else "wait : 1\n")

    def drive(self, target: str, from_relay: bool, weighted: bool = True) -> dict:
        """Keyword arguments of a Synapses object through which the source drives ``target`` of the post group.

        Exact mode and delta synapses: each spike adds ``w`` (or 1) for the current tick. Pulse
        synapses: a neuron's spike adds it for one step; a relay adds it while its window is active.
        """
        w = "w" if weighted else "1"
        if self.impulse:
            return {"on_pre": f"{target}_post += {w}"}
        if from_relay:
            return {"on_pre": {"up": f"{target}_post += {w}", "down": f"{target}_post -= {w}"},
                    "on_event": {"up": "on", "down": "off"}}
        return {"on_pre": {"up": f"{target}_post += {w}", "down": f"{target}_post -= {w}*late(t)"},
                "delay": {"down": self.ticks * self.dt}}

    def relay(self) -> dict:
        """Keyword arguments of the NeuronGroup that ORs a max-pool window."""
        if self.exact:
            return {"model": "n : 1", "threshold": "n > 0.5", "reset": "n = 0"}  # the window's spikes are passed on
        if self.delta:
            return {"model": "n : 1\nfired : 1", "threshold": "n > 0.5 and fired < 0.5", "reset": "fired = 1"}
        return {"model": "n : 1\nactive : 1", "events": {"on": "n > 0.5 and active < 0.5",
                                                       "off": "n < 0.5 and active > 0.5"}}

    def relay_start(self) -> str:
        if self.exact:
            return "n = 0"
        if self.delta:
            return "n = 0\nfired = fired*(1 - step_start(t))"
        return "n = n*(1 - image_start(t))\nactive = active*(1 - image_start(t))"
