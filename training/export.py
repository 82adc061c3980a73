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
import torch.nn.functional as F
from torch import nn

from core import equations
from core.config import Mode, Reset, RunConfig
from core.export_format import Export, LayerSpec, pack_spikes, params_only, write_export
from core.results import file_sha256, provenance
from training.flex import PlasticFlexLayer, map_channels
from training.models import IMAGE_SIZE, ConvStage, SpikingVGG
from training.neurons import LIFParams, lif_multistep, lif_ticks, tick_params

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
        if isinstance(stage, PlasticFlexLayer) and stage.mask_mode.value != "learned":
            raise ValueError(f"stage {name} has mask_mode={stage.mask_mode.value!r}; only the learned mask is "
                             "exported (a conv_only ablation is the twin baseline: export that instead).")
        if isinstance(stage, PlasticFlexLayer):
            kind, k, s, p = "flex", stage.kernel, stage.stride, stage.padding
            arrays[f"{name}.weight"], arrays[f"{name}.bias"] = fold_conv(stage.conv, stage.bn)
            arrays[f"{name}.logit_scale"], arrays[f"{name}.logit_shift"] = fold_bn(stage.logit_bn)
            arrays[f"{name}.pool_map"] = _f64(stage.channel_map)  # the float32 map the model was trained with
            arrays[f"{name}.threshold"] = _f64(stage.threshold)
            arrays[f"{name}.eta"] = _f64(stage.eta)
            arrays[f"{name}.plastic_bias"] = _f64(stage.plastic_bias)
            c_out = stage.conv.out_channels
        elif isinstance(stage, ConvStage):
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


