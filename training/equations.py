"""The PlasticFlex equations that PyTorch and Brian2 share, free of torch.

DESIGN.md §1::

    u(x, t) = m(x, t) * Conv(x) + (1 - m(x, t)) * Pool(x)
    m(x, t) = sigma(logits(x) + eta(t) + b)
    logits(x) = BN(Pool(x) - threshold)                  ("threshold" mechanism)
    Pool(x)   = P @ maxpool(x)                           (P: the channel map below)
    after each training step:  b <- b + lambda * (r_sel - r_inv)

``r_sel`` / ``r_inv`` (per output channel) are the *mean rectified output* of
the conv / pool path, ``mean(relu(Conv(x)))`` and ``mean(relu(Pool(x)))``,
averaged over batch, positions and time steps; the paths are taken before
the mask is applied, so the rule compares the raw drive of the two pathways.
The pathway that drives harder gains weight: ``r_sel > r_inv`` raises ``b`` and
so the conv share ``m``.

The functions below use only arithmetic and ``.clip`` so they work unchanged
on numpy arrays and torch tensors; ``*_EXPR`` are the same formulas as Brian2
expression strings.
"""
from __future__ import annotations

import numpy as np

HARD_SIGMOID_EXPR = "clip({z} / 6.0 + 0.5, 0.0, 1.0)"
LOGISTIC_EXPR = "1.0 / (1.0 + exp(-({z})))"


def hard_sigmoid(z):
    """``clip(z / 6 + 1/2, 0, 1)`` (same as ``torch.nn.functional.hardsigmoid``)."""
    return (z / 6.0 + 0.5).clip(0.0, 1.0)


def logistic(z):
    """``1 / (1 + exp(-z))``."""
    return 1.0 / (1.0 + np.exp(-z)) if isinstance(z, (np.ndarray, float)) else z.sigmoid()


def plasticity_delta(r_sel, r_inv, rate: float):
    """Change of the plastic mask bias: ``Δb = λ (r_sel − r_inv)``."""
    return rate * (r_sel - r_inv)


def channel_map_matrix(c_in: int, c_out: int) -> np.ndarray:
    """Parameter-free map of the pool path's channels, ``C_in -> C_out``.

    Linear interpolation along the channel axis with aligned end points:
    output channel ``j`` reads position ``p = j (C_in - 1) / (C_out - 1)`` and
    mixes channels ``floor(p)`` and ``floor(p) + 1`` with weights ``1 - frac(p)``
    and ``frac(p)``. ``C_in == C_out`` gives the identity. Rows sum to one, so
    a map of spikes stays in [0, 1].

    Returns
    -------
    ``[C_out, C_in]`` float64 matrix ``P`` with ``Pool(x)[j] = sum_i P[j, i] maxpool(x)[i]``.
    """
    if c_in < 1 or c_out < 1:
        raise ValueError(f"channel counts must be >= 1, got c_in={c_in}, c_out={c_out}.")
    matrix = np.zeros((c_out, c_in))
    if c_out == 1 or c_in == 1:
        matrix[:, 0 if c_in == 1 else c_in // 2] = 1.0
        return matrix
    pos = np.arange(c_out) * (c_in - 1) / (c_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), c_in - 2)
    frac = pos - lo
    rows = np.arange(c_out)
    matrix[rows, lo] += 1.0 - frac
    matrix[rows, lo + 1] += frac
    return matrix


# --- time resolution: K ticks per discrete step (DESIGN.md §6) ----------------------------------
# The continuous membrane tau_m dV/dt = V_rest - V + R I, integrated exactly over a tick of dt = step/K
# with the input held: decay d = exp(-dt/tau_m) = beta**(1/K) per tick; a drive u held over a step adds
# g u per tick with g = (1 - d)/(1 - beta), so K ticks of it add what one step adds (u at K = 1).

PHYSICS_DEFAULTS = {"tau_m_ms": 10.0, "v_rest_mv": -65.0, "v_threshold_mv": -50.0}


def tick_decay(beta: float, ticks: int) -> float:
    """Membrane decay per tick, ``beta ** (1 / K)`` (``beta`` itself at ``K = 1``)."""
    if ticks < 1:
        raise ValueError(f"ticks={ticks} must be >= 1.")
    return float(beta) if ticks == 1 else float(np.exp(np.log(beta) / ticks))


def tick_gain(beta: float, ticks: int) -> float:
    """Per-tick contribution of a drive held over its step, ``(1 - d) / (1 - beta)`` (1 at ``K = 1``)."""
    return 1.0 if ticks == 1 else (1.0 - tick_decay(beta, ticks)) / (1.0 - beta)


def step_ms(beta: float, tau_m_ms: float) -> float:
    """Duration of one discrete step, ``tau_m ln(1/beta)`` (ms)."""
    return float(tau_m_ms * np.log(1.0 / beta))
