"""From the discrete LIF of the trained network to a continuous-time LIF in physical units.

Discrete model (one step, ``training.neurons``)::

    v[t] = beta v[t-1] + u[t],   spike if v >= theta,   reset v -= theta (or v = 0)

Continuous model (``biophysical`` mode)::

    tau_m dV/dt = V_rest - V + R I(t),   spike if V >= V_th,   reset V -= (V_th - V_rest) (or V = V_rest)

:func:`discrete_to_biophysical` is the one mapping between them. One discrete
step lasts ``step = tau_m ln(1/beta)``, so that ``beta = exp(-step / tau_m)``;
one unit of ``v`` is ``(V_th - V_rest) / theta`` millivolts; a drive ``u``
held for a whole step corresponds to ``R I = u * unit / (1 - beta)``, because
integrating the ODE exactly over one step with constant input gives
``V - V_rest -> beta (V - V_rest) + (1 - beta) R I``. With these numbers a
simulation whose ``dt`` equals ``step`` reproduces the discrete model
exactly; ``dt = step / K`` resolves spike times within a step.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from brian2 import Quantity, ms, mV

from core import equations


class BiophysicalParams(NamedTuple):
    """Physical LIF parameters (brian2 quantities); ``drive * u`` is ``R I`` for a drive ``u`` in discrete units."""

    step: Quantity  # duration of one discrete step
    tau_m: Quantity  # membrane time constant
    v_rest: Quantity  # resting potential, also the reset-to-zero target
    v_threshold: Quantity  # firing threshold
    unit: Quantity  # voltage of one unit of the discrete membrane variable
    drive: Quantity  # R*I per unit of held drive u: unit / (1 - beta)
    refractory: Quantity  # absolute refractory period after a spike


_DEFAULTS = equations.PHYSICS_DEFAULTS


def discrete_to_biophysical(beta: float, theta: float, tau_m: Quantity = _DEFAULTS["tau_m_ms"] * ms,
                            v_rest: Quantity = _DEFAULTS["v_rest_mv"] * mV,
                            v_threshold: Quantity = _DEFAULTS["v_threshold_mv"] * mV,
                            refractory: Quantity | None = None) -> BiophysicalParams:
    """Map the discrete LIF ``(beta, theta)`` to physical units, fixing ``tau_m`` and the voltage scale.

    ``refractory`` defaults to one step: the discrete neuron fires at most once per step.

    Raises
    ------
    ValueError
        If ``beta`` is not strictly between 0 and 1 (``beta = 1`` has no leak and
        ``beta = 0`` no memory, neither has a finite physical step) or the voltages
        are not ordered ``v_rest < v_threshold``.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta={beta} has no continuous-time equivalent; the biophysical mode needs 0 < beta < 1.")
    if not v_threshold > v_rest:
        raise ValueError(f"v_threshold={v_threshold} must lie above v_rest={v_rest}.")
    if not (tau_m > 0 * ms and theta > 0):
        raise ValueError(f"tau_m={tau_m} and theta={theta} must be positive.")
    unit = (v_threshold - v_rest) / theta
    step = equations.step_ms(beta, float(tau_m / ms)) * ms
    return BiophysicalParams(step=step, tau_m=tau_m, v_rest=v_rest, v_threshold=v_threshold, unit=unit,
                             drive=unit / (1.0 - beta), refractory=step if refractory is None else refractory)


def biophysical_to_discrete(params: BiophysicalParams) -> tuple[float, float]:
    """Inverse of :func:`discrete_to_biophysical`: ``(beta, theta)``."""
    return float(np.exp(-params.step / params.tau_m)), float((params.v_threshold - params.v_rest) / params.unit)


def to_voltage(v: np.ndarray | float, params: BiophysicalParams) -> Quantity:
    """Membrane potential of a discrete membrane value ``v``."""
    return params.v_rest + v * params.unit
