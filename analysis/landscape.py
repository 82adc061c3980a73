"""Loss landscapes (Li et al. 2018) and the Hessian's top eigenvalue.

**Surface.** ``L(θ + a·d₁ + b·d₂)`` on a grid of ``(a, b)``, in eval mode (batch
norm uses its running statistics) on a fixed, class-balanced batch of training
images (the landscape of the training objective, without augmentation).
``d₁, d₂`` are Gaussian and *filter-normalised*: for every conv and linear
weight, each filter (output unit, the first axis) of the direction is rescaled
to the norm of the same filter of the weights. Every other parameter — biases,
batch-norm affines, and the flex threshold and time bias η, which are additive
offsets of the mask logits — gets a zero direction (Li et al.'s "biasbn"
rule, applied to every bias-like parameter so flex and VGG models are
perturbed in the same parameter class). Parameters are replaced functionally
(``torch.func.functional_call``): the model itself is never modified.

**Sharpness.** The top eigenvalue (largest in magnitude) of the Hessian of the
same loss with respect to all trainable parameters, by power iteration on
Hessian-vector products (double backward). For spiking models the "gradient"
is the surrogate gradient: the spike's backward multiplies by the surrogate
derivative ``g'(v − θ)``, written in differentiable torch operations, so the
double backward also differentiates it and the surrogate's second derivative
``g''`` enters the product (zero for the piecewise-constant rectangle of the
hybrid training backward). The result is the Jacobian of the surrogate-gradient
field. With full BPTT it is the exact Hessian of a formal network whose spike
nodes have value ``H(u)``, slope ``g'(u)`` and curvature ``g''(u)``, hence
symmetric; a truncated gradient (the hybrid's detached membrane) need not be.
``hessian_asymmetry`` checks it: ``|uᵀHv − vᵀHu| / max(|uᵀHv|, |vᵀHu|)`` for
random unit ``u, v``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.func import functional_call

from analysis.attacks import gradient_model
from analysis.robustness import select_images
from analysis.settings import LandscapeSettings, settings_json
from training.data import Split, to_float

Vector = list[torch.Tensor]


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random direction in parameter space, filter-normalised, zero for every bias-like parameter."""
    filters = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    direction = {}
    for name, p in model.named_parameters():
        if id(p) not in filters:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)  # drawn on the CPU: same on any device
        scale = p.detach().flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
        direction[name] = d * scale.view(-1, *[1] * (p.dim() - 1))
    return direction


@torch.no_grad()
def loss_surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor, d1: dict[str, torch.Tensor],
                 d2: dict[str, torch.Tensor], coords: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean cross-entropy and accuracy ``[a, b]`` at ``θ + a·d1 + b·d2`` for ``a, b`` in ``coords``."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    loss = np.zeros((len(coords), len(coords)))
    acc = np.zeros_like(loss)
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            point = {n: w + float(a) * d1[n] + float(b) * d2[n] for n, w in params.items()}
            total, correct = 0.0, 0
            for start in range(0, len(y), batch_size):
                logits = functional_call(model, {**point, **buffers}, (x[start:start + batch_size],))
                total += F.cross_entropy(logits, y[start:start + batch_size], reduction="sum").item()
                correct += (logits.argmax(1) == y[start:start + batch_size]).sum().item()
            loss[i, j], acc[i, j] = total / len(y), correct / len(y)
    return loss, acc


def _dot(u: Vector, v: Vector) -> torch.Tensor:
    return sum((a * b).sum() for a, b in zip(u, v))


def _normalise(v: Vector) -> tuple[Vector, float]:
    norm = math.sqrt(float(_dot(v, v)))
    return ([t / norm for t in v] if norm > 0 else v), norm


def power_iteration(hvp: Callable[[Vector], Vector], like: Vector, iterations: int, tolerance: float,
                    generator: torch.Generator) -> list[float]:
    """Estimates of the largest-magnitude eigenvalue of ``hvp`` (Rayleigh quotients), one per iteration.

    Stops when the estimate changes by less than ``tolerance`` relative to its size; the last
    estimate is the result, the sequence shows how well it converged.
    """
    v, _ = _normalise([torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in like])
    estimates: list[float] = []
    for _ in range(iterations):
        hv = hvp(v)
        estimates.append(float(_dot(v, hv)))
        v, norm = _normalise(hv)
        if norm == 0 or (len(estimates) > 1 and abs(estimates[-1] - estimates[-2]) <= tolerance * abs(estimates[-1])):
            break
    return estimates


