"""The PlasticFlex equations that PyTorch and Brian2 share, free of torch.

docs/model.md, "Network"::

    u(x, t) = m(x, t) * Conv(x) + (1 - m(x, t)) * Pool(x)
    m(x, t) = sigma(logits(x) + eta(t) + b)
    logits(x) = BN(Pool(x) - threshold)                  ("threshold" mechanism)
    Pool(x)   = P @ maxpool(x)                           (P: the channel map below)
    after each training step:  b <- b + lambda * (r_sel - r_inv) - delta * b

Pathway drives (per output channel). For a path's output ``x`` at one time
step, its drive is the mean rectified output divided by its root mean square,
both over batch and positions::

    drive(x_t) = mean(relu(x_t)) / sqrt(mean(x_t^2) + EPS)        in [0, 1]

and ``r_sel`` / ``r_inv`` are the means over time steps of the drives of
the conv path ``Conv(x)`` and the pool path ``Pool(x)``, taken before the
mask is applied. Why this form: the drive is scale-free (a path multiplied by
any positive constant has the same drive), so the batch-normed conv path and
the pooled spikes (<= 1) compete on equal terms instead of the larger-scaled
path winning everywhere (with the raw means, ``r_sel > r_inv`` held in every
channel and ``b`` only rose). What it measures: the rectified mean, i.e. how
hard the path pushes the neuron up, in units of the path's own RMS. Reference
values: 1 for a constant positive path, ``1/sqrt(2 pi) = 0.40`` for a zero-mean
Gaussian path (a batch-normed conv with zero shift), ``sqrt(q)`` for binary
spikes at rate ``q`` (so pooled spikes out-drive a centred conv path when more
than 16 % of them are on). The pathway that drives harder gains weight:
``r_sel > r_inv`` raises ``b`` and so the conv
share ``m``.

Boundedness: both drives lie in [0, 1], so with ``0 < delta <= 1`` every
update keeps ``|b| <= lambda / delta`` (``|b'| <= (1 - delta) lambda/delta +
lambda``), whatever the number of updates; ``b`` relaxes to
``lambda (r_sel - r_inv) / delta`` with time constant ``1/delta`` updates.
``lambda = 0`` disables the rule.

Each formula is defined once here as an :class:`Equation`: a function that uses
only arithmetic and ``.clip`` (so it works unchanged on numpy arrays and torch
tensors) and the same formula as a Brian2 expression template, rendered with
the caller's variable names by :meth:`Equation.brian`. ``training/`` calls the
functions, ``sim/`` renders the templates; ``tests/test_equations.py``
evaluates every rendering with Brian2 against its function. The flex
equations (per neuron, per step; ``scale`` / ``shift`` are the logit BN folded
for inference, ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean scale``)::

    LOGITS       z0 = scale (pool - threshold) + shift
    MASK_INPUT   z  = z0 + (eta(t) + b)
    mask_sigma   m  = sigma(z)               (HARD_SIGMOID or LOGISTIC)
    MIX          u  = pool + m (conv - pool) (= m conv + (1 - m) pool)

The operation order is part of the definition (the float64 reference of
``training.export`` follows it exactly; Brian2's sympy pass re-associates sums,
so exact mode agrees with it to a few ulp, which the spike-for-spike tests allow
for only because ties at the threshold are rare). Training's fused fast paths (``torch.addcmul`` for ``MIX``,
``training.fused.mask_mix``) round ``m (conv - pool)`` once less and are
tested against these definitions.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Equation:
    """One formula: ``fn`` on numpy arrays or torch tensors, ``expr`` the same as a Brian2 template.

    ``expr`` names the arguments of ``fn`` in braces (``{pool}``); :meth:`brian` fills them in with
    Brian2 variable names or sub-expressions, which are inserted as they are (no parentheses added:
    the templates bracket where the operation order needs it).
    """

    name: str
    fn: Callable
    expr: str
    condition: bool = False  # a boolean expression (a threshold), not a value

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    @property
    def args(self) -> tuple[str, ...]:
        """The placeholders of ``expr``, in order of first appearance."""
        names = [field for _, field, _, _ in string.Formatter().parse(self.expr) if field]
        return tuple(dict.fromkeys(names))

    def brian(self, **names: str) -> str:
        """The Brian2 expression with every placeholder replaced by ``names[placeholder]``."""
        missing = set(self.args) - set(names)
        if missing:
            raise KeyError(f"{self.name}: no Brian2 name given for {sorted(missing)} (needs {list(self.args)}).")
        return self.expr.format(**names)


# --- the mask nonlinearity ----------------------------------------------------------------------

def hard_sigmoid(z):
    """``clip(z / 6 + 1/2, 0, 1)`` (the values of ``torch.nn.functional.hardsigmoid``, up to rounding)."""
    return (z / 6.0 + 0.5).clip(0.0, 1.0)


def logistic(z):
    """``1 / (1 + exp(-z))``."""
    return 1.0 / (1.0 + np.exp(-z)) if isinstance(z, (np.ndarray, float)) else z.sigmoid()


HARD_SIGMOID = Equation("hard_sigmoid", hard_sigmoid, "clip({z} / 6.0 + 0.5, 0.0, 1.0)")
LOGISTIC = Equation("logistic", logistic, "1.0 / (1.0 + exp(-({z})))")
SIGMAS = {"hard": HARD_SIGMOID, "logistic": LOGISTIC}  # model.mask_sigma -> its equation


def mask_sigma(name) -> Equation:
    """The mask nonlinearity ``sigma`` of ``model.mask_sigma`` (``"hard"`` / ``"logistic"``, or the enum)."""
    key = getattr(name, "value", name)
    if key not in SIGMAS:
        raise ValueError(f"mask_sigma={key!r} is not one of {tuple(SIGMAS)}.")
    return SIGMAS[key]


# --- the flex layer -----------------------------------------------------------------------------

def flex_logits(pool, threshold, scale, shift):
    """Threshold mechanism with the batch-norm folded: ``scale (pool - threshold) + shift``."""
    return scale * (pool - threshold) + shift


def mask_input(logits, eta, b):
    """Argument of the mask nonlinearity, ``logits + (eta(t) + b)``."""
    return logits + (eta + b)


def mix(m, conv, pool):
    """Current of a flex unit, ``pool + m (conv - pool)`` (= ``m conv + (1 - m) pool``)."""
    return pool + m * (conv - pool)


LOGITS = Equation("logits", flex_logits, "{scale}*({pool} - {threshold}) + {shift}")
MASK_INPUT = Equation("mask_input", mask_input, "{logits} + ({eta} + {b})")
MIX = Equation("mix", mix, "{pool} + {m}*({conv} - {pool})")


def maps_channels(c_in: int, c_out: int) -> bool:
    """Whether the pool path applies its channel map ``P``.

    ``C_in == C_out`` makes ``P`` the identity (:func:`channel_map_matrix`): PyTorch, the float64
    reference and ``sim.analog`` skip it, ``Pool(x) = maxpool(x)``. (Brian2 wires it as one synapse of
    weight 1 per channel, which adds the same numbers.)
    """
    return c_in != c_out


# --- input ---------------------------------------------------------------------------------------
# CIFAR-10 training-set channel statistics; direct encoding feeds the normalised image, inside the model,
# so attacks work in [0, 1] pixel space (docs/model.md, "Network"). Exports carry the model's copy as input.mean/std.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def normalise_input(x, mean, std):
    """Pixels in [0, 1] to the network's input, ``(x - mean) / std`` per channel (broadcast by the caller)."""
    return (x - mean) / std


