"""Adversarial attacks in [0, 1] pixel space (L∞), as plain functions on a model and a batch.

White-box attacks differentiate the model's loss with respect to the pixels:

* ``fgsm``: ``x' = clip(x + ε · sign(∇ₓ L), 0, 1)`` (Goodfellow et al. 2015).
* ``pgd``: ``steps`` iterations of ``x ← clip(Π_ε(x + α · sign(∇ₓ L)), 0, 1)``
  from a uniform random start in the ε-ball (Madry et al. 2018) or from ``x``;
  the last iterate is returned (as in ART and torchattacks).

``L`` is the cross-entropy of the model's logits (the mean over T of the
read-out). Spiking models have no true gradient; :func:`gradient_model` says
which surrogate gradient is used (BPTT through the LIF steps by default).

The gradient-free attack is Square (Andriushchenko et al. 2020, L∞ version with
the AutoAttack schedule): random ±ε squares are accepted when they lower the
margin ``logit_y − max_{j≠y} logit_j``; it queries only the forward pass, so a
masked or misleading surrogate gradient cannot weaken it.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from training.config import Mode
from training.models import SpikingVGG, build_model


def gradient_model(model: SpikingVGG, how: str = "bptt") -> tuple[SpikingVGG, str]:
    """The model whose backward pass supplies attack (and Hessian) gradients, and a description.

    ``ann`` and ``stbp`` models are differentiated as trained. A ``hybrid``
    model's own backward detaches the membrane between steps and uses a
    rectangle (straight-through) derivative; with ``how="bptt"`` (default) its
    weights are loaded into an ``stbp``-mode copy instead, which has the *same
    forward pass* (only the backward differs) and gives full backprop through
    time with the config's smooth surrogate: the strongest gradient we have for
    the same function. ``how="native"`` keeps the training backward.
    """
    cfg = model.cfg
    if cfg.mode is Mode.ANN:
        return model, "exact gradient: ordinary backprop through the ReLU network"
    bptt = (f"surrogate gradient, backprop through time over {cfg.steps} LIF steps with the {cfg.surrogate.value} "
            f"surrogate (alpha={cfg.surrogate_alpha})")
    if cfg.mode is Mode.STBP:
        return model, bptt + " (the model's training backward)"
    if how == "native":
        return model, (f"surrogate gradient of the hybrid training backward: membrane detached between steps, "
                       f"{cfg.hybrid_surrogate.value} derivative of width theta={cfg.theta}")
    twin = build_model(replace(cfg, mode=Mode.STBP))
    twin.load_state_dict(model.state_dict())
    twin = twin.to(next(model.parameters()).device).train(model.training)
    return twin, bptt + " on an stbp-mode copy of the hybrid weights (identical forward pass, checked on every batch)"


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∇ₓ`` of the summed cross-entropy (summed, so a sample's gradient does not depend on the batch)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method; ``eps = 0`` returns ``x`` unchanged."""
    if eps == 0:
        return x.detach().clone()
    return (x + eps * input_gradient(model, x, y).sign()).clamp(0.0, 1.0).detach()


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int, step_size: float,
        random_start: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """L∞ projected gradient descent (sign steps of ``step_size``, projection onto the ε-ball, clip to [0, 1])."""
    if eps == 0:
        return x.detach().clone()
    x = x.detach()
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        adv = (x + (2 * noise - 1) * eps).clamp(0.0, 1.0)
    for _ in range(steps):
        adv = adv + step_size * input_gradient(model, adv, y).sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return adv.detach()


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logit_y − max_{j≠y} logit_j`` per sample (> 0: correctly classified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - others


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """AutoAttack's piecewise-constant schedule of the square's pixel fraction, rescaled to ``queries``."""
    it = int(iteration / queries * 10_000)
    halvings = sum(it > bound for bound in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2 ** halvings


@torch.no_grad()
def square(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, queries: int,
           p_init: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Square attack (L∞, margin loss), at most ``queries`` forward passes per image after the start.

    Start: vertical stripes of ±ε per channel. Each iteration draws, for every
    image not yet misclassified, one square window (its own position and a ±ε
    sign per channel) and keeps it if the margin drops.
    """
    if eps == 0:
        return x.detach().clone()
    b, c, h, w = x.shape
    dev = x.device

    def signs(*shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=generator, device=dev).to(x.dtype) * 2 - 1

    best = (x + eps * signs(b, c, 1, w)).clamp(0.0, 1.0)
    best_margin = margin(model(best), y)
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    for i in range(queries):
        active = (best_margin > 0).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        n = active.numel()
        side = min(h, w, max(1, round(math.sqrt(square_fraction(p_init, i, queries) * h * w))))
        top = torch.randint(0, h - side + 1, (n, 1, 1), generator=generator, device=dev)
        left = torch.randint(0, w - side + 1, (n, 1, 1), generator=generator, device=dev)
        window = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side))[:, None]  # [n,1,h,w]
        vertex = (x[active] + eps * signs(n, c, 1, 1)).clamp(0.0, 1.0)
        candidate = torch.where(window, vertex, best[active])
        cand_margin = margin(model(candidate), y[active])
        better = cand_margin < best_margin[active]
        best[active[better]] = candidate[better]
        best_margin[active[better]] = cand_margin[better]
    return best
