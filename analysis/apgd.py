"""Auto-PGD (Croce & Hein 2020, ICML): L∞ APGD with the cross-entropy or the DLR loss, in [0, 1] pixel space.

The AutoAttack schedule, as in the authors' ``autopgd_base.py``:

* start at a uniform random point of the ε-ball (scaled so its largest
  coordinate is ε), step size ``η = 2ε``;
* ``z = clip(Π_ε(x + η·sign(∇f(x))))``, then the momentum step
  ``x ← clip(Π_ε(x + α(z − x) + (1 − α)(x − x_prev)))`` with ``α = 0.75``
  (``α = 1`` on the first step);
* checkpoints after ``⌈0.22 n⌉``-ish iterations, each window shorter by
  ``0.03 n`` down to ``0.06 n``; at a checkpoint an image's step size is
  halved and it restarts from its best point when (1) the loss rose in at
  most ρ = 75 % of the window's steps, or (2) the step size was not halved at
  the previous checkpoint and the best loss has not improved since;
* the best point (highest loss) and any misclassified point are tracked; the
  result is a misclassified iterate where one was found, else the best point.

Losses: cross-entropy, and the difference of logits ratio
``DLR = −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3)`` (π: logits sorted in
decreasing order), which is invariant to the logits' scale, so a model with
tiny or huge logits (a spiking read-out) cannot flatten it.
"""
from __future__ import annotations

import torch

from analysis.attacks import cross_entropy, loss_gradient, margin


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample difference of logits ratio (untargeted); needs at least 3 classes."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the logits have {logits.shape[1]}.")
    ordered, _ = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    top_is_true = (logits.argmax(1) == y).to(logits.dtype)
    runner_up = ordered[:, -2] * top_is_true + ordered[:, -1] * (1 - top_is_true)  # max_{j≠y} z_j
    return -(true - runner_up) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


LOSSES = {"ce": cross_entropy, "dlr": dlr_loss}


def checkpoints(steps: int) -> list[int]:
    """Iterations (0-based) after which APGD checks its step size, as in AutoAttack."""
    first, least, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, window, at = [], first, first
    while at <= steps:
        out.append(at - 1)
        window = max(window - shrink, least)
        at += window
    return out


def apgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int, loss: str = "ce",
         rho: float = 0.75, momentum: float = 0.75, generator: torch.Generator | None = None,
         draws: int = 1) -> torch.Tensor:
    """Untargeted L∞ APGD with ``steps`` gradient iterations (``draws`` forward passes averaged per gradient).

    Returns, per image, an iterate the model misclassified if there was one, else the iterate of highest loss.
    ``eps = 0`` returns ``x`` unchanged.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not an APGD loss; choose one of {sorted(LOSSES)}.")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1.")
    if eps == 0:
        return x.detach().clone()
    f = LOSSES[loss]
    x = x.detach()
    b = len(x)
    shape = (b,) + (1,) * (x.dim() - 1)

    def project(z: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(z, x - eps), x + eps).clamp(0.0, 1.0)

    t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    adv = (x + eps * t / t.reshape(b, -1).abs().amax(1).reshape(shape)).clamp(0.0, 1.0)
    grad, value, logits = loss_gradient(model, adv, y, loss=f, draws=draws)
    best, best_grad, best_loss = adv.clone(), grad.clone(), value.clone()
    broken = margin(logits, y) < 0
    found = adv.clone()  # a misclassified iterate, where there is one
    history = [value.clone()]
    step = torch.full(shape, 2.0 * eps, device=x.device, dtype=x.dtype)
    previous = adv.clone()
    check = set(checkpoints(steps))
    window_start, last_check_loss = 0, best_loss.clone()
    halved_last = torch.ones(b, dtype=torch.bool, device=x.device)
    for i in range(steps):
        with torch.no_grad():
            velocity = adv - previous
            previous = adv
            a = momentum if i > 0 else 1.0
            z = project(adv + step * grad.sign())
            adv = project(adv + a * (z - adv) + (1 - a) * velocity)
        grad, value, logits = loss_gradient(model, adv, y, loss=f, draws=draws)
        now_broken = margin(logits, y) < 0
        found[now_broken] = adv[now_broken]
        broken |= now_broken
        history.append(value.clone())
        up = value > best_loss
        best[up], best_grad[up], best_loss[up] = adv[up], grad[up], value[up]
        if i in check:
            window = torch.stack(history[window_start:])  # losses at the window's start and its steps
            rises = (window[1:] > window[:-1]).sum(0)
            oscillates = rises <= rho * (len(window) - 1)
            stalled = ~halved_last & (last_check_loss >= best_loss)
            halve = oscillates | stalled
            step[halve] /= 2
            adv = torch.where(halve.reshape(shape), best, adv)
            grad = torch.where(halve.reshape(shape), best_grad, grad)
            halved_last, last_check_loss, window_start = halve, best_loss.clone(), len(history) - 1
    return torch.where(broken.reshape(shape), found, best).detach()
