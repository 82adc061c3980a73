"""VGG backbones for CIFAR-10 in ``ann`` / ``hybrid`` / ``stbp`` mode, with or without PlasticFlex.

Architecture (VGG-5/7/11/16, CIFAR variant): the feature stack is a list of
stages; each conv stage is a 3x3 convolution (stride 1, padding 1) and each
``M`` stage a 2x2 stride-2 down-sampling (C -> C). With ``flex=True`` every
stage is a :class:`PlasticFlexLayer`: 3x3 stages mix a 3x3 conv with a 3x3
stride-1 max-pool, ``M`` stages a 2x2 stride-2 conv with a 2x2 max-pool.
With ``flex=False`` (the *twin* baseline, docs/model.md) the same stages keep
only their conv path: ``conv -> BN`` with the same kernel, stride and
padding. Every 3x3 stage is followed by the activation; ``M`` stages are
followed by it when ``down_neurons`` (the default, on both sides), so FLEX and
its twin have neurons in exactly the same places and differ only by the flex
mixing. Why neurons on the down-sampling stages: every stage's output is then
spikes, which is what the Brian2 network is built from (a stage without
neurons would pass an analog current on), and it is the original authors'
flex model. ``downsample=maxpool`` is the classic max-pool VGG (no neurons on
its pools), an extra named baseline (variant ``vggmp-*``). A linear read-out
maps the last feature map (1x1 for 32x32 inputs) to class scores; the output
is its mean over the T steps.

The activation is ReLU in ``ann`` mode and LIF spikes otherwise
(:mod:`training.neurons`). Input normalisation by the CIFAR-10 channel
statistics happens inside the model, so the model takes pixels in [0, 1].

The modules hold the parameters; the forward pass is :func:`training.forward.run_network`, the one forward
of every model and time resolution, handed the modules' parameters with live batch-norm.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from core import equations
from core.config import Downsample, Encoding, Mode, ModelConfig, Refractory
from training import forward as fwd
from training import fused
from training.flex import PlasticFlexLayer, drives_from_moments, pathway_moments
from training.forward import LayerTrace, flat_time
from training.neurons import LIFParams
from training.surrogate import make_surrogate

VGG_STAGES: dict[str, list[int | str]] = {
    "vgg5": [64, "M", 128, "M", 256, "M"],
    "vgg7": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
IMAGE_SIZE = 32


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, classes], mean over time of the read-out
    layers: tuple[LayerTrace, ...]  # every neuron layer, in order (training.forward.LayerTrace)
    # (name, moments) of every flex layer in training mode, neurons after it or not (flex.pathway_moments)
    moments: tuple[tuple[str, torch.Tensor], ...] = ()
    inputs: tuple[fwd.StageInput, ...] = ()  # what every stage with weights received (training.forward)
    paths: tuple[fwd.Paths, ...] = ()  # every flex stage's per-step conv and pool paths (training.forward)


class ConvStage(nn.Module):
    """Baseline stage: convolution + batch-norm (3x3 stride 1, or 2x2 stride 2 for down-sampling)."""

    kind = "conv"

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def params(self) -> fwd.ConvParams:
        return fwd.ConvParams(self.conv.weight, self.stride, self.padding, fwd.BatchNormLive(self.bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BN(Conv(x))`` on ``[T', B, C, H, W]`` (tests and analyses; the model runs :mod:`training.forward`)."""
        return flat_time(lambda z: self.bn(self.conv(z)), x)


