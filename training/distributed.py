"""Data-parallel training over several processes (``torchrun``, PyTorch DDP).

    torchrun --standalone --nproc-per-node 8 -m bioflexnet.cli train --profile paper --out runs/paper-ddp

Each of the W ranks holds a full replica of the model and takes its contiguous
``1/W`` share of every global batch (``train.batch_size`` is the *global*
batch; every rank draws the same shuffle and augmentation and keeps its slice,
so the batches are the single process's batches). What keeps the replicas
equal to one process with the whole batch:

* gradients: averaged by :class:`~torch.nn.parallel.DistributedDataParallel`;
* batch-norm: :class:`SyncBatchNorm2d` computes the batch statistics over all
  ranks (a differentiable all-reduce of per-channel sums, so the backward is
  the global batch's too) and keeps the running statistics equal;
* plasticity: each flex layer's pathway drives ``r_sel``/``r_inv`` are
  averaged over ranks (:func:`all_reduce_moments`) before the Hebbian step.

Rank 0 writes the run directory; every rank evaluates the full validation
split (the replicas are equal, so they agree). Poisson input encoding draws
its spikes per rank, so only direct encoding reproduces one process exactly.
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn


class DistInfo(NamedTuple):
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo(0, 1, 0)


def from_environment() -> DistInfo:
    """Ranks from the variables ``torchrun`` sets; one process if they are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(info: DistInfo, device: str) -> str:
    """Join the process group (NCCL on CUDA, gloo on the CPU); returns this rank's device."""
    if info.world <= 1:
        return device
    if device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def shard(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous share of a global batch (the batch size must divide by the world size)."""
    if info.world <= 1:
        return x
    n = x.shape[0] // info.world
    return x[info.rank * n:(info.rank + 1) * n]


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        dist.all_reduce(t)
    return t


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = g.clone()
        dist.all_reduce(g)
        return g


class SyncBatchNorm2d(nn.BatchNorm2d):
    """:class:`nn.BatchNorm2d` whose training statistics cover the batch on every rank.

    The same parameters and buffers as ``BatchNorm2d`` (checkpoints are
    interchangeable); one process behaves as plain ``BatchNorm2d``. Unlike
    ``nn.SyncBatchNorm`` it runs on the CPU (gloo) as well as on GPUs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() // c, dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum((0, 2, 3)), xf.square().sum((0, 2, 3)), count])
        stats = _AllReduceSum.apply(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean.square()).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every ``nn.BatchNorm2d`` in ``module`` for a :class:`SyncBatchNorm2d` holding the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(next(iter(child.state_dict().values())).device)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_batchnorm(child)
    return module


def all_reduce_moments(out, info: DistInfo):
    """``out`` (a ModelOutput) with the flex layers' drive moments averaged over ranks, in one all-reduce.

    The moments are means over each rank's equal share of the batch, so their average is the global batch's:
    the drives, computed from them afterwards, equal a single process's exactly (up to summation order).
    """
    if info.world <= 1 or not out.moments:
        return out
    flat = torch.cat([m.reshape(-1) for _, m in out.moments])
    dist.all_reduce(flat)
    flat /= info.world
    parts = iter(flat.split([m.numel() for _, m in out.moments]))
    return out._replace(moments=tuple((name, next(parts).view_as(m)) for name, m in out.moments))


class RunModule(nn.Module):
    """``model.run`` as ``forward``, so :class:`DistributedDataParallel` sees the calls it must synchronise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, ticks: int | None = None):
        return self.model.run(x, ticks=ticks)


def wrap(model: nn.Module, info: DistInfo, device: str):
    """The callable the training step uses: ``model.run`` itself, or its DDP wrapper."""
    if info.world <= 1:
        return model.run
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # buffers stay equal without a broadcast: synced BN statistics and all-reduced plasticity
    with warnings.catch_warnings():  # newer torch renames the option; the old name works in every version
        warnings.simplefilter("ignore", FutureWarning)
        return nn.parallel.DistributedDataParallel(RunModule(model), device_ids=ids, broadcast_buffers=False)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()
