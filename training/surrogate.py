"""Surrogate spike derivatives.

The forward pass of a spike is the Heaviside step ``H(x)`` of the distance to
threshold ``x = v - theta``; its backward pass is replaced by the derivative of
a smooth *primitive* ``g(x)`` that approximates ``H``. Each surrogate is an
object with both (SpikingJelly style), so tests can check that ``derivative``
equals autograd of ``primitive``.

=========  ==========================================  ===========================
name       primitive g(x)                              derivative g'(x)
=========  ==========================================  ===========================
atan       1/2 + atan(pi/2 * a * x) / pi              (a/2) / (1 + (pi/2 * a * x)^2)
sigmoid    1 / (1 + exp(-a x))                         a g(x) (1 - g(x))
rectangle  clip(a x + 1/2, 0, 1)                       a * 1[|x| < 1/(2a)]
=========  ==========================================  ===========================

``rectangle`` with ``a = 1/theta`` is the straight-through (clamp) rate
derivative used by the hybrid mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.config import Surrogate as SurrogateKind


@dataclass(frozen=True)
class ATan:
    alpha: float = 2.0

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 + torch.atan(math.pi / 2 * self.alpha * x) / math.pi

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return spike(x, self)


@dataclass(frozen=True)
class Sigmoid:
    alpha: float = 4.0

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.alpha * x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.alpha * x)
        return self.alpha * g * (1 - g)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return spike(x, self)


@dataclass(frozen=True)
class Rectangle:
    alpha: float = 1.0

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.alpha * x + 0.5, 0.0, 1.0)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (x.abs() < 0.5 / self.alpha).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return spike(x, self)


SurrogateFn = ATan | Sigmoid | Rectangle


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: SurrogateFn) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.derivative(x), None


def spike(x: torch.Tensor, surrogate: SurrogateFn) -> torch.Tensor:
    """Heaviside step ``H(x)`` (1 where ``x >= 0``) with the surrogate's derivative."""
    return _Spike.apply(x, surrogate)


def make_surrogate(kind: SurrogateKind, alpha: float) -> SurrogateFn:
    """Surrogate object for a config choice."""
    table = {SurrogateKind.ATAN: ATan, SurrogateKind.SIGMOID: Sigmoid, SurrogateKind.RECTANGLE: Rectangle}
    return table[SurrogateKind(kind)](alpha)
