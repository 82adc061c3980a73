"""Sparsity and energy: firing rates, spike rasters, synaptic operations and a 45 nm energy estimate.

Counting rules (per image, summed over time steps; written into the result attrs):

* **weights** (conv / linear synapses): an input that is a spike drives one
  accumulate (AC) per outgoing synapse, so ``ACs = Σ_t Σ_inputs s · fan-out``
  with fan-out = ``C_out ×`` the number of output positions whose receptive
  field holds the input (zero padding is no synapse). An analog input (the
  directly encoded image of the first layer; every layer of an ANN) drives a
  multiply-accumulate (MAC) per synapse whether it is zero or not (dense).
  With direct encoding the first layer's input is constant, so the model
  computes its convolution once per image, not T times; it is counted once.
* **channel_map** (flex pool path): max-pooling spikes is a logical OR and
  pooling analog values is comparisons: neither is a synaptic op. The
  parameter-free channel map ``C_in → C_out`` adds one op per non-zero entry
  of the map per pooled input that is non-zero (AC for spikes, MAC dense for
  analog); it is the identity (free wiring) when ``C_in == C_out``.
* **mask** (flex mixing): the mask ``m = σ(a · Pool + c(t))`` (BN, threshold,
  η(t) and the plastic bias folded into ``a`` and ``c``) and the mixing
  ``u = Pool + m (Conv − Pool)`` cost 2 MACs per output neuron per step,
  dense (they do not depend on spikes).
* Not counted: batch-norm and biases (folded into the weights), LIF membrane
  updates and resets, max-pool comparisons, memory traffic.

Energy is an **estimate**: 0.9 pJ per AC and 4.6 pJ per MAC (32-bit float,
45 nm CMOS, Horowitz 2014), for the synaptic operations above only. The ANN
MAC count is the same architecture run as an ANN: one step, all ops dense.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from analysis.robustness import select_images
from analysis.settings import SparsitySettings, settings_json
from training.data import Split, to_float
from training.flex import PlasticFlexLayer
from training.forward import READOUT, flat_time
from training.models import ModelOutput, SpikingVGG

AC_PJ = 0.9
MAC_PJ = 4.6
PATHS = ("weights", "channel_map", "mask")


def firing_rate(activity: torch.Tensor) -> torch.Tensor:
    """Fraction of non-zero entries (spikes per neuron) of ``[T, ...]`` activity, per time step ``[T]``."""
    return (activity != 0).flatten(1).float().mean(1)


def fan_out(kernel: int, stride: int, padding: int, height: int, width: int) -> torch.Tensor:
    """``[H, W]``: how many output positions of a ``kernel``×``kernel`` window read each input position."""
    with torch.enable_grad():
        x = torch.ones(1, 1, height, width, requires_grad=True)
        F.conv2d(x, torch.ones(1, 1, kernel, kernel), stride=stride, padding=padding).sum().backward()
    return x.grad[0, 0]


def _conv_ops(conv: nn.Conv2d, x: torch.Tensor, analog: bool) -> float:
    """Synaptic ops of ``conv`` driven by ``x`` ``[T', B, C, H, W]`` (dense if ``analog``)."""
    fan = fan_out(conv.kernel_size[0], conv.stride[0], conv.padding[0], x.shape[-2], x.shape[-1]).to(x.device)
    if analog:
        return float(x.shape[0] * x.shape[1] * x.shape[2] * fan.sum() * conv.out_channels)
    return float(((x != 0).to(fan.dtype) * fan).sum() * conv.out_channels)


def stage_ops(stage: nn.Module, x: torch.Tensor, analog: bool, steps: int) -> dict[str, float]:
    """Synaptic ops per path (summed over the batch and time) of one stage fed ``x``."""
    ops = dict.fromkeys(PATHS, 0.0)
    if isinstance(stage, nn.Linear):  # read-out: x is [T, B, features]
        ops["weights"] = float((x.numel() if analog else (x != 0).sum().item()) * stage.out_features)
        return ops
    ops["weights"] = _conv_ops(stage.conv, x, analog)
    if isinstance(stage, PlasticFlexLayer):
        c_out, c_in = stage.channel_map.shape
        pooled = flat_time(lambda z: F.max_pool2d(z, stage.kernel, stage.stride, stage.padding), x)
        if c_out != c_in:  # C_in == C_out: the identity map is wiring, not arithmetic
            per_input = (stage.channel_map != 0).sum(0).to(x.dtype)[:, None, None]  # [C_in, 1, 1]
            active = torch.ones_like(pooled) if analog else (pooled != 0).to(x.dtype)
            ops["channel_map"] = float((active * per_input).sum())
        out_neurons = c_out * pooled.shape[-2] * pooled.shape[-1]
        ops["mask"] = float(2 * steps * x.shape[1] * out_neurons)
    return ops


def count_ops(model: SpikingVGG, out: ModelOutput, counts: dict[str, dict[str, list[float]]]) -> None:
    """Add the synaptic ops of one forward pass to ``{layer: {path: [ACs, MACs, ANN MACs]}}``, from what each
    stage with weights received (``out.inputs``, :class:`training.forward.StageInput`)."""
    modules = {**dict(zip(model.names, model.stages)), READOUT: model.classifier}
    for name, x, analog in out.inputs:
        module = modules[name]
        dense = stage_ops(module, x[:1], analog=True, steps=1)  # the same architecture as an ANN
        ops = stage_ops(module, x, analog, model.cfg.steps)
        layer = counts.setdefault(name, {p: [0.0, 0.0, 0.0] for p in PATHS})
        for p in PATHS:
            layer[p][1 if analog or p == "mask" else 0] += ops[p]
            layer[p][2] += dense[p]


def raster_neurons(model: SpikingVGG, out: ModelOutput, n: int, seed: int) -> dict[str, torch.Tensor]:
    """A fixed random choice of ``n`` neurons (flat ``C·H·W`` indices, sorted) per neuron layer."""
    g = torch.Generator().manual_seed(seed)
    size = min(t.output[0, 0].numel() for t in out.layers)
    return {t.name: torch.randperm(t.output[0, 0].numel(), generator=g)[:min(n, size)].sort().values
            for t in out.layers}


@torch.no_grad()
def sparsity(model: SpikingVGG, split: Split, settings: SparsitySettings,
             attrs: dict[str, str] | None = None) -> xr.Dataset:
    """Firing rates, rasters, synaptic ops and the energy estimate of ``model`` on a fixed image subset."""
    model.eval()
    images, index = select_images(split, settings.n_images, settings.seed)
    layers = model.names_with_neurons()
    steps = model.cfg.steps
    spikes = {n: torch.zeros(steps, dtype=torch.float64) for n in layers}
    ratio = {n: torch.zeros(steps, dtype=torch.float64) for n in layers}
    neurons: dict[str, int] = {}
    raster, chosen = None, None
    counts: dict[str, dict[str, list[float]]] = {}
    for start in range(0, len(images), settings.batch_size):
        x = to_float(images.images[start:start + settings.batch_size])
        out = model.run(x)
        count_ops(model, out, counts)
        for t in out.layers:
            spikes[t.name] += (t.output != 0).flatten(2).sum(2).sum(1).double().cpu()
            neurons[t.name] = t.output[0, 0].numel()
            if t.mask is not None:
                mask = t.mask if t.mask.shape[0] in (1, steps) else t.mask.unflatten(0, (steps, -1)).mean(1)  # per tick
                ratio[t.name] += mask.expand(steps, *mask.shape[1:]).flatten(1).mean(1).double().cpu() * len(x)
        if start == 0 and settings.raster_images:
            chosen = raster_neurons(model, out, settings.raster_neurons, settings.seed)
            raster = _raster(out, chosen, settings.raster_images)
    return _dataset(model, layers, spikes, ratio, neurons, counts, raster, chosen, len(images), index, settings, attrs)


def _raster(out: ModelOutput, chosen: dict[str, torch.Tensor], n_images: int) -> np.ndarray:
    """``[image, layer, neuron, time]`` activity of the chosen neurons of the first ``n_images`` images."""
    rows = [t.output[:, :n_images].flatten(2)[:, :, chosen[t.name]].permute(1, 2, 0).cpu().numpy() for t in out.layers]
    return np.stack(rows, axis=1).astype(np.float32)


def _dataset(model, layers, spikes, ratio, neurons, counts, raster, chosen, n, index, settings, attrs) -> xr.Dataset:
    """Per-image results from the sums :func:`sparsity` accumulated over ``n`` images."""
    all_layers = layers + [READOUT]
    steps = model.cfg.steps
    rate = np.full((len(all_layers), steps), np.nan)
    conv_ratio = np.full_like(rate, np.nan)
    flex = set(model.flex_layers())
    for i, name in enumerate(layers):
        rate[i] = spikes[name].numpy() / (n * neurons[name])
        if name in flex:
            conv_ratio[i] = ratio[name].numpy() / n
    ops = np.array([[counts[name][p] for p in PATHS] for name in all_layers]) / n  # [layer, path, 3]
    acs, macs, ann = ops[..., 0], ops[..., 1], ops[..., 2]
    n_neurons = np.array([neurons.get(name, 0) for name in layers] + [model.classifier.out_features])
    total_spikes = sum(float(spikes[name].sum()) for name in layers)
    total_slots = sum(n * neurons[name] * steps for name in layers)
    data = {
        "firing_rate": (("layer", "time"), rate, {"long_name": "spikes per neuron per time step (ann: fraction of "
                                                              "active units); NaN for the non-spiking read-out",
                                                  "units": "1/step"}),
        "mean_firing_rate": ("layer", np.append(rate[:-1].mean(1), np.nan),
                             {"long_name": "firing rate averaged over time steps", "units": "1/step"}),
        "network_firing_rate": ((), total_spikes / total_slots, {"long_name": "spikes per neuron per step over all "
                                                                              "neuron layers", "units": "1/step"}),
        "spikes_per_image": ("layer", np.append(rate[:-1].sum(1) * n_neurons[:-1], np.nan),
                             {"long_name": "spikes per image summed over neurons and time steps", "units": "1"}),
        "neurons": ("layer", n_neurons, {"long_name": "neurons in the layer (read-out: classes)", "units": "1"}),
        "conv_ratio": (("layer", "time"), conv_ratio, {"long_name": "mean flex mask m (share of the conv path); NaN "
                                                                    "for non-flex layers", "units": "1"}),
        "acs": (("layer", "path"), acs, {"long_name": "accumulate operations per image (spike-driven)", "units": "1"}),
        "macs": (("layer", "path"), macs, {"long_name": "multiply-accumulate operations per image", "units": "1"}),
        "ann_macs": (("layer", "path"), ann, {"long_name": "MACs per image of the same architecture as an ANN "
                                                           "(one step, dense)", "units": "1"}),
        "synops": ("layer", (acs + macs).sum(1), {"long_name": "synaptic operations per image (ACs + MACs)", "units": "1"}),
        "energy": ("layer", (AC_PJ * acs + MAC_PJ * macs).sum(1), _energy_attrs("per layer")),
        "total_acs": ((), acs.sum(), {"long_name": "accumulate operations per image", "units": "1"}),
        "total_macs": ((), macs.sum(), {"long_name": "multiply-accumulate operations per image", "units": "1"}),
        "total_energy": ((), AC_PJ * acs.sum() + MAC_PJ * macs.sum(), _energy_attrs("total")),
        "ann_total_macs": ((), ann.sum(), {"long_name": "MACs per image of the same architecture as an ANN", "units": "1"}),
        "ann_energy": ((), MAC_PJ * ann.sum(), _energy_attrs("of the ANN of the same architecture")),
    }
    coords = {
        "layer": ("layer", all_layers, {"long_name": "layer (neuron layers, then the read-out)"}),
        "path": ("path", list(PATHS), {"long_name": "synaptic path (weights; flex channel map; flex mask mixing)"}),
        "time": ("time", np.arange(steps), {"long_name": "time step", "units": "step"}),
    }
    if raster is not None:
        pad = np.full((raster.shape[0], 1) + raster.shape[2:], np.nan, dtype=np.float32)  # no spikes in the read-out
        data["raster"] = (("raster_image", "layer", "neuron", "time"), np.concatenate([raster, pad], axis=1),
                          {"long_name": "activity of sampled neurons (spikes; ann: ReLU output)", "units": "1"})
        ids = np.stack([chosen[name].numpy() for name in layers] + [np.full(raster.shape[2], -1)])
        coords["neuron_index"] = (("layer", "neuron"), ids, {"long_name": "flat C*H*W index of the sampled neuron "
                                                                          "(-1: none)"})
        coords["raster_sample"] = ("raster_image", index[:raster.shape[0]],
                                   {"long_name": "index of the image in the CIFAR-10 test split"})
    return xr.Dataset(data, coords=coords, attrs={
        **(attrs or {}), "n_images": n, "counting_rules": __doc__.split("Counting rules")[1].strip(),
        "energy_note": "ESTIMATE: 0.9 pJ/AC, 4.6 pJ/MAC (45 nm CMOS, Horowitz 2014), synaptic operations only",
        "analysis_settings": settings_json(settings)})


def _energy_attrs(what: str) -> dict[str, str]:
    return {"long_name": f"estimated synaptic energy per image, {what} (ESTIMATE: 45 nm, 0.9 pJ/AC, 4.6 pJ/MAC)",
            "units": "pJ"}