NORMALISE = Equation("normalise", normalise_input, "({x} - {mean}) / {std}")


# --- pathway drives and plasticity ----------------------------------------------------------------
EPS = 1e-12  # keeps a silent path's drive at 0 instead of 0/0


def pathway_drive(x, dims):
    """Scale-free drive of one path, ``mean(relu(x)) / sqrt(mean(x^2) + EPS)`` over ``dims``."""
    return drive_from_moments(x.clip(0.0, None).mean(dims), (x * x).mean(dims))


def drive_from_moments(mean_relu, mean_square):
    """The drive from its two moments (so that shards of a batch can be combined exactly by averaging them)."""
    return mean_relu / (mean_square + EPS) ** 0.5


def plasticity_delta(r_sel, r_inv, plasticity_rate: float, plasticity_decay: float, b):
    """Change of the plastic mask bias: ``Δb = λ (r_sel − r_inv) − δ b``."""
    return plasticity_rate * (r_sel - r_inv) - plasticity_decay * b


# Brian2 renderings (per tick, per channel; in sim/ the means over positions are summed variables)
DRIVE = Equation("drive", drive_from_moments, f"{{mean_relu}} / sqrt({{mean_square}} + {EPS!r})")
PLASTICITY = Equation("plasticity", plasticity_delta, "{plasticity_rate}*({r_sel} - {r_inv}) - {plasticity_decay}*{b}")