@torch.no_grad()
def reference_forward(export: Export, images: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 PyTorch forward of an export's numbers (plasticity off).

    Mirrors :meth:`SpikingVGG.run` step for step, with BN folded as in the
    export and the mask written as in ``sim/``: ``z = logits + (eta[t] + b)``,
    ``u = pool + m (conv - pool)``; the LIF update is :func:`training.neurons.lif_multistep`.

    With Poisson encoding the input spikes are drawn from the seed
    ``header["reference"]["input_seed"]`` and returned, so a simulator can replay them.

    Returns
    -------
    ``{"logits": [N, classes], "spikes.L": [N, T, C, H, W] uint8, "mask_mean.L": [N, T, C],
    "r_sel.L" / "r_inv.L": [N, C]}`` (per-image pathway drives, mean over steps and positions),
    and ``"input_spikes": [N, T, 3, 32, 32]`` uint8 for Poisson encoding.
    """
    a = {k: torch.from_numpy(v) for k, v in export.arrays.items() if not k.startswith("ref.")}
    model, steps = export.model, export.steps
    params = LIFParams(model.beta, model.theta, Reset(model.reset))
    sigma = equations.mask_sigma(model.mask_sigma)
    x = torch.from_numpy(images).to(torch.float64) / 255.0
    out: dict[str, np.ndarray] = {}
    if model.encoding == "direct":
        x = equations.normalise_input(x, a["input.mean"].view(1, 3, 1, 1), a["input.std"].view(1, 3, 1, 1)).unsqueeze(0)
    else:  # Bernoulli spikes with the pixel as probability (as SpikingVGG.encode), drawn from a fixed seed
        gen = torch.Generator().manual_seed(int(export.header.input_seed))
        x = (torch.rand((steps, *x.shape), generator=gen, dtype=torch.float64) < x).to(torch.float64)
        out["input_spikes"] = x.transpose(0, 1).to(torch.uint8).numpy()
    if export.ticks > 1:
        return _reference_ticks(export, a, x, params, sigma, out)
    for layer in export.layers:
        flat = x.flatten(0, 1)
        if layer.kind == "pool":
            x = F.max_pool2d(flat, layer.kernel, layer.stride, layer.padding).unflatten(0, x.shape[:2])
            continue
        conv = F.conv2d(flat, a[f"{layer.name}.weight"], a[f"{layer.name}.bias"], layer.stride, layer.padding)
        conv = conv.unflatten(0, x.shape[:2])
        current = conv
        if layer.kind == "flex":
            current = _flex_current(layer, a, flat, conv, x.shape[:2], steps, sigma, out)
        spikes, _ = lif_multistep(current, steps, params, _heaviside)
        out[f"spikes.{layer.name}"] = spikes.transpose(0, 1).to(torch.uint8).numpy()
        x = spikes
    scores = F.linear(x.flatten(2), a["readout.weight"], a["readout.bias"])
    out["logits"] = scores.mean(0).numpy()
    return out


def _flex_current(layer: LayerSpec, a: dict[str, torch.Tensor], flat: torch.Tensor, conv: torch.Tensor,
                  lead: torch.Size, steps: int, sigma, out: dict[str, np.ndarray]) -> torch.Tensor:
    """Mixed current ``u`` of a flex layer; also records mask means and pathway drives into ``out``."""
    n = layer.name
    pool = map_channels(F.max_pool2d(flat, layer.kernel, layer.stride, layer.padding), a[f"{n}.pool_map"])
    pool = pool.unflatten(0, lead)
    mask = sigma(equations.mask_input(_logits(a, n, pool), *_eta_b(a, n, steps)))
    current = equations.mix(mask, conv, pool)
    out[f"mask_mean.{n}"] = mask.mean(dim=(3, 4)).transpose(0, 1).numpy()
    # per-image drives as PlasticFlexLayer defines them (equations.pathway_drive per step, mean over steps;
    # a batch of one image)
    out[f"r_sel.{n}"] = equations.pathway_drive(conv, (3, 4)).mean(0).numpy()
    out[f"r_inv.{n}"] = equations.pathway_drive(pool, (3, 4)).mean(0).numpy()
    return current


def _logits(a: dict[str, torch.Tensor], n: str, pool: torch.Tensor) -> torch.Tensor:
    """:data:`core.equations.LOGITS` of flex layer ``n`` with its folded BN."""
    return equations.flex_logits(pool, a[f"{n}.threshold"], a[f"{n}.logit_scale"].view(-1, 1, 1),
                                 a[f"{n}.logit_shift"].view(-1, 1, 1))


def _eta_b(a: dict[str, torch.Tensor], n: str, steps: int, ticks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``eta`` per tick ``[T K, 1, C, 1, 1]`` and the plastic bias ``b`` ``[C, 1, 1]`` of flex layer ``n``."""
    return a[f"{n}.eta"][:steps].repeat_interleave(ticks, 0)[:, None, :, None, None], a[f"{n}.plastic_bias"][:, None, None]


def _reference_ticks(export: Export, a: dict[str, torch.Tensor], x: torch.Tensor, params: LIFParams, sigma,
                     out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`reference_forward` at ``K = export.ticks`` ticks per step (:mod:`training.ticks`, Brian2's
    biophysical mode with delta synapses); spikes are stored per step (a neuron fires at most once per step).

    ``out["spike_ticks.L"]`` holds the tick of each step's spike within the step (``K`` where none),
    ``[N, T, C, H, W]`` uint8, for a tick-by-tick comparison.
    """
    from training.ticks import first_tick, or_relay, step_sum

    steps, ticks = export.steps, export.ticks
    tick = tick_params(export.model.beta, ticks)
    analog = export.model.encoding == "direct"
    if not analog:
        x = first_tick(x, ticks)
    for layer in export.layers:
        n = layer.name
        window = F.max_pool2d(x.flatten(0, 1), layer.kernel, layer.stride, layer.padding).unflatten(0, x.shape[:2])
        if layer.kind == "pool":
            x = or_relay(window, steps)[0]
            continue
        if analog:  # the image drive is held over each step, exactly as at K = 1
            conv = F.conv2d(x.flatten(0, 1), a[f"{n}.weight"], a[f"{n}.bias"], layer.stride, layer.padding)
            conv = conv.unflatten(0, x.shape[:2])
            held, charge = conv, None
            if layer.kind == "flex":
                held = _flex_current(layer, a, x.flatten(0, 1), conv, x.shape[:2], steps, sigma, out)
        else:
            charge = F.conv2d(x.flatten(0, 1), a[f"{n}.weight"], None, layer.stride, layer.padding)
            charge = charge.unflatten(0, x.shape[:2])
            bias = a[f"{n}.bias"].view(-1, 1, 1)
            held = bias[None, None]
            if layer.kind == "flex":
                fires, seen = or_relay(window, steps)
                fires, seen = (map_channels(p.flatten(0, 1), a[f"{n}.pool_map"]).unflatten(0, p.shape[:2])
                               for p in (fires, seen))
                mask = sigma(equations.mask_input(_logits(a, n, seen), *_eta_b(a, n, steps, ticks)))
                held, charge = mask * bias, equations.mix(mask, charge, fires)
                out[f"mask_mean.{n}"] = step_sum(mask.mean(dim=(3, 4)), steps).transpose(0, 1).numpy() / ticks
                conv_step = step_sum(F.conv2d(x.flatten(0, 1), a[f"{n}.weight"], None, layer.stride,
                                              layer.padding).unflatten(0, x.shape[:2]), steps) + bias
                pool_step = seen.unflatten(0, (steps, ticks))[:, -1]
                out[f"r_sel.{n}"] = equations.pathway_drive(conv_step, (3, 4)).mean(0).numpy()
                out[f"r_inv.{n}"] = equations.pathway_drive(pool_step, (3, 4)).mean(0).numpy()
        analog = False
        x = lif_ticks(held, charge, steps, params, tick, _heaviside)
        per_step = x.unflatten(0, (steps, ticks))
        out[f"spikes.{n}"] = per_step.sum(1).transpose(0, 1).to(torch.uint8).numpy()
        when = torch.where(per_step > 0, torch.arange(ticks, dtype=x.dtype).view(1, -1, *[1] * (x.dim() - 1)),
                           torch.tensor(float(ticks), dtype=x.dtype)).amin(1)
        out[f"spike_ticks.{n}"] = when.transpose(0, 1).to(torch.uint8).numpy()
    scores = F.linear(step_sum(x, steps).flatten(2), a["readout.weight"], a["readout.bias"])
    out["logits"] = scores.mean(0).numpy()
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
                  "encoding": m.encoding.value, "plasticity_rate": m.plasticity_rate,
                  "plasticity_decay": m.plasticity_decay, "num_classes": m.num_classes, "ticks": m.ticks,
                  "downsample": m.downsample.value},
        "physics": physics(m.beta, m.ticks),
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


def physics(beta: float, ticks: int) -> dict:
    """The physical reading of the trained dynamics (DESIGN.md §4, §6): what ``sim/`` simulates by default.

    The membrane constants are :data:`core.equations.PHYSICS_DEFAULTS`; one step lasts
    ``tau_m ln(1/beta)``, a tick ``dt = step / K``; the refractory period is one step; synapses are delta
    synapses (a spike's charge arrives in the tick it is emitted).
    """
    p = dict(equations.PHYSICS_DEFAULTS)
    if not 0.0 < beta < 1.0:  # no finite physical step (only exact mode applies)
        return {**p, "ticks": ticks, "synapse": "delta"}
    step = equations.step_ms(beta, p["tau_m_ms"])
    return {**p, "ticks": ticks, "step_ms": step, "dt_ms": step / ticks, "refractory_ms": step, "synapse": "delta"}


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
