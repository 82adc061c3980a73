"""Fused training operations: the flex mask chain and the multi-step LIF.

Both are :class:`torch.autograd.Function` s with a hand-written backward that
compute exactly what the reference code computes (:meth:`PlasticFlexLayer.forward`
and :func:`training.neurons.lif_run`), in fewer passes over memory and
with fewer autograd nodes:

* :func:`mask_mix` — :data:`core.equations.MASK_INPUT`, the mask's sigma and
  :data:`core.equations.MIX` (``z = logits + (eta(t) + b)``, ``m = sigma(z)``,
  ``u = pool + m (conv - pool)``) in one node. The forward uses the same
  arithmetic as :class:`PlasticFlexLayer`'s unfused path (``m`` as the core
  functions, ``u`` as one ``addcmul``, :func:`training.flex.mix_fma`), so ``u``
  and ``m`` are bit-identical to it; the backward is one pass per input.
* :func:`lif_fused` — the LIF of :mod:`training.neurons` over all T steps in
  one node (SpikingJelly's multi-step style): the forward loops the step
  equations without building a graph; the backward runs BPTT in reverse with
  the surrogate derivative evaluated once for all steps. ``stbp`` and ``hybrid``
  (state detached between steps), both resets, every surrogate.

Neither backward is itself differentiable (it reads intermediates, not the
inputs), so double backward (Hessian-vector products, ``analysis.landscape``)
must use the reference ops: the models use these fused functions only in
training mode or without gradients (see :func:`use_fused`), and a
``create_graph`` through them raises a clear error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.config import Reset
from training.surrogate import SurrogateFn


def use_fused(module: torch.nn.Module) -> bool:
    """Whether ``module`` may take its fused path now.

    In training mode (the training step), or when no gradient is being
    recorded (evaluation, export). Evaluation with gradients (attacks, loss
    landscapes with Hessian-vector products) takes the reference ops.
    """
    return getattr(module, "fused", False) and (module.training or not torch.is_grad_enabled())


def _no_double_backward(name: str) -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{name} has no double backward (create_graph=True); put the model in eval() mode, where the "
            "reference ops run, or set `fused = False` on its layers.")


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (leading dims of size 1 included)."""
    return t if t.shape == shape else t.sum_to_size(shape)


# ---------------------------------------------------------------------------------------------- max-pool
CHANNELS_LAST_MIN_CHANNELS = 8


def max_pool(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """``F.max_pool2d`` in the faster memory layout; the same values and the same gradients.

    On the CPU the channels-last max-pool is several times faster than the
    default layout from about 8 channels on (3x3 stride 1, 16 channels, forward
    and backward including both layout copies: 12.6 ms vs 37.0 ms; measured in
    ``make bench``); with 3 input channels it is slower, so the first layer
    keeps the default. Ties (frequent among spikes) go to the same input in
    both layouts, so the gradient is identical (tested).
    """
    if x.dim() == 4 and x.shape[1] >= CHANNELS_LAST_MIN_CHANNELS and not x.is_contiguous(
            memory_format=torch.channels_last):
        y = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, stride, padding)
        return y.contiguous()
    return F.max_pool2d(x, kernel, stride, padding)


# --------------------------------------------------------------------------------------------- flex mask
class _MaskMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, time_bias, conv, pool, hard: bool):  # type: ignore[override]
        # equations.MASK_INPUT with time_bias = eta + b; [T, B, C, H, W]: broadcasts a constant input to T steps
        z = logits + time_bias
        if hard:  # same arithmetic as equations.hard_sigmoid: (z / 6 + 1/2).clip(0, 1)
            pre = z.div_(6.0).add_(0.5)
            mask = pre.clamp(0.0, 1.0)
            saved = (pre >= 0.0) & (pre <= 1.0)  # where clip passes the gradient (inclusive, as torch.clamp)
        else:
            mask = torch.sigmoid(z)
            saved = None
        diff = conv - pool
        current = torch.addcmul(pool, mask, diff)  # equations.MIX as training.flex.mix_fma
        ctx.hard = hard
        ctx.shapes = (logits.shape, time_bias.shape, conv.shape, pool.shape)
        ctx.save_for_backward(mask, diff, saved)
        return current, mask

    @staticmethod
    def backward(ctx, g_current, g_mask):  # type: ignore[override]
        _no_double_backward("the fused flex mask (training.fused.mask_mix)")
        mask, diff, pre = ctx.saved_tensors  # pre: the hard sigmoid's pass-through region (bool)
        s_logits, s_bias, s_conv, s_pool = ctx.shapes
        g_z = None
        if g_current is not None:
            g_m = g_current * diff
            if g_mask is not None:
                g_m += g_mask
        else:
            g_m = g_mask
        if g_m is not None:
            own = g_m is not g_mask  # a buffer of ours, safe to update in place
            if ctx.hard:
                g_z = (g_m.mul_(pre) if own else g_m * pre).div_(6.0)
            else:
                g_z = g_m.mul_(mask * (1.0 - mask)) if own else g_m * (mask * (1.0 - mask))
        g_logits = _sum_to(g_z, s_logits) if g_z is not None and ctx.needs_input_grad[0] else None
        g_bias = _sum_to(g_z, s_bias) if g_z is not None and ctx.needs_input_grad[1] else None
        g_conv = g_pool = None
        if g_current is not None:
            g_conv_full = g_current * mask
            g_conv = _sum_to(g_conv_full, s_conv)
            g_pool = _sum_to(g_current, s_pool) - (g_conv if s_conv == s_pool else _sum_to(g_conv_full, s_pool))
        return g_logits, g_bias, g_conv, g_pool, None


