"""The forward pass at ``K`` ticks per step: the dynamical system of Brian2's biophysical mode.

DESIGN.md §6. A model with ``model.ticks = K > 1`` runs every step as ``K``
ticks, with exactly the update that ``bioflexnet sim --mode biophysical
--substeps K`` (delta synapses) simulates, written in units of the discrete
membrane (:func:`training.neurons.lif_ticks`)::

    v[k] = d v[k-1] + g held[k] + jump[k]         d = beta**(1/K), g = (1 - d)/(1 - beta)

* the first layer's image drive (direct encoding) is held over its step, as
  Brian2's constant input current; the mask's ``eta(t)`` is held over its step;
* a spike-driven layer's synaptic charge ``W s[k]`` arrives in the tick ``k`` of
  the presynaptic spike (delta synapses) and its bias is a held current; a flex
  layer holds ``m · bias`` and receives the charge ``Ip + m (Ic − Ip)`` of the tick;
* a max-pool of spikes (an OR relay) fires in the first tick of a step in which
  any input of its window fires, and not again in that step; a flex layer's mask
  sees the pool charge since the step began;
* a neuron is refractory for one step (``K`` ticks) after a spike, so it fires at
  most once per step; Poisson input spikes arrive in the first tick of their step;
* the read-out is the mean over steps of ``W x + bias``, ``x`` the spikes of the step.

Batch-norm statistics (training) are taken over the *per-step* conv output (the
sum of the step's ticks), i.e. the quantity a ``K = 1`` model normalises, so a
model fine-tuned from ``K = 1`` keeps its scales. ``K = 1`` does not come here:
:meth:`training.models.SpikingVGG.run` keeps the discrete model's code path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from core import equations
from core.config import Encoding, MaskMode
from training.flex import (PlasticFlexLayer, drives_from_moments, flat_time, map_channels, mix_fma,
                           pathway_moments)
from training.neurons import tick_params

if TYPE_CHECKING:
    from training.models import ModelOutput, SpikingVGG


def step_sum(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``[T·K, B, ...]`` per tick -> ``[T, B, ...]`` summed over each step's ticks."""
    return x.unflatten(0, (steps, x.shape[0] // steps)).sum(1)


def first_tick(x: torch.Tensor, ticks: int) -> torch.Tensor:
    """``[T, B, ...]`` per step -> ``[T·K, B, ...]`` with each step's value in its first tick."""
    out = x.new_zeros((x.shape[0], ticks, *x.shape[1:]))
    out[:, 0] = x
    return out.flatten(0, 1)


def or_relay(x: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OR relay of binary ``[T·K, B, ...]`` window maxima: ``(fires, seen)`` per tick.

    ``seen`` is 1 from the first tick of a step in which the window fired on; ``fires``
    is 1 in that tick only (the relay passes the OR of the step on once).
    """
    seen = x.unflatten(0, (steps, x.shape[0] // steps)).cummax(dim=1).values
    fires = seen - F.pad(seen, (0, 0) * (seen.dim() - 2) + (1, 0))[:, :-1]
    return fires.flatten(0, 1), seen.flatten(0, 1)


def bn_affine(bn: nn.BatchNorm2d, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-norm of ``y`` (``[T, B, C, H, W]``) as a per-channel ``(scale, shift)``, shaped ``[C, 1, 1]``.

    Training: the statistics of ``y`` (running statistics updated as ``nn.BatchNorm2d`` does);
    evaluation: the running statistics.
    """
    if bn.training:
        dims = (0, 1, 3, 4)
        mean, var = y.mean(dims), y.var(dims, unbiased=False)
        with torch.no_grad():
            n = y.numel() / y.shape[2]
            bn.num_batches_tracked += 1
            bn.running_mean.lerp_(mean.detach(), bn.momentum)
            bn.running_var.lerp_(var.detach() * n / max(n - 1, 1), bn.momentum)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = bn.weight / torch.sqrt(var + bn.eps)
    return scale[:, None, None], (bn.bias - mean * scale)[:, None, None]


def conv_drive(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, steps: int):
    """Conv path of spikes ``x`` per tick: ``(charge [T·K, ...], bias [C, 1, 1], per-step output [T, ...])``."""
    y = flat_time(conv, x)
    y_step = step_sum(y, steps)
    scale, shift = bn_affine(bn, y_step)
    return y * scale, shift, y_step * scale + shift


def flex_drive(stage: PlasticFlexLayer, x: torch.Tensor, steps: int):
    """Held drive, charge, mask and pathway drives of a spike-driven flex layer (module docstring)."""
    ticks = x.shape[0] // steps
    charge_c, bias, conv_step = conv_drive(stage.conv, stage.bn, x, steps)
    if stage.mask_mode is MaskMode.CONV_ONLY:  # m = 1: a conv stage
        return bias[None, None], charge_c, torch.ones_like(charge_c[:, :, :1]).expand_as(charge_c), None, None
    window = flat_time(lambda z: F.max_pool2d(z, stage.kernel, stage.stride, stage.padding), x)
    fires, seen = or_relay(window, steps)
    fires, seen = (flat_time(lambda z: map_channels(z, stage.channel_map), p) for p in (fires, seen))
    pool_step = seen.unflatten(0, (steps, ticks))[:, -1]  # the step's pool (the K = 1 model's)
    lscale, lshift = bn_affine(stage.logit_bn, pool_step - stage.threshold)
    eta = stage.eta[:steps].repeat_interleave(ticks, 0)[:, None, :, None, None]
    logits = equations.flex_logits(seen, stage.threshold, lscale, lshift)
    mask = stage.mask_fn(equations.mask_input(logits, eta, stage.plastic_bias[:, None, None]))
    held, charge = mask * bias, mix_fma(mask, charge_c, fires)
    moments = None
    if stage.training:  # the drives of the per-step paths, as PlasticFlexLayer (a K = 1 model) measures them
        with torch.no_grad():
            moments = pathway_moments(conv_step, pool_step)
    return held, charge, mask, moments


def run_ticks(model: SpikingVGG, images: torch.Tensor, ticks: int) -> ModelOutput:
    """:meth:`SpikingVGG.run` at ``ticks`` ticks per step; traces hold the spikes per step."""
    from training.models import ConvStage, LayerTrace, ModelOutput

    cfg = model.cfg
    if not cfg.spiking or not 0.0 < cfg.beta < 1.0:
        raise ValueError(f"ticks={ticks} needs spiking neurons with 0 < beta < 1 (mode={cfg.mode.value}, beta={cfg.beta}).")
    steps, tick = cfg.steps, tick_params(cfg.beta, ticks)
    x = model.encode(images)
    analog = cfg.encoding is Encoding.DIRECT  # the first layer sees the image as a held current
    if not analog:
        x = first_tick(x, ticks)
    traces, drives = [], []
    for name, stage in zip(model.names, model.stages):
        mask = moments = None
        if isinstance(stage, PlasticFlexLayer):
            if analog:
                out = stage(x, steps)
                held, charge, mask, moments = out.current, None, out.mask, out.moments
            else:
                held, charge, mask, moments = flex_drive(stage, x, steps)
        elif isinstance(stage, ConvStage):
            if analog:
                held, charge = stage(x), None
            else:
                charge, held, _ = conv_drive(stage.conv, stage.bn, x, steps)
                held = held[None, None]
        else:  # baseline max-pool of spikes: the OR relay
            x = or_relay(flat_time(stage, x), steps)[0]
            continue
        analog = False
        r_sel, r_inv = drives_from_moments(moments) if moments is not None else (None, None)
        if moments is not None:
            drives.append((name, moments))
        if name not in model.activations:  # model.down_neurons=false is refused with ticks > 1 (config)
            raise ValueError(f"stage {name} has no neurons; K > 1 ticks need a neuron after every stage.")
        x = model.activations[name].ticks(held, charge, steps, tick)
        traces.append(LayerTrace(name, step_sum(x, steps), mask, r_sel, r_inv))
    scores = model.classifier(step_sum(x, steps).flatten(2))
    return ModelOutput(scores.mean(0), tuple(traces), tuple(drives))