def plasticity_bound(plasticity_rate: float, plasticity_decay: float) -> float:
    """Largest ``|b|`` the rule can reach from ``b = 0`` (``inf`` without decay)."""
    return plasticity_rate / plasticity_decay if plasticity_decay > 0 else (0.0 if plasticity_rate == 0 else float("inf"))


def channel_map_matrix(c_in: int, c_out: int) -> np.ndarray:
    """Parameter-free map of the pool path's channels, ``C_in -> C_out``.

    Linear interpolation along the channel axis with aligned end points:
    output channel ``j`` reads position ``p = j (C_in - 1) / (C_out - 1)`` and
    mixes channels ``floor(p)`` and ``floor(p) + 1`` with weights ``1 - frac(p)``
    and ``frac(p)``. ``C_in == C_out`` gives the identity (:func:`maps_channels`). Rows sum to one, so
    a map of spikes stays in [0, 1].

    Returns
    -------
    ``[C_out, C_in]`` float64 matrix ``P`` with ``Pool(x)[j] = sum_i P[j, i] maxpool(x)[i]``.
    """
    if c_in < 1 or c_out < 1:
        raise ValueError(f"channel counts must be >= 1, got c_in={c_in}, c_out={c_out}.")
    if not maps_channels(c_in, c_out):
        return np.eye(c_in)
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


# --- the neuron: leaky integrate-and-fire, one tick at a time (docs/model.md, "Neuron") -------------
# The membrane ``v`` is measured from rest in units of the discrete model (threshold ``theta``). One tick of
# the K ticks of a step: the leak, this tick's drive, the threshold, the reset of a neuron that fired, and a
# refractory countdown. At K = 1 a tick is the discrete step (decay beta, gain 1) and a refractory period of
# one tick is no refractoriness at all: the discrete model ``v[t] = beta v[t-1] + I[t]``. training.neurons
# runs these as torch ops (the membrane as one fused multiply-add, ``torch.add(drive, v, alpha=decay)``,
# tested equal to MEMBRANE to one rounding); sim.dynamics renders them for Brian2 with ``v - v_rest`` for
# ``v`` in biophysical mode.

def membrane(v, decay, drive):
    """The membrane after one tick: ``decay v + drive`` (``drive`` = held gain x held + this tick's charge)."""
    return decay * v + drive


def tick_drive(gain, held, jump):
    """The drive of one tick: a current held over its step, integrated over the tick (``gain held``), plus the
    synaptic charge that arrives in the tick (``jump``, delta synapses)."""
    return gain * held + jump


def spikes(v, theta):
    """Whether the membrane has reached the threshold, ``v >= theta`` (PyTorch's spike function is the
    Heaviside step of ``v - theta``, with a surrogate derivative)."""
    return v >= theta


def reset_subtract(v, theta):
    """Membrane of a neuron that fired, reset by subtraction: ``v - theta`` (keeps the residual)."""
    return v - theta


def reset_zero(rest):
    """Membrane of a neuron that fired, reset to rest: ``rest`` (0 in the discrete model's units)."""
    return rest


def refractory_left(wait):
    """Refractory ticks left after this tick, ``max(wait - 1, 0)``; a neuron fires only where it is 0."""
    return (wait - 1.0).clip(0.0, None)


MEMBRANE = Equation("membrane", membrane, "{decay}*{v} + {drive}")
TICK_DRIVE = Equation("tick_drive", tick_drive, "{gain}*{held} + {jump}")
SPIKES = Equation("spikes", spikes, "{v} >= {theta}", condition=True)
RESET_SUBTRACT = Equation("reset_subtract", reset_subtract, "{v} - {theta}")
RESET_ZERO = Equation("reset_zero", reset_zero, "{rest}")
REFRACTORY_LEFT = Equation("refractory_left", refractory_left, "clip({wait} - 1.0, 0.0, inf)")
RESETS = {"subtract": RESET_SUBTRACT, "zero": RESET_ZERO}  # model.reset -> its equation

# --- time resolution: K ticks per discrete step (docs/model.md, "Time") ------------------------------
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
    """Duration of one discrete step, ``tau_m ln(1/beta)`` (ms): ``beta = exp(-step / tau_m)``."""
    return float(tau_m_ms * np.log(1.0 / beta))
