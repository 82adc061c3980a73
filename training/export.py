"""``bioflexnet export``: a trained run as a framework-free file for the Brian2 simulator.

The file format is described in :mod:`core.export_format`. Batch-norm is
folded in float64 the way PyTorch evaluates it in inference,
``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``: into the
conv weights and a bias current for the conv path, and into a per-channel
``scale`` / ``shift`` of the mask logits. The export also carries a fixed set
of reference images (the first N of the CIFAR-10 test split) with the
float64 PyTorch forward of the *exported* numbers (:func:`reference_forward`,
plasticity off), so ``sim/`` can check its spikes without torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from core import equations
from core.config import MaskMode, MaskSigma, Mode, Reset, RunConfig
from core.export_format import Export, pack_spikes, params_only, write_export
from core.results import file_sha256, provenance
from training import forward as fwd
from training.flex import PlasticFlexLayer
from training.models import IMAGE_SIZE, ConvStage, SpikingVGG
from training.neurons import LIFParams

EXPORT_FILE = "export.npz"
DEFAULT_IMAGES = 128


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def fold_bn(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode batch-norm as ``x * scale + shift`` (float64)."""
    scale = _f64(bn.weight) / np.sqrt(_f64(bn.running_var) + bn.eps)
    return scale, _f64(bn.bias) - _f64(bn.running_mean) * scale


def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """``BN(conv(x)) == conv_folded(x) + bias`` with float64 weights and bias."""
    scale, shift = fold_bn(bn)
    return _f64(conv.weight) * scale[:, None, None, None], shift


def model_arrays(model: SpikingVGG) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Layer specs (header form) and parameter arrays of a model, BN folded."""
    layers, arrays = [], {"input.mean": _f64(model.mean).ravel(), "input.std": _f64(model.std).ravel()}
    c, size = 3, IMAGE_SIZE
    for name, stage in zip(model.names, model.stages):
        if not isinstance(stage, nn.MaxPool2d) and name not in model.activations:
            raise ValueError(f"stage {name} has no neurons after it (model.down_neurons=false); the Brian2 network "
                             "is built from spiking stages only. Export a run trained with down_neurons=true.")
        if isinstance(stage, PlasticFlexLayer) and stage.mask_mode is MaskMode.LEARNED:
            kind, k, s, p = "flex", stage.kernel, stage.stride, stage.padding
            arrays[f"{name}.weight"], arrays[f"{name}.bias"] = fold_conv(stage.conv, stage.bn)
            arrays[f"{name}.logit_scale"], arrays[f"{name}.logit_shift"] = fold_bn(stage.logit_bn)
            arrays[f"{name}.pool_map"] = _f64(stage.channel_map)  # the float32 map the model was trained with
            arrays[f"{name}.threshold"] = _f64(stage.threshold)
            arrays[f"{name}.eta"] = _f64(stage.eta)
            arrays[f"{name}.plastic_bias"] = _f64(stage.plastic_bias)
            c_out = stage.conv.out_channels
        elif isinstance(stage, (ConvStage, PlasticFlexLayer)):  # a conv_only flex stage (m = 1) is a conv stage
            kind, k, s, p = "conv", stage.kernel, stage.stride, stage.padding
            arrays[f"{name}.weight"], arrays[f"{name}.bias"] = fold_conv(stage.conv, stage.bn)
            c_out = stage.conv.out_channels
        elif isinstance(stage, nn.MaxPool2d):
            kind, k, s, p, c_out = "pool", int(stage.kernel_size), int(stage.stride), int(stage.padding), c
        else:
            raise TypeError(f"stage {name} of type {type(stage).__name__} cannot be exported.")
        new = (size + 2 * p - k) // s + 1
        layers.append({"name": name, "kind": kind, "c_in": c, "c_out": c_out, "in_size": [size, size],
                       "out_size": [new, new], "kernel": k, "stride": s, "padding": p})
        c, size = c_out, new
    arrays["readout.weight"] = _f64(model.classifier.weight)
    arrays["readout.bias"] = _f64(model.classifier.bias)
    return layers, arrays


def _heaviside(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0).to(x.dtype)


def folded_network(export: Export) -> tuple[list[fwd.Stage], fwd.Readout]:
    """The export's numbers (float64, batch-norm folded) as :func:`training.forward.run_network` reads them."""
    a = {k: torch.from_numpy(v) for k, v in export.arrays.items() if not k.startswith("ref.")}
    m = export.model
    lif = LIFParams(m.beta, m.theta, Reset(m.reset), export.ticks, None if m.refractory == "step" else 1)
    neurons = fwd.NeuronParams(lif, _heaviside, fused=True)  # no gradient: the fused LIF's numbers are the same
    stages = []
    for layer in export.layers:
        n = layer.name
        if layer.kind == "pool":
            stages.append(fwd.Stage(n, fwd.PoolParams(layer.kernel, layer.stride, layer.padding), None))
            continue
        conv = fwd.ConvParams(a[f"{n}.weight"], layer.stride, layer.padding, fwd.Affine(None, a[f"{n}.bias"].view(-1, 1, 1)))
        params = conv
        if layer.kind == "flex":
            logit_norm = fwd.Affine(a[f"{n}.logit_scale"].view(-1, 1, 1), a[f"{n}.logit_shift"].view(-1, 1, 1))
            params = fwd.FlexParams(conv, layer.kernel, a[f"{n}.pool_map"], a[f"{n}.threshold"], logit_norm,
                                    a[f"{n}.eta"], a[f"{n}.plastic_bias"], MaskSigma(m.mask_sigma),
                                    MaskMode.LEARNED, fused=True)
        stages.append(fwd.Stage(n, params, neurons))
    return stages, fwd.Readout(a["readout.weight"], a["readout.bias"])


