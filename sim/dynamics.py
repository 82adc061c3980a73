"""Neuron, relay and synapse code of the two simulation modes, as Brian2 strings.

``exact`` (one tick = one PyTorch step): synaptic inputs are summed into
``acc_c`` / ``acc_p`` during the tick and cleared when the next tick starts,
the membrane follows ``v = beta v + u`` and a max-pool relay fires when any
input of its window fired in this tick.

``biophysical`` (``K`` ticks per step, physical units): a spike drives its
targets with a rectangular current pulse one step long, switched on by the
``up`` pathway and off by the ``down`` pathway one step later, so every spike
delivers the same charge as in the discrete model whatever ``dt`` is. The
membrane integrates ``tau_m dV/dt = V_rest - V + R I`` exactly over each tick
(constant input within a tick). A relay counts the active pulses in its
window and signals ``on`` / ``off`` when the count leaves / returns to zero
(the OR of the pulses). After a spike a neuron is refractory for
``refractory`` (default: one step, the discrete model's one spike per step).
Pulses still running when an image ends are cut there: inputs are cleared
when an image starts and ``down`` events of pulses from the previous image
are ignored (``late(t)`` is 0 during the first step of an image).

In both modes the membrane returns to rest when an image starts.
"""
from __future__ import annotations

import numpy as np
from brian2 import TimedArray

from sim.biophysics import BiophysicalParams


class Dynamics:
    """Strings and constants of one mode; ``namespace`` holds the shared time signals."""

    def __init__(self, model: dict, steps: int, n_images: int, substeps: int, dt, bio: BiophysicalParams | None):
        self.bio, self.substeps, self.dt = bio, substeps, dt
        image = np.zeros(steps * substeps)
        image[0] = 1.0
        late = np.ones(steps * substeps)
        late[:substeps] = 0.0
        step = np.zeros(substeps)
        step[0] = 1.0
        self.namespace = {"image_start": TimedArray(np.tile(image, n_images), dt=dt),
                          "step_start": TimedArray(np.tile(step, n_images * steps), dt=dt),
                          "late": TimedArray(np.tile(late, n_images), dt=dt)}
        if bio is None:
            self.constants = {"beta": model["beta"], "theta": model["theta"]}
            self.v_unit, self.leak, self.gain = "1", "beta*v", ""
            self.threshold = "v >= theta"
            self.reset = "v -= theta" if model["reset"] == "subtract" else "v = 0"
            self.start = "acc_c = 0\nacc_p = 0\nv = v*(1 - image_start(t))"
            self.v_init = 0.0
        else:
            decay = float(np.exp(-dt / bio.tau_m))
            ticks = max(1, int(round(float(bio.refractory / dt))))
            self.constants = {"v_rest": bio.v_rest, "v_th": bio.v_threshold, "decay": decay,
                              "gain": (1.0 - decay) * bio.drive, "refractory_ticks": ticks}
            self.v_unit, self.leak, self.gain = "volt", "v_rest + (v - v_rest)*decay", "gain*"
            self.threshold = "v >= v_th and wait < 0.5"
            reset = "v -= v_th - v_rest" if model["reset"] == "subtract" else "v = v_rest"
            self.reset = reset + "\nwait = refractory_ticks"
            self.start = ("acc_c = acc_c*(1 - image_start(t))\nacc_p = acc_p*(1 - image_start(t))\n"
                          "v = v_rest + (v - v_rest)*(1 - image_start(t))\n"
                          "wait = clip(wait - 1, 0, refractory_ticks)*(1 - image_start(t))")
            self.v_init = bio.v_rest

    @property
    def exact(self) -> bool:
        return self.bio is None

    def neuron_state(self) -> str:
        return f"v : {self.v_unit}\n" + ("" if self.exact else "wait : 1\n")

    def drive(self, target: str, from_relay: bool, weighted: bool = True) -> dict:
        """Keyword arguments of a Synapses object through which the source drives ``target`` of the post group.

        Exact mode: each spike adds ``w`` (or 1) for the current tick. Biophysical mode: a
        neuron's spike adds it for one step (a pulse); a relay adds it while its window is active.
        """
        w = "w" if weighted else "1"
        if self.exact:
            return {"on_pre": f"{target}_post += {w}"}
        if from_relay:
            return {"on_pre": {"up": f"{target}_post += {w}", "down": f"{target}_post -= {w}"},
                    "on_event": {"up": "on", "down": "off"}}
        return {"on_pre": {"up": f"{target}_post += {w}", "down": f"{target}_post -= {w}*late(t)"},
                "delay": {"down": self.substeps * self.dt}}

    def relay(self) -> dict:
        """Keyword arguments of the NeuronGroup that ORs a max-pool window."""
        if self.exact:
            return {"model": "n : 1", "threshold": "n > 0.5"}
        return {"model": "n : 1\nactive : 1", "events": {"on": "n > 0.5 and active < 0.5",
                                                       "off": "n < 0.5 and active > 0.5"}}

    def relay_start(self) -> str:
        return "n = 0" if self.exact else "n = n*(1 - image_start(t))\nactive = active*(1 - image_start(t))"
