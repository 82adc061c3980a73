"""The network's forward pass, written once: every layer kind's time step over a description of its parameters.

Training (float32, autograd, live batch-norm: :class:`training.models.SpikingVGG`), the float64 export
reference (folded parameters: :func:`training.export.reference_forward`) and every time resolution run this
code; they differ only in the parameters they hand it (docs/model.md, "One forward pass").

Time. A presentation is ``T`` steps of ``K`` ticks (``K = model.ticks``; Brian2's ``--mode biophysical
--ticks K`` with delta synapses simulates exactly this). ``K = 1`` is the discrete model. A signal between
stages is either *analog* (the normalised image under direct encoding, ReLU outputs, the current of a stage
without neurons): ``[T', B, ...]`` per step with ``T'`` = 1 (constant) or ``T``, held over each step; or
*spikes*: ``[T·K, B, ...]`` per tick.

A stage turns its input into a :class:`Drive` of its neurons: ``held`` (held over its step) and ``jump``
(synaptic charge per tick), the LIF of :mod:`training.neurons` integrates ``g held + jump`` per tick.

* **conv stage** (3x3, or 2x2 stride-2 down-sampling): ``Conv(x)`` normalised by batch-norm. From analog input
  or at ``K = 1`` the whole ``BN(Conv(x))`` is one drive (bias and charge arrive in the same tick); at ``K > 1``
  the charge ``scale Conv(s[k])`` jumps in the tick of the spikes and the bias ``shift`` is held, with
  ``(scale, shift)`` the batch-norm of the per-step conv output (the quantity a ``K = 1`` model normalises).
* **flex stage**: the conv path as above, the pool path ``P maxpool(x)``; at ``K > 1`` an OR relay passes a
  window's spikes on once, in the first tick of the step in which the window fires, and the mask sees the pool
  since the step began (``seen``); ``m = sigma(logits(seen) + eta(t) + b)``, ``u = pool + m (conv - pool)``:
  ``held = m shift``, ``jump = pool_fires + m (charge - pool_fires)``.
* **pool stage** (the classic max-pool VGG's neuron-free 2x2 max-pool): the window maximum; at ``K > 1`` the OR
  relay of the spikes.
* **read-out**: ``mean_t (W x[t] + bias)``, ``x[t]`` the last stage's spikes of step ``t`` (or its ReLU).

Batch-norm: a :class:`Norm` normalises a per-step quantity (``__call__``) or gives the same normalisation as a
per-channel affine whose statistics come from it (``affine``). :class:`BatchNormLive` wraps an
``nn.BatchNorm2d`` (batch statistics in training, running ones in eval); :class:`Affine` is the folded
inference form of the export.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from core import equations
from core.config import MaskMode, MaskSigma
from training import fused
from training.neurons import LIFParams, lif_run
from training.surrogate import SurrogateFn


class Time(NamedTuple):
    steps: int  # T
    ticks: int  # K ticks per step


class Drive(NamedTuple):
    """What a stage delivers to its neurons (module docstring)."""

    held: torch.Tensor | None  # [T' | T | T·K, B, C, H, W], integrated with the tick gain g
    jump: torch.Tensor | None  # [T·K, B, C, H, W] synaptic charge per tick
    mask: torch.Tensor | None = None  # flex: the conv share m, per step (analog / K = 1) or per tick
    conv_step: torch.Tensor | None = None  # flex: the conv path per step, [T', B, C, H, W] (pathway drives)
    pool_step: torch.Tensor | None = None  # flex: the pool path per step


# ------------------------------------------------------------------------------------------------ time
def flat_time(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """Apply a stateless per-sample function to ``[T, B, ...]`` as one ``[T·B, ...]`` batch."""
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def step_sum(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``[T·K, B, ...]`` per tick -> ``[T, B, ...]`` summed over each step's ticks."""
    return x.unflatten(0, (steps, x.shape[0] // steps)).sum(1)


def first_tick(x: torch.Tensor, ticks: int) -> torch.Tensor:
    """``[T, B, ...]`` per step -> ``[T·K, B, ...]`` with each step's value in its first tick."""
    if ticks == 1:
        return x
    out = x.new_zeros((x.shape[0], ticks, *x.shape[1:]))
    out[:, 0] = x
    return out.flatten(0, 1)


def or_relay(x: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OR relay of binary ``[T·K, B, ...]`` window maxima: ``(fires, seen)`` per tick.

    ``seen`` is 1 from the first tick of a step in which the window fired on; ``fires`` is 1 in that tick only
    (the relay passes the OR of the step on once). At ``K = 1`` both are ``x``.
    """
    if x.shape[0] == steps:
        return x, x
    seen = x.unflatten(0, (steps, x.shape[0] // steps)).cummax(dim=1).values
    fires = seen - F.pad(seen, (0, 0) * (seen.dim() - 2) + (1, 0))[:, :-1]
    return fires.flatten(0, 1), seen.flatten(0, 1)


# ---------------------------------------------------------------------------------------------- batch-norm
class Norm(Protocol):
    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Normalise ``y`` ``[T', B, C, H, W]`` (training: with its own statistics)."""

    def affine(self, y_step: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(scale, shift)`` shaped ``[C, 1, 1]`` of the normalisation of ``y_step`` (scale None: 1)."""


class BatchNormLive(NamedTuple):
    """An ``nn.BatchNorm2d`` as a :class:`Norm`."""

    bn: nn.BatchNorm2d

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return flat_time(self.bn, y)

    def affine(self, y_step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: the statistics of ``y_step`` (running statistics updated as ``nn.BatchNorm2d`` does);
        evaluation: the running statistics."""
        bn = self.bn
        if bn.training:
            dims = (0, 1, 3, 4)
            mean, var = y_step.mean(dims), y_step.var(dims, unbiased=False)
            with torch.no_grad():
                n = y_step.numel() / y_step.shape[2]
                bn.num_batches_tracked += 1
                bn.running_mean.lerp_(mean.detach(), bn.momentum)
                bn.running_var.lerp_(var.detach() * n / max(n - 1, 1), bn.momentum)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight / torch.sqrt(var + bn.eps)
        return scale[:, None, None], (bn.bias - mean * scale)[:, None, None]


class Affine(NamedTuple):
    """A folded normalisation ``y scale + shift`` (``scale`` None: already folded into the weights)."""

    scale: torch.Tensor | None  # [C, 1, 1]
    shift: torch.Tensor  # [C, 1, 1]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.shift if self.scale is None else y * self.scale + self.shift

    def affine(self, y_step: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        return self.scale, self.shift


# ---------------------------------------------------------------------------------------------- parameters
class ConvParams(NamedTuple):
    weight: torch.Tensor  # [C_out, C_in, k, k]
    stride: int
    padding: int
    norm: Norm


class FlexParams(NamedTuple):
    conv: ConvParams
    kernel: int  # of the pool path (= the conv's)
    channel_map: torch.Tensor  # [C_out, C_in], P
    threshold: torch.Tensor  # [C_out, H', W']
    logit_norm: Norm
    eta: torch.Tensor  # [T, C_out]
    plastic_bias: torch.Tensor  # [C_out]
    sigma: MaskSigma
    mask_mode: MaskMode
    fused: bool  # training.fused.mask_mix may run (same numbers)


class PoolParams(NamedTuple):
    kernel: int
    stride: int
    padding: int


class NeuronParams(NamedTuple):
    """The neurons after a stage: LIF (``lif``) or ReLU (``lif`` None)."""

    lif: LIFParams | None
    spike_fn: SurrogateFn | None = None
    detach_state: bool = False  # hybrid mode
    fused: bool = False  # training.fused.lif_fused may run (same numbers)


class Stage(NamedTuple):
    name: str
    params: ConvParams | FlexParams | PoolParams
    neurons: NeuronParams | None  # None: the stage passes its current (or window maxima) on


class Readout(NamedTuple):
    weight: torch.Tensor  # [classes, features]
    bias: torch.Tensor


class LayerTrace(NamedTuple):
    """What one neuron layer did: ``output`` per step ``[T, B, C, H, W]`` (spikes, or ReLU output); for a flex
    layer its mask (``None`` otherwise); for a spiking layer its spikes per tick ``[T·K, B, ...]``."""

    name: str
    output: torch.Tensor
    mask: torch.Tensor | None
    spikes: torch.Tensor | None


class Paths(NamedTuple):
    """The per-step outputs of a flex stage's two paths, ``[T', B, C, H, W]`` (the pathway drives' input)."""

    name: str
    conv: torch.Tensor
    pool: torch.Tensor


class StageInput(NamedTuple):
    """What a stage with weights (conv, flex, the read-out ``READOUT``) received: analog ``[T', B, ...]`` or spikes
    per tick ``[T·K, B, ...]`` (the read-out: per step, ``[T, B, C, H, W]``). References, not copies."""

    name: str
    x: torch.Tensor
    analog: bool


READOUT = "classifier"


class ForwardResult(NamedTuple):
    logits: torch.Tensor  # [B, classes], mean over steps of the read-out
    layers: tuple[LayerTrace, ...]  # every neuron layer, in order
    paths: tuple[Paths, ...]  # every flex stage with a learned mask, neurons after it or not
    inputs: tuple[StageInput, ...]  # every stage with weights, in order, then the read-out


# ---------------------------------------------------------------------------------------------- stages
def _conv(p: ConvParams, x: torch.Tensor) -> torch.Tensor:
    return flat_time(lambda z: F.conv2d(z, p.weight, None, p.stride, p.padding), x)


def _conv_path(p: ConvParams, x: torch.Tensor, time: Time, one_tick: bool):
    """``(bias held or None, charge, per-step output)`` of a conv path."""
    y = _conv(p, x)
    if one_tick:  # bias and charge arrive together: BN(Conv(x)) as one drive
        u = p.norm(y)
        return None, u, u
    y_step = step_sum(y, time.steps)
    scale, shift = p.norm.affine(y_step)
    if scale is None:
        return shift, y, y_step + shift
    return shift, y * scale, y_step * scale + shift


def conv_stage(p: ConvParams, x: torch.Tensor, time: Time, analog: bool) -> Drive:
    """Drive of a conv stage's neurons (module docstring)."""
    one_tick = analog or time.ticks == 1
    bias, charge, _ = _conv_path(p, x, time, one_tick)
    if analog:
        return Drive(charge, None)
    return Drive(None if bias is None else bias[None, None], charge)


def flex_stage(p: FlexParams, x: torch.Tensor, time: Time, analog: bool) -> Drive:
    """Drive of a flex stage's neurons (module docstring, :mod:`core.equations`)."""
    one_tick = analog or time.ticks == 1
    bias, charge, conv_step = _conv_path(p.conv, x, time, one_tick)
    if p.mask_mode is MaskMode.CONV_ONLY:  # m = 1: a conv stage
        ones = torch.ones_like(charge[:, :, :1]).expand_as(charge)
        drive = Drive(charge, None) if analog else Drive(None if bias is None else bias[None, None], charge)
        return drive._replace(mask=ones)
    c = p.conv
    window = flat_time(lambda z: fused.max_pool(z, p.kernel, c.stride, c.padding), x)
    fires, seen = or_relay(window, time.steps) if not analog else (window, window)
    if fires is seen:  # one tick per step: the relay passes the window on
        fires = seen = flat_time(lambda z: map_channels(z, p.channel_map), seen)
    else:
        fires, seen = (flat_time(lambda z: map_channels(z, p.channel_map), w) for w in (fires, seen))
    ticks = 1 if one_tick else time.ticks
    pool_step = seen if one_tick else seen.unflatten(0, (time.steps, ticks))[:, -1]
    if one_tick:  # LOGITS with the live or folded batch-norm of the step's pool
        logits = p.logit_norm(seen - p.threshold)
    else:
        lscale, lshift = p.logit_norm.affine(pool_step - p.threshold)
        logits = equations.flex_logits(seen, p.threshold, lscale, lshift)
    eta = p.eta[:time.steps] if ticks == 1 else p.eta[:time.steps].repeat_interleave(ticks, 0)
    eta = eta[:, None, :, None, None]  # [T·K, 1, C, 1, 1]
    b = p.plastic_bias[:, None, None]
    if p.fused:  # MASK_INPUT, sigma and MIX in one autograd node (the same numbers)
        current, mask = fused.mask_mix(logits, eta + b, charge, fires, p.sigma is MaskSigma.HARD)
    else:
        mask = equations.mask_sigma(p.sigma)(equations.mask_input(logits, eta, b))
        current = mix_fma(mask, charge, fires)
    held = None if bias is None else mask * bias  # the held bias enters through the mask, as u's conv share
    drive = Drive(current, None) if analog else Drive(held, current)
    return drive._replace(mask=mask, conv_step=conv_step, pool_step=pool_step)


def pool_stage(p: PoolParams, x: torch.Tensor, time: Time, analog: bool) -> torch.Tensor:
    """Output of a neuron-free max-pool: window maxima, or (spikes at ``K > 1``) the OR relay."""
    window = flat_time(lambda z: F.max_pool2d(z, p.kernel, p.stride, p.padding), x)
    return window if analog else or_relay(window, time.steps)[0]


def neurons(p: NeuronParams, drive: Drive, time: Time) -> torch.Tensor:
    """Output of a stage's neurons: ReLU of the drive, or LIF spikes per tick ``[T·K, B, ...]``."""
    if p.lif is None:
        return (drive.held if drive.jump is None else drive.jump).relu()
    spikes, _ = lif_run(drive.held, drive.jump, time.steps, p.lif, p.spike_fn, detach_state=p.detach_state,
                        allow_fused=p.fused)
    return spikes


STAGES = {ConvParams: conv_stage, FlexParams: flex_stage}


def run_network(stages: list[Stage], readout: Readout, x: torch.Tensor, time: Time,
                analog: bool) -> ForwardResult:
    """The forward pass of a network from its encoded input ``x`` (analog ``[T', B, 3, H, W]``, or spikes per
    step ``[T, B, 3, H, W]``)."""
    if not analog:
        x = first_tick(x, time.ticks)  # Poisson input spikes arrive in the first tick of their step
    traces, paths, inputs = [], [], []
    for stage in stages:
        if isinstance(stage.params, PoolParams):
            x = pool_stage(stage.params, x, time, analog)
            continue
        inputs.append(StageInput(stage.name, x, analog))
        drive = STAGES[type(stage.params)](stage.params, x, time, analog)
        if drive.conv_step is not None:
            paths.append(Paths(stage.name, drive.conv_step, drive.pool_step))
        if stage.neurons is None:  # no neurons (model.down_neurons=false, K = 1 only): the current passes on
            x, analog = (drive.held if drive.jump is None else drive.jump), True
            continue
        x = neurons(stage.neurons, drive, time)
        spiking = stage.neurons.lif is not None
        analog = analog and not spiking
        per_step = step_sum(x, time.steps) if spiking and time.ticks > 1 else x
        traces.append(LayerTrace(stage.name, per_step, drive.mask, x if spiking else None))
    last = step_sum(x, time.steps) if time.ticks > 1 and x.shape[0] == time.steps * time.ticks else x
    inputs.append(StageInput(READOUT, last, analog))
    scores = F.linear(last.flatten(2), readout.weight, readout.bias)  # [T, B, classes]
    return ForwardResult(scores.mean(0), tuple(traces), tuple(paths), tuple(inputs))


# ---------------------------------------------------------------------------------------------- flex helpers
def mix_fma(mask: torch.Tensor, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """:data:`core.equations.MIX`, ``pool + m (conv - pool)``, as one ``torch.addcmul``.

    The fused multiply-add rounds once less than the arithmetic of ``MIX`` (equal up to one rounding, tested);
    every forward uses it, so training, the export reference and the tick model share one arithmetic.
    """
    return torch.addcmul(pool, mask, conv - pool)


def map_channels(pooled: torch.Tensor, channel_map: torch.Tensor) -> torch.Tensor:
    """``P @ pooled`` over the channels of ``[N, C_in, H, W]``; skipped where :func:`core.equations.maps_channels`
    says ``P`` is the identity."""
    c_out, c_in = channel_map.shape
    if not equations.maps_channels(c_in, c_out):
        return pooled
    return F.conv2d(pooled, channel_map[:, :, None, None])