@torch.no_grad()
def reference_forward(export: Export, images: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 forward of an export's numbers (plasticity off), at the export's trained ``K``.

    The one forward of every model (:func:`training.forward.run_network`) on the folded parameters of
    :func:`folded_network`, with the exact spike function ``H(v - theta)``.

    With Poisson encoding the input spikes are drawn from the seed
    ``header["reference"]["input_seed"]`` and returned, so a simulator can replay them.

    Returns
    -------
    ``{"logits": [N, classes], "spikes.L": [N, T, C, H, W] uint8, "mask_mean.L": [N, T, C],
    "r_sel.L" / "r_inv.L": [N, C]}`` (per-image pathway drives, mean over steps and positions),
    ``"spike_ticks.L"`` ``[N, T, C, H, W]`` uint8, the tick of each step's first spike within the step
    (``K`` where none; a test aid, not stored), and ``"input_spikes": [N, T, 3, 32, 32]`` uint8 for Poisson
    encoding.
    """
    steps, ticks = export.steps, export.ticks
    x = torch.from_numpy(images).to(torch.float64) / 255.0
    out: dict[str, np.ndarray] = {}
    if export.model.encoding == "direct":
        mean, std = (torch.from_numpy(export.arrays[f"input.{k}"]).view(1, 3, 1, 1) for k in ("mean", "std"))
        x = equations.normalise_input(x, mean, std).unsqueeze(0)
    else:  # Bernoulli spikes with the pixel as probability (as SpikingVGG.encode), drawn from a fixed seed
        gen = torch.Generator().manual_seed(int(export.header.input_seed))
        x = (torch.rand((steps, *x.shape), generator=gen, dtype=torch.float64) < x).to(torch.float64)
        out["input_spikes"] = x.transpose(0, 1).to(torch.uint8).numpy()
    stages, readout = folded_network(export)
    result = fwd.run_network(stages, readout, x, fwd.Time(steps, ticks), analog=export.model.encoding == "direct")
    for trace in result.layers:
        n = trace.name
        out[f"spikes.{n}"] = trace.output.transpose(0, 1).to(torch.uint8).numpy()
        per_tick = trace.spikes.unflatten(0, (steps, ticks))
        when = torch.where(per_tick > 0, torch.arange(ticks, dtype=x.dtype).view(1, -1, *[1] * (per_tick.dim() - 2)),
                           torch.tensor(float(ticks), dtype=x.dtype)).amin(1)
        out[f"spike_ticks.{n}"] = when.transpose(0, 1).to(torch.uint8).numpy()
        if trace.mask is not None:  # per step: the mean over positions and the step's ticks
            mask = trace.mask.mean(dim=(3, 4))
            if mask.shape[0] != steps:  # per tick
                mask = fwd.step_sum(mask, steps) / (mask.shape[0] // steps)
            out[f"mask_mean.{n}"] = mask.transpose(0, 1).numpy()
    for paths in result.paths:  # per-image drives as PlasticFlexLayer defines them (a batch of one image)
        out[f"r_sel.{paths.name}"] = equations.pathway_drive(paths.conv, (3, 4)).mean(0).numpy()
        out[f"r_inv.{paths.name}"] = equations.pathway_drive(paths.pool, (3, 4)).mean(0).numpy()
    out["logits"] = result.logits.numpy()
    return out


def build_export(model: SpikingVGG, cfg: RunConfig, images: np.ndarray, labels: np.ndarray,
                 run_info: dict | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and arrays of a model's export, reference outputs included (not yet written)."""
    if cfg.model.mode is Mode.ANN:
        raise ValueError("an ann-mode model has ReLU units, not spiking neurons; export a hybrid or stbp run.")
    m = cfg.model
    layers, arrays = model_arrays(model)
    last = layers[-1]
    header = {
        "model": {"arch": m.arch.value, "flex": m.flex, "mode": m.mode.value, "width": m.width, "steps": m.steps,
                  "beta": m.beta, "theta": m.theta, "reset": m.reset.value, "mask_sigma": m.mask_sigma.value,
                  "encoding": m.encoding.value, "plasticity_rate": m.plasticity_rate, "refractory": m.refractory.value,
                  "plasticity_decay": m.plasticity_decay, "num_classes": m.num_classes, "ticks": m.ticks,
                  "downsample": m.downsample.value},
        "physics": physics(m.beta, m.ticks, m.refractory.value),
        "layers": layers,
        "readout": {"source": last["name"], "features": last["c_out"] * last["out_size"][0] * last["out_size"][1]},
        "reference": {"split": "test", "selection": f"first {len(labels)} images", "dtype": "float64",
                      "plasticity": "off", "input_seed": cfg.seed},
        "run": {**(run_info or {}), "config": cfg.to_dict(), "provenance": provenance(seed=cfg.seed)},
    }
    images = np.ascontiguousarray(images, dtype=np.uint8)
    arrays.update({"ref.images": images, "ref.labels": np.asarray(labels, dtype=np.int64)})
    was_training = model.training
    model.eval()
    # Poisson input: the float32 model draws its own spikes; seed them so the export is reproducible
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        arrays["ref.model_logits"] = model(torch.from_numpy(images).float() / 255.0).double().numpy()
    model.train(was_training)
    ref = reference_forward(params_only(header, arrays), images)
    arrays["ref.logits"] = ref.pop("logits")
    ref = {k: v for k, v in ref.items() if not k.startswith("spike_ticks.")}  # test aid, not stored
    for key, value in ref.items():
        arrays[f"ref.{key}"] = pack_spikes(value) if "spikes" in key else value
    return header, arrays


def physics(beta: float, ticks: int, refractory: str = "step") -> dict:
    """The physical reading of the trained dynamics (docs/model.md, "Time"): what ``sim/`` simulates by default.

    The membrane constants are :data:`core.equations.PHYSICS_DEFAULTS`; one step lasts
    ``tau_m ln(1/beta)``, a tick ``dt = step / K``; the refractory period is one step (``model.refractory``
    ``step``) or none (0 ms); synapses are delta synapses (a spike's charge arrives in the tick it is emitted).
    """
    p = dict(equations.PHYSICS_DEFAULTS)
    if not 0.0 < beta < 1.0:  # no finite physical step (only exact mode applies)
        return {**p, "ticks": ticks, "synapse": "delta"}
    step = equations.step_ms(beta, p["tau_m_ms"])
    return {**p, "ticks": ticks, "step_ms": step, "dt_ms": step / ticks,
            "refractory_ms": step if refractory == "step" else 0.0, "synapse": "delta"}


def export_run(run_dir: Path, out: Path | None = None, n_images: int = DEFAULT_IMAGES,
               data_dir: Path | None = None) -> Path:
    """Export a trained run with the first ``n_images`` test images as reference; returns the file path."""
    from training.data import load_split
    from training.runs import CHECKPOINT, RunDirError, load_model

    if n_images < 1:
        raise RunDirError(f"--images={n_images}: the export needs at least one reference image.")
    model, cfg = load_model(run_dir)
    test = load_split("test", data_dir)
    if n_images > len(test):
        raise RunDirError(f"--images={n_images} exceeds the {len(test)} test images.")
    try:
        header, arrays = build_export(model, cfg, test.images[:n_images].numpy(), test.labels[:n_images].numpy(),
                                      run_info={"run_dir": str(Path(run_dir).resolve()),
                                                "checkpoint_sha256": file_sha256(Path(run_dir) / CHECKPOINT)})
    except ValueError as exc:
        raise RunDirError(f"{run_dir}: {exc}") from exc
    return write_export(out or Path(run_dir) / EXPORT_FILE, header, arrays)
