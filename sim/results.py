"""Fidelity figures and the ``sim.nc`` Dataset of a simulation.

Spike agreement of a layer is the fraction of (image, step, neuron) entries
where Brian2 and the export's float64 PyTorch reference agree on whether the
neuron spiked; class agreement is the fraction of images with the same
arg-max of the read-out. Both are also given against the trained float32
model where that applies (its logits are stored in the export).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from core.export_format import Export
from core.results import provenance
from sim.simulate import SimOptions, SimResult


def spike_agreement(sim: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of equal entries of two spike arrays of the same shape."""
    if sim.shape != ref.shape:
        raise ValueError(f"spike arrays differ in shape: {sim.shape} vs {ref.shape}.")
    return float((sim == ref).mean())


def class_agreement(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    """Fraction of rows with the same arg-max."""
    return float((logits.argmax(1) == ref_logits.argmax(1)).mean())


def _var(dims, values, long_name: str, units: str = "1", **attrs) -> tuple:
    return dims, values, {"long_name": long_name, "units": units, **attrs}


def _layer_summary(result: SimResult, export: Export, n: int) -> dict:
    names = [la.name for la in export.neuron_layers]
    agree, mismatch, rate, ref_rate, mask_err = [], [], [], [], []
    for name in names:
        ref = export.reference_spikes(name, n)
        sim = result.spikes[name]
        agree.append(spike_agreement(sim, ref))
        mismatch.append(int((sim != ref).sum()))
        rate.append(float(sim.mean()))
        ref_rate.append(float(ref.mean()))
        if name in result.masks:  # average the ticks of each step, compare with PyTorch's mask
            mbar = result.masks[name]["mbar"]
            per_step = mbar.reshape(n, export.steps, -1, mbar.shape[-1]).mean(axis=2)
            mask_err.append(float(np.abs(per_step - export.arrays[f"ref.mask_mean.{name}"][:n]).max()))
        else:
            mask_err.append(np.nan)
    return {
        "spike_agreement": _var("layer", np.array(agree), "fraction of (image, step, neuron) with the same spike "
                                "in Brian2 and the float64 PyTorch reference"),
        "spike_mismatches": _var("layer", np.array(mismatch), "number of (image, step, neuron) that differ"),
        "firing_rate": _var("layer", np.array(rate), "Brian2 spikes per neuron and step"),
        "reference_firing_rate": _var("layer", np.array(ref_rate), "PyTorch spikes per neuron and step"),
        "spike_latency": _var("layer", np.array([result.latency[n] for n in names]) * 1e3,
                              "mean time of the layer's spikes after image onset", "ms"),
        "mask_max_abs_error": _var("layer", np.array(mask_err), "max over images, steps and channels of "
                                   "|channel-mean mask (Brian2, step average) - PyTorch|; NaN for non-flex layers"),
    }


def _per_layer_arrays(result: SimResult, export: Export, n: int, keep_spikes: bool) -> tuple[dict, dict]:
    data, coords = {}, {}
    for layer in export.neuron_layers:
        name = layer.name
        ch, y, x = f"{name}_channel", f"{name}_y", f"{name}_x"
        coords.update({ch: np.arange(layer.c_out), y: np.arange(layer.out_size[0]), x: np.arange(layer.out_size[1])})
        if keep_spikes:
            data[f"spikes_{name}"] = _var(("image", "step", ch, y, x), result.spikes[name].astype(np.int8),
                                          f"Brian2 spikes of {name} (1: the neuron fired in that step)")
        if name not in result.masks:
            continue
        m = result.masks[name]
        dims = ("image", "tick", ch)
        data[f"mask_{name}"] = _var(dims, m["mbar"], f"mask m of {name} (conv-path share), mean over positions")
        data[f"plastic_bias_{name}"] = _var(dims, m["b"], f"plastic mask bias b of {name}")
        data[f"r_sel_{name}"] = _var(dims, m["rs"], f"conv-path drive of {name}: mean relu(Ic) / rms(Ic) over positions")
        data[f"r_inv_{name}"] = _var(dims, m["ri"], f"pool-path drive of {name}: mean relu(Ip) / rms(Ip) over positions")
        data[f"reference_mask_{name}"] = _var(("image", "step", ch), export.arrays[f"ref.mask_mean.{name}"][:n],
                                              f"PyTorch mask of {name}, mean over positions")
    return data, coords


def to_dataset(result: SimResult, export: Export, options: SimOptions, keep_spikes: bool = True) -> xr.Dataset:
    """The ``sim.nc`` Dataset: fidelity per layer and class, accuracy, spikes, mask trajectories, provenance."""
    n, a = options.n_images, export.arrays
    labels, ref_logits, model_logits = a["ref.labels"][:n], a["ref.logits"][:n], a["ref.model_logits"][:n]
    timing = result.timing
    data = {
        "label": _var("image", labels, "CIFAR-10 test label"),
        "logits": _var(("image", "class"), result.logits, "Brian2 read-out: bias + mean over steps of W s[t]"),
        "reference_logits": _var(("image", "class"), ref_logits, "float64 PyTorch forward of the export"),
        "model_logits": _var(("image", "class"), model_logits, "trained float32 PyTorch model"),
        "class_agreement": _var((), class_agreement(result.logits, ref_logits),
                                "fraction of images with the same class in Brian2 and the float64 PyTorch reference"),
        "class_agreement_model": _var((), class_agreement(result.logits, model_logits),
                                      "fraction of images with the same class in Brian2 and the float32 model"),
        "accuracy": _var((), float((result.logits.argmax(1) == labels).mean()), "Brian2 top-1 accuracy"),
        "reference_accuracy": _var((), float((ref_logits.argmax(1) == labels).mean()), "PyTorch top-1 accuracy"),
        **_layer_summary(result, export, n),
    }
    per_layer, layer_coords = _per_layer_arrays(result, export, n, keep_spikes)
    data.update(per_layer)
    ticks_per_image = export.steps * timing.ticks
    coords = {
        "image": ("image", np.arange(n), {"long_name": "index of the export's reference image "
                                                     "(first N of the CIFAR-10 test split)"}),
        "step": ("step", np.arange(export.steps), {"long_name": "discrete (PyTorch) time step"}),
        "tick": ("tick", np.arange(ticks_per_image), {"long_name": "simulation tick within an image"}),
        "tick_time": ("tick", np.arange(ticks_per_image) * float(timing.dt) * 1e3,
                      {"long_name": "time since image onset", "units": "ms"}),
        "class": ("class", np.arange(a["readout.bias"].shape[0]), {"long_name": "class index"}),
        "layer": ("layer", [la.name for la in export.neuron_layers], {"long_name": "neuron layer"}),
        **layer_coords,
    }
    ds = xr.Dataset(data, coords=coords, attrs=_attrs(result, export, options))
    for name in ds.data_vars:
        if name.startswith("spikes_"):
            ds[name].encoding.update({"zlib": True, "complevel": 4})
    return ds


def options_key(options: SimOptions) -> str:
    """All options of a simulation as one string (stored in ``sim.nc``; equal strings, equal simulations)."""
    return str({k: str(v) for k, v in dataclasses.asdict(options).items()})


def _attrs(result: SimResult, export: Export, options: SimOptions) -> dict:
    run = export.header.run
    attrs = provenance(dict(run.config) or None, run.seed)
    timing = result.timing
    attrs.update({
        "mode": options.mode, "device": options.device, "plasticity": str(options.plasticity),
        "n_images": options.n_images, "ticks": timing.ticks, "dt_ms": float(timing.dt) * 1e3,
        "trained_ticks": export.ticks,
        "export_path": str(export.path), "export_format_version": export.header.format_version,
        "source_run_dir": run.run_dir, "variant": str(export.model.variant),
        # lambda and delta of the mask plasticity, named as in the config (model.plasticity_rate / _decay)
        "plasticity_rate": export.model.plasticity_rate, "plasticity_decay": export.model.plasticity_decay,
        "options": options_key(options),
        **{f"timing_{k}": float(v) for k, v in result.timings.items()},
    })
    if timing.bio is not None:
        b = timing.bio
        attrs.update({"synapse": timing.synapse, "step_ms": float(b.step) * 1e3, "tau_m_ms": float(b.tau_m) * 1e3,
                      "v_rest_mv": float(b.v_rest) * 1e3, "v_threshold_mv": float(b.v_threshold) * 1e3,
                      "refractory_ms": float(b.refractory) * 1e3, "mv_per_unit": float(b.unit) * 1e3})
    return attrs
