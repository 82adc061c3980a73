"""The Brian2 code of one neuron layer, rendered from :mod:`core.equations` (docs/model.md, "Brian2").

:func:`layer_code` is the one place where a layer's model string, per-tick
update, threshold, reset and start-of-tick code are put together;
:mod:`sim.network` builds its groups from it and :func:`flex_neuron_model`
prints it. The flex update renders, in order, ``LOGITS`` and ``MASK_INPUT``
(``z``), the mask's sigma (``m``) and ``MIX`` (the current ``u``)::

    Ic = bias + acc_c                 (first layer: conv of the image, sim.analog)
    Ip = acc_p                        (first layer: pool of the image)
    z  = lscale*(Ip - thr) + lshift + (eta(t, ch) + b)
    m  = sigma(z)
    v  = beta*v + (Ip + m*(Ic - Ip))  (exact; biophysical: V_rest + (V - V_rest) decay + gain u)

With delta synapses (biophysical mode) a spike-driven layer's ``acc_c`` / ``acc_p`` hold
the synaptic charge of this tick: the bias is held (``gain m bias``), the charge
jumps (``unit MIX(m, acc_c, Ip)``; the two add up to ``MIX(m, bias + acc_c, Ip)``),
and the mask sees the pool charge since the step began (``pstep``) instead of ``Ip``.
"""
from __future__ import annotations

from typing import NamedTuple

from core import equations
from sim.dynamics import Dynamics


class LayerCode(NamedTuple):
    """Brian2 strings of one conv or flex layer's neurons (NeuronGroup model, run_regularly code, events)."""

    model: str  # NeuronGroup equations
    update: str  # every tick, in the layer's slot of the `groups` schedule
    threshold: str
    reset: str
    start: str  # every tick, `start` slot: clears the inputs, rests the membrane when an image starts

    def text(self) -> str:
        """One printable block."""
        def block(title: str, code: str) -> str:
            return f"{title}:\n" + "".join(f"    {line}\n" for line in code.strip().splitlines())
        return (block("model", self.model) + block("start of every tick", self.start)
                + block("update (every tick)", self.update) + block("threshold", self.threshold)
                + block("reset", self.reset))


def layer_code(dyn: Dynamics, flex: bool, sigma: str, analog: bool, ticks: int) -> LayerCode:
    """The code of a layer whose conv (and pool) path come from synapses, or from the image (``analog``).

    Parameters
    ----------
    dyn
        The mode's strings (:class:`sim.dynamics.Dynamics`).
    flex
        A flex layer (mask and mixing) or a plain conv layer.
    sigma
        ``model.mask_sigma`` (:func:`core.equations.mask_sigma`).
    analog
        The first layer under direct encoding: both paths are ``TimedArray`` s ``conv_in`` / ``pool_in``.
    ticks
        Ticks ``K`` per discrete step (delta synapses: the pathway drives are the tick's charge times ``K``).
    """
    split = dyn.delta and not analog  # delta synapses into a spike-driven layer: held bias, charge jumps
    model = dyn.neuron_state() + "acc_c : 1\nacc_p : 1\nIc : 1\nIp : 1\nbias : 1 (constant)\nch : integer (constant)\n"
    conv_src, pool_src = ("conv_in(t, i)", "pool_in(t, i)") if analog else ("bias + acc_c", "acc_p")
    if not flex:
        update = f"Ic = {conv_src}\n" + (dyn.membrane_split("bias", "acc_c") if split else dyn.membrane("Ic"))
        return LayerCode(model, update, dyn.threshold, dyn.reset, dyn.start)
    model += ("m : 1\nthr : 1 (constant)\nlscale : 1 (constant)\nlshift : 1 (constant)\nb : 1 (linked)\n"
              "rsel : 1\nrinv : 1\n" + ("pstep : 1\n" if split else ""))
    seen = "pstep" if split else "Ip"  # delta synapses: the pool charge since the step began
    logits = equations.LOGITS.brian(scale="lscale", pool=seen, threshold="thr", shift="lshift")
    update = (f"Ic = {conv_src}\nIp = {pool_src}\n" + ("pstep = pstep*(1 - step_start(t)) + Ip\n" if split else "")
              + f"z = {equations.MASK_INPUT.brian(logits=logits, eta='eta(t, ch)', b='b')}\n"
              f"m = {equations.mask_sigma(sigma).brian(z='z')}\n")
    if split:
        # the bias is held, the tick's synaptic charge jumps; the pathway drives of the plasticity rule
        # are rates, the charge of the tick spread over the tick
        jump = equations.MIX.brian(m="m", conv="acc_c", pool="Ip")
        update += (f"{dyn.membrane_split('m*bias', jump)}\n"
                   f"rsel = bias + {ticks}*acc_c\nrinv = {ticks}*Ip")
    else:
        update += f"{dyn.membrane('(' + equations.MIX.brian(m='m', conv='Ic', pool='Ip') + ')')}\nrsel = Ic\nrinv = Ip"
    return LayerCode(model, update, dyn.threshold, dyn.reset, dyn.start)


# per-channel moments of the tick's paths, summed over the channel's positions into the mask unit
MOMENTS = {"sel_relu": "clip(rsel_pre, 0, inf)", "sel_sq": "rsel_pre**2", "inv_relu": "clip(rinv_pre, 0, inf)",
           "inv_sq": "rinv_pre**2", "mbar": "m_pre"}


def mask_unit_model() -> str:
    """Model of the per-channel mask unit: the plastic bias ``b``, the summed moments, the drives
    (:data:`core.equations.DRIVE`)."""
    drive = equations.DRIVE.brian
    return ("b : 1\nsel_relu : 1\nsel_sq : 1\ninv_relu : 1\ninv_sq : 1\nmbar : 1\n"
            f"rs = {drive(mean_relu='sel_relu', mean_square='sel_sq')} : 1\n"
            f"ri = {drive(mean_relu='inv_relu', mean_square='inv_sq')} : 1\n")


def plasticity_rule() -> str:
    """The online rule (:data:`core.equations.PLASTICITY`), with ``plasticity_rate_tick`` /
    ``plasticity_decay_tick`` = ``model.plasticity_rate`` / ``model.plasticity_decay`` per tick."""
    rule = equations.PLASTICITY.brian(plasticity_rate="plasticity_rate_tick", r_sel="rs", r_inv="ri",
                                      plasticity_decay="plasticity_decay_tick", b="b")
    return f"b += {rule}"
