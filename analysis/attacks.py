"""Adversarial attacks in [0, 1] pixel space (L∞), as plain functions on a model and a batch.

White-box attacks differentiate the model's loss with respect to the pixels:

* ``fgsm``: ``x' = clip(x + ε · sign(∇ₓ L), 0, 1)`` (Goodfellow et al. 2015).
* ``pgd``: ``steps`` iterations of ``x ← clip(Π_ε(x + α · sign(∇ₓ L)), 0, 1)``
  from a uniform random start in the ε-ball (Madry et al. 2018) or from ``x``;
  :func:`pgd_iterates` returns both the last iterate (as in ART and
  torchattacks, and the original authors' protocol) and the best iterate per
  image (lowest margin over the start and every step: an image is broken if
  any iterate broke it). On a spiking net PGD often finds an adversarial point
  and steps back out of it, so the last iterate overstates robustness.
* APGD-CE / APGD-DLR live in :mod:`analysis.apgd`.

``L`` is the cross-entropy of the model's logits (the mean over T of the
read-out). For models whose forward pass is random (Poisson input encoding)
``draws > 1`` averages the gradient over that many forward passes
(expectation over transformation, Athalye et al. 2018). Spiking models have no true gradient; :func:`gradient_model` says
which surrogate gradient is used (BPTT through the LIF steps by default).

The gradient-free attack is Square (Andriushchenko et al. 2020, L∞ version with
the AutoAttack schedule): random ±ε squares are accepted when they lower the
margin ``logit_y − max_{j≠y} logit_j``; it queries only the forward pass, so a
masked or misleading surrogate gradient cannot weaken it.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from core.config import Mode
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


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (the attacks' default loss)."""
    return F.cross_entropy(logits, y, reduction="none")


def loss_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                  draws: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``∇ₓ`` of the summed per-sample loss, the per-sample loss and the logits, each averaged over ``draws``.

    The loss is summed over the batch, so a sample's gradient does not depend on the batch. ``draws > 1`` is
    expectation over transformation for a random forward pass (Poisson encoding); for a deterministic model it
    only costs time.
    """
    if draws < 1:
        raise ValueError(f"draws={draws} must be >= 1 (forward passes averaged per gradient).")
    x = x.detach().requires_grad_(True)
    grad = torch.zeros_like(x)
    per_sample = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    logits_sum = None
    for _ in range(draws):
        logits = model(x)
        values = loss(logits, y)
        (g,) = torch.autograd.grad(values.sum(), x)
        grad += g
        per_sample += values.detach()
        logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
    return grad / draws, per_sample / draws, logits_sum / draws


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, draws: int = 1) -> torch.Tensor:
    """``∇ₓ`` of the summed cross-entropy (summed, so a sample's gradient does not depend on the batch)."""
    return loss_gradient(model, x, y, draws=draws)[0]


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, draws: int = 1) -> torch.Tensor:
    """Fast gradient sign method; ``eps = 0`` returns ``x`` unchanged."""
    if eps == 0:
        return x.detach().clone()
    return (x + eps * input_gradient(model, x, y, draws=draws).sign()).clamp(0.0, 1.0).detach()


class Iterates(NamedTuple):
    """The last iterate of an iterative attack and, per image, its best iterate (lowest margin)."""

    last: torch.Tensor
    best: torch.Tensor


def pgd_iterates(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int,
                 step_size: float, random_start: bool, generator: torch.Generator | None = None,
                 draws: int = 1) -> Iterates:
    """L∞ PGD (sign steps of ``step_size``, projection onto the ε-ball, clip to [0, 1]): last and best iterate.

    The best iterate of an image is the point of lowest margin ``logit_y − max_{j≠y} logit_j`` among the start
    and all ``steps`` iterates, so it is misclassified whenever any iterate was. The margins come from the
    gradient passes (one extra forward pass scores the last iterate).
    """
    if eps == 0:
        return Iterates(x.detach().clone(), x.detach().clone())
    x = x.detach()
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        adv = (x + (2 * noise - 1) * eps).clamp(0.0, 1.0)
    best = adv.clone()
    best_margin = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)

    def keep(point: torch.Tensor, logits: torch.Tensor) -> None:
        m = margin(logits, y)
        better = m < best_margin
        best[better] = point[better]
        best_margin[better] = m[better]

    for _ in range(steps):
        grad, _, logits = loss_gradient(model, adv, y, draws=draws)
        keep(adv, logits)
        adv = adv + step_size * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    with torch.no_grad():
        keep(adv, sum(model(adv) for _ in range(draws)) / draws)
    return Iterates(adv.detach(), best.detach())


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int, step_size: float,
        random_start: bool, generator: torch.Generator | None = None, draws: int = 1) -> torch.Tensor:
    """The last iterate of L∞ PGD (see :func:`pgd_iterates`), as in ART, torchattacks and Madry et al."""
    return pgd_iterates(model, x, y, eps, steps=steps, step_size=step_size, random_start=random_start,
                        generator=generator, draws=draws).last


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