def model_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              batch_size: int) -> tuple[Callable[[Vector], Vector], Vector]:
    """Hessian-vector product of the mean cross-entropy on ``(x, y)`` w.r.t. the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]

    def hvp(v: Vector) -> Vector:
        out = [torch.zeros_like(p) for p in params]
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            hv = torch.autograd.grad(_dot(grads, v), params, allow_unused=True)
            out = [o + (h.detach() if h is not None else 0) for o, h in zip(out, hv)]
        return out

    return hvp, params


def asymmetry(hvp: Callable[[Vector], Vector], like: Vector, generator: torch.Generator) -> float:
    """``|uᵀHv − vᵀHu| / max(|uᵀHv|, |vᵀHu|)`` for random unit vectors ``u, v`` (0: symmetric)."""
    u, _ = _normalise([torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in like])
    v, _ = _normalise([torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in like])
    uhv, vhu = float(_dot(u, hvp(v))), float(_dot(v, hvp(u)))
    scale = max(abs(uhv), abs(vhu))
    return abs(uhv - vhu) / scale if scale > 0 else 0.0


def landscape(model: nn.Module, split: Split, settings: LandscapeSettings,
              attrs: dict[str, str] | None = None) -> xr.Dataset:
    """Loss surface and top Hessian eigenvalue of ``model`` on a fixed subset of ``split``."""
    model.eval()
    images, index = select_images(split, settings.n_images, settings.seed)
    x, y = to_float(images.images), images.labels
    gen = torch.Generator().manual_seed(settings.seed)
    d1, d2 = filter_normalized_direction(model, gen), filter_normalized_direction(model, gen)
    coords = settings.coordinates()
    loss, acc = loss_surface(model, x, y, d1, d2, coords, settings.batch_size)
    grad_model, gradient = gradient_model(model, settings.gradient)
    estimates, asym = [], float("nan")
    if settings.hessian_iterations:
        hvp, params = model_hvp(grad_model, x, y, settings.batch_size)
        estimates = power_iteration(hvp, params, settings.hessian_iterations, settings.hessian_tolerance, gen)
        asym = asymmetry(hvp, params, gen)
    trace = np.full(settings.hessian_iterations, np.nan)
    trace[:len(estimates)] = estimates
    axis = {"long_name": "step along a filter-normalised random direction", "units": "1"}
    return xr.Dataset(
        {
            "loss": (("alpha", "beta"), loss, {"long_name": "mean cross-entropy on the fixed batch", "units": "nat"}),
            "accuracy": (("alpha", "beta"), acc, {"long_name": "top-1 accuracy on the fixed batch", "units": "1"}),
            "hessian_top_eigenvalue": ((), estimates[-1] if estimates else np.nan, {
                "long_name": "largest-magnitude eigenvalue of the (surrogate) Hessian of the mean cross-entropy",
                "units": "nat"}),
            "hessian_iterations": ((), len(estimates), {"long_name": "power iterations used", "units": "1"}),
            "hessian_estimates": ("iteration", trace, {"long_name": "eigenvalue estimate after each power iteration "
                                                                    "(NaN after convergence)", "units": "nat"}),
            "hessian_asymmetry": ((), asym, {"long_name": "relative asymmetry of the (surrogate) Hessian", "units": "1"}),
        },
        coords={"alpha": ("alpha", coords, axis), "beta": ("beta", coords, axis),
                "iteration": ("iteration", np.arange(1, settings.hessian_iterations + 1),
                              {"long_name": "power iteration", "units": "1"}),
                "sample": ("sample", index, {"long_name": "index of the image in the CIFAR-10 training split"})},
        attrs={**(attrs or {}), "gradient": gradient, "split": "train (no augmentation)",
               "directions": "Gaussian, filter-normalised per conv/linear filter (Li et al. 2018); zero for biases, "
                             "batch-norm affines and the flex threshold and eta",
               "hessian_note": __doc__.split("**Sharpness.**")[1].strip(),
               "analysis_settings": settings_json(settings)},
    )