class Activation(nn.Module):
    """ReLU (``ann``) or LIF spikes (``hybrid`` / ``stbp``): the neurons after a stage."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mode = cfg.mode
        self.cfg = cfg
        if cfg.mode is Mode.HYBRID:
            # straight-through rate derivative: slope 1/theta over one threshold width
            self.spike_fn = make_surrogate(cfg.hybrid_surrogate, 1.0 / cfg.theta)
        else:
            self.spike_fn = make_surrogate(cfg.surrogate, cfg.surrogate_alpha)
        self.fused = True  # training.fused.lif_fused where it applies (see fused.use_fused)

    def params(self, ticks: int) -> fwd.NeuronParams:
        if self.mode is Mode.ANN:
            return fwd.NeuronParams(None)
        c = self.cfg
        refractory = None if c.refractory is Refractory.STEP else 1  # None: K ticks, one step
        return fwd.NeuronParams(LIFParams(c.beta, c.theta, c.reset, ticks, refractory), self.spike_fn,
                                detach_state=self.mode is Mode.HYBRID, fused=fused.use_fused(self))


class SpikingVGG(nn.Module):
    """VGG-11/16 for CIFAR-10, spiking or not, with or without PlasticFlex stages."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(equations.CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(equations.CIFAR10_STD).view(1, 3, 1, 1))
        self.stages = nn.ModuleList()
        self.activations = nn.ModuleDict()
        self.names: list[str] = []
        c, size, n_conv, n_down = 3, IMAGE_SIZE, 0, 0
        for item in VGG_STAGES[cfg.arch.value]:
            if item == "M":
                n_down += 1
                name, c_out, (k, stride, pad) = f"down{n_down}", c, (2, 2, 0)
                flex, neurons = cfg.flex, cfg.down_neurons
                size //= 2
            else:
                n_conv += 1
                name, c_out, (k, stride, pad) = f"conv{n_conv}", max(1, round(int(item) * cfg.width)), (3, 1, 1)
                flex, neurons = cfg.flex and cfg.flex_3x3, True
            if item == "M" and not cfg.flex and cfg.downsample is Downsample.MAXPOOL:
                stage, neurons = nn.MaxPool2d(2, 2), False
            elif flex:
                stage = PlasticFlexLayer(c, c_out, k, stride, pad, (size, size), cfg.steps, cfg.mask_sigma,
                                         cfg.mask_init, cfg.mask_mode)
            else:
                stage = ConvStage(c, c_out, k, stride, pad)
            c = c_out
            self.stages.append(stage)
            self.names.append(name)
            if neurons:
                self.activations[name] = Activation(cfg)
        self.classifier = nn.Linear(c * size * size, cfg.num_classes)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` in [0, 1] -> input ``[T', B, 3, H, W]``.

        Direct encoding gives the normalised image once (``T' = 1``: a constant
        current); Poisson encoding gives ``T`` Bernoulli spike frames with the
        pixel value as probability, differentiable by straight-through.
        """
        if self.cfg.encoding is Encoding.POISSON and self.cfg.spiking:
            rates = images.unsqueeze(0).expand(self.cfg.steps, *images.shape)
            spikes = (torch.rand_like(rates) < rates).to(images.dtype)
            return rates + (spikes - rates).detach()
        return equations.normalise_input(images, self.mean, self.std).unsqueeze(0)

    def network(self, ticks: int) -> list[fwd.Stage]:
        """The stages' parameters as :func:`training.forward.run_network` reads them."""
        stages = []
        for name, stage in zip(self.names, self.stages):
            if isinstance(stage, nn.MaxPool2d):  # classic baseline: neuron-free max-pool
                params = fwd.PoolParams(int(stage.kernel_size), int(stage.stride), int(stage.padding))
            else:
                params = stage.params()
            neurons = self.activations[name].params(ticks) if name in self.activations else None
            stages.append(fwd.Stage(name, params, neurons))
        return stages

    def run(self, images: torch.Tensor, ticks: int | None = None) -> ModelOutput:
        """Forward pass that also returns every neuron layer's trace.

        ``ticks``: the time resolution K to run at (default ``cfg.ticks``; the trainer's coarse phase runs
        a K > 1 model at one tick per step, see ``train.coarse_steps``; the fidelity measurements run a model
        at finer resolutions).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}.")
        ticks = self.cfg.ticks if ticks is None else ticks
        if ticks > 1 and (not self.cfg.spiking or not 0.0 < self.cfg.beta < 1.0):
            raise ValueError(f"ticks={ticks} needs spiking neurons with 0 < beta < 1 "
                             f"(mode={self.cfg.mode.value}, beta={self.cfg.beta}).")
        analog = not (self.cfg.encoding is Encoding.POISSON and self.cfg.spiking)
        readout = fwd.Readout(self.classifier.weight, self.classifier.bias)
        out = fwd.run_network(self.network(ticks), readout, self.encode(images), fwd.Time(self.cfg.steps, ticks),
                              analog)
        moments = ()
        if self.training:  # the pathway drives of the plasticity rule, from the per-step paths
            with torch.no_grad():
                moments = tuple((p.name, pathway_moments(p.conv, p.pool)) for p in out.paths)
        return ModelOutput(out.logits, out.layers, moments, out.inputs, out.paths)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images).logits

    def names_with_neurons(self) -> list[str]:
        """Names of the neuron layers, in order (the ``layer`` coordinate of results)."""
        return list(self.activations.keys())

    def flex_layers(self) -> dict[str, PlasticFlexLayer]:
        return {n: s for n, s in zip(self.names, self.stages) if isinstance(s, PlasticFlexLayer)}

    @torch.no_grad()
    def apply_plasticity(self, out: ModelOutput) -> None:
        """Hebbian step of every flex layer's mask bias from the drives of one forward pass."""
        layers = self.flex_layers()
        for name, moments in out.moments:
            r_sel, r_inv = drives_from_moments(moments)
            layers[name].apply_plasticity(r_sel, r_inv, self.cfg.plasticity_rate, self.cfg.plasticity_decay)


def build_model(cfg: ModelConfig) -> SpikingVGG:
    return SpikingVGG(cfg)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (the plastic bias and the channel map are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
