"""PlasticFlexLayer: a convolution and a max-pool mixed by a plastic mask (the parameters of a flex stage).

See :mod:`core.equations` for the equations and :func:`training.forward.flex_stage` for the stage's time
step, the one forward of every model. Multi-step layout: inputs are ``[T', B, C, H, W]`` where ``T'`` is the
number of steps or 1 (an input that is constant over time).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from core import equations
from core.config import MaskMode, MaskSigma
from training import forward as fwd
from training import fused
from training.forward import map_channels

# The conv path's BN starts at gamma = 1/m0 (see PlasticFlexLayer); m0 is floored so that a
# strongly negative mask_init cannot turn the conv path's scale into 1/1e-3 = 1000.
MIN_INIT_SHARE = 0.25


class FlexOutput(NamedTuple):
    current: torch.Tensor  # u, [T, B, C_out, H', W']
    mask: torch.Tensor  # m, [T, B, C_out, H', W'] (conv share)
    r_sel: torch.Tensor | None  # [C_out], conv-path drive (equations.pathway_drive); training mode only
    r_inv: torch.Tensor | None  # [C_out], pool-path drive; training mode only


class PlasticFlexLayer(nn.Module):
    """One PlasticFlex stage, ``C_in -> C_out``.

    Parameters
    ----------
    c_in, c_out
        Channels.
    kernel, stride, padding
        Shared by the conv and the max-pool path, so both have the same output size.
    out_size
        Spatial size ``(H', W')`` of the output (the threshold tensor is per
        channel and position).
    steps
        Number of time steps (length of ``eta``).
    sigma
        Mask nonlinearity.
    mask_mode
        ``learned`` (the PlasticFlex mask) or ``conv_only`` (m = 1, an ablation).
    """

    kind = "flex"

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 out_size: tuple[int, int], steps: int, sigma: MaskSigma = MaskSigma.HARD,
                 mask_init: float = 0.0, mask_mode: MaskMode = MaskMode.LEARNED):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.sigma = MaskSigma(sigma)
        self.mask_mode = MaskMode(mask_mode)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        # The mask gives the conv path only a share m0 = sigma(mask_init) of the current at
        # initialisation (1/2 by default). Scaling the conv path's BN by 1/m0 keeps the neuron's
        # input at the unit scale of the plain VGG; without it the deep spiking nets fire too
        # sparsely to learn (flex-stbp on vgg11: 18 % vs 29 % test accuracy after 200 steps).
        # With m = 1 (conv_only) the conv path carries the whole current from the start.
        share = float(equations.mask_sigma(self.sigma)(torch.tensor(mask_init)))
        if self.mask_mode is MaskMode.CONV_ONLY:
            share = 1.0
        nn.init.constant_(self.bn.weight, 1.0 / max(share, MIN_INIT_SHARE))
        self.register_buffer("channel_map", torch.tensor(equations.channel_map_matrix(c_in, c_out), dtype=torch.float32))
        self.threshold = nn.Parameter(torch.zeros(c_out, *out_size))
        self.logit_bn = nn.BatchNorm2d(c_out)
        self.eta = nn.Parameter(torch.full((steps, c_out), float(mask_init)))
        # Plastic bias b: moved by the Hebbian rule, never by gradients.
        self.register_buffer("plastic_bias", torch.zeros(c_out))
        self.fused = True  # training.fused.mask_mix where it applies (see fused.use_fused)

    def conv_path(self, x: torch.Tensor) -> torch.Tensor:
        """Selectivity pathway ``BN(Conv(x))`` on ``[N, C_in, H, W]``."""
        return self.bn(self.conv(x))

    def pool_path(self, x: torch.Tensor) -> torch.Tensor:
        """Invariance pathway ``P @ maxpool(x)`` on ``[N, C_in, H, W]`` (for tests and analyses)."""
        pooled = fused.max_pool(x, self.kernel, self.stride, self.padding)
        return map_channels(pooled, self.channel_map)

    def logits(self, pool: torch.Tensor) -> torch.Tensor:
        """Threshold mechanism ``BN(Pool(x) - threshold)``.

        The BN module, not :data:`core.equations.LOGITS`: in training it normalises with the batch's
        statistics; the export folds its inference form into ``LOGITS``' scale and shift.
        """
        return self.logit_bn(pool - self.threshold)

    def params(self) -> fwd.FlexParams:
        """The stage's parameters as :func:`training.forward.flex_stage` reads them (live batch-norm)."""
        return fwd.FlexParams(fwd.ConvParams(self.conv.weight, self.stride, self.padding, fwd.BatchNormLive(self.bn)),
                              self.kernel, self.channel_map, self.threshold, fwd.BatchNormLive(self.logit_bn),
                              self.eta, self.plastic_bias, self.sigma, self.mask_mode, fused.use_fused(self))

    def forward(self, x: torch.Tensor, steps: int) -> FlexOutput:
        """The stage at one tick per step (:func:`training.forward.flex_stage`), with the pathway drives in
        training mode."""
        if x.shape[0] not in (1, steps):
            raise ValueError(f"input has {x.shape[0]} time steps; expected 1 or {steps}.")
        if steps > self.eta.shape[0]:
            raise ValueError(f"layer was built for {self.eta.shape[0]} time steps, asked for {steps}.")
        drive = fwd.flex_stage(self.params(), x, fwd.Time(steps, 1), analog=True)
        r_sel = r_inv = None
        if self.training and drive.conv_step is not None:
            r_sel, r_inv = drives_from_moments(pathway_moments(drive.conv_step, drive.pool_step))
        return FlexOutput(drive.held, drive.mask.expand_as(drive.held), r_sel, r_inv)

    @torch.no_grad()
    def apply_plasticity(self, r_sel: torch.Tensor, r_inv: torch.Tensor, plasticity_rate: float,
                         plasticity_decay: float) -> None:
        """Hebbian update of the plastic bias, ``b += plasticity_rate (r_sel - r_inv) - plasticity_decay b``."""
        self.plastic_bias += equations.plasticity_delta(r_sel, r_inv, plasticity_rate, plasticity_decay,
                                                        self.plastic_bias)


def pathway_moments(conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """``[2, 2, T', C]``: per path (conv, pool) and step, the channel means of ``relu(x)`` and ``x**2``.

    Means over batch and positions: shards of one batch combine exactly by averaging (DDP).
    """
    dims = (1, 3, 4)
    return torch.stack([torch.stack([x.clamp(min=0).mean(dims), (x * x).mean(dims)]) for x in (conv, pool)])


def drives_from_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_sel, r_inv)`` per channel: :func:`core.equations.drive_from_moments` per step, mean over steps."""
    drives = equations.drive_from_moments(moments[:, 0], moments[:, 1]).mean(1)
    return drives[0], drives[1]