def mask_mix(logits: torch.Tensor, time_bias: torch.Tensor, conv: torch.Tensor, pool: torch.Tensor,
             hard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``(u, m)`` with ``m = sigma(logits + time_bias)`` and ``u = pool + m (conv - pool)``.

    Shapes as in :meth:`PlasticFlexLayer.forward`: ``logits``, ``conv`` and
    ``pool`` are ``[T', B, C, H, W]`` (``T'`` = 1 or T) and ``time_bias`` is
    ``[T, 1, C, 1, 1]``. ``hard`` selects the hard sigmoid, else the logistic.
    """
    return _MaskMix.apply(logits, time_bias, conv, pool, hard)


# ------------------------------------------------------------------------------------------ multi-step LIF
class _LIFMultiStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, currents, v0, steps: int, beta: float, theta: float, subtract: bool, detach: bool,
                surrogate: SurrogateFn, refractory: int):  # type: ignore[override]
        # `steps` counts ticks and `beta` is the decay per tick (training.neurons.lif_step)
        inputs = currents.unbind(0)
        shape = (steps, *inputs[0].shape)
        x_all = currents.new_empty(shape)  # distance to threshold, v_pre - theta, per tick
        spikes = currents.new_empty(shape)
        gates = torch.empty(shape, dtype=torch.bool, device=currents.device) if refractory > 1 else None
        wait = currents.new_zeros(shape[1:]) if refractory > 1 else None
        v = v0
        for t in range(steps):
            h = torch.add(inputs[t if len(inputs) > 1 else 0], v, alpha=beta)  # same arithmetic as lif_step
            x = torch.sub(h, theta, out=x_all[t])
            if gates is None:
                s = spikes[t].copy_(x >= 0)
            else:  # the refractory countdown (core.equations.REFRACTORY_LEFT) gates the spike
                wait = (wait - 1.0).clamp_(min=0.0)
                torch.lt(wait, 0.5, out=gates[t])
                s = spikes[t].copy_((x >= 0) & gates[t])
                wait = wait + refractory * s
            v = torch.sub(h, s, alpha=theta) if subtract else h * (1.0 - s)
        ctx.params = (steps, beta, theta, subtract, detach, surrogate, currents.shape, v0.requires_grad)
        ctx.save_for_backward(x_all, spikes, gates)
        return spikes, v

    @staticmethod
    def backward(ctx, g_spikes, g_v):  # type: ignore[override]
        _no_double_backward("the fused LIF (training.fused.lif_fused)")
        steps, beta, theta, subtract, detach, surrogate, in_shape, v0_grad = ctx.params
        x_all, spikes, gates = ctx.saved_tensors
        # Tick by tick in reverse, as BPTT: one tick's tensors stay in cache (whole-T passes measured slower
        # on the CPU), and the arithmetic is the reference's, term by term (s' the surrogate derivative, times
        # the refractory gate where there is one):
        #   subtract: g_h = g_v + (g_s - theta g_v) s'       zero: g_h = g_v (1 - s) + (g_s - h g_v) s'
        #   g_v(t-1) = beta g_h (stbp) or 0 (hybrid: the state is detached between ticks)
        g_h = torch.empty_like(x_all)
        gv = g_v
        for t in range(steps - 1, -1, -1):
            sg = surrogate.derivative(x_all[t])
            if gates is not None:
                sg = sg * gates[t]
            g_s = g_spikes[t] if g_spikes is not None else torch.zeros_like(sg)
            if gv is None:
                torch.mul(g_s, sg, out=g_h[t])
            elif subtract:
                torch.addcmul(gv, torch.sub(g_s, gv, alpha=theta), sg, out=g_h[t])
            else:
                h = x_all[t] + theta
                torch.addcmul(gv * (1.0 - spikes[t]), g_s - h * gv, sg, out=g_h[t])
            gv = None if detach else g_h[t] * beta
        g_currents = g_h if in_shape[0] == steps else g_h.sum(0, keepdim=True)
        g_v0 = gv if (v0_grad and not detach) else None
        return g_currents, g_v0, None, None, None, None, None, None, None


def lif_fused(currents: torch.Tensor, steps: int, beta: float, theta: float, reset: Reset,
              surrogate: SurrogateFn, *, detach_state: bool = False, v0: torch.Tensor | None = None,
              refractory: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The LIF over ``steps`` ticks in one autograd node; the same numbers as :func:`training.neurons.lif_run`.

    ``currents`` is each tick's drive ``[steps or 1, B, ...]`` (one entry: constant), ``beta`` the decay per
    tick, ``refractory`` the refractory period in ticks (<= 1: none). Returns spikes ``[steps, B, ...]`` and the
    final membrane ``v``.
    """
    if currents.shape[0] not in (1, steps):
        raise ValueError(f"currents has {currents.shape[0]} time steps; expected 1 or {steps}.")
    if v0 is None:
        v0 = currents.new_zeros(currents.shape[1:])
    return _LIFMultiStep.apply(currents, v0, steps, float(beta), float(theta), Reset(reset) is Reset.SUBTRACT,
                               bool(detach_state), surrogate, int(refractory))
