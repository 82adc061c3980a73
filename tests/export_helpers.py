"""Tiny random exports for the simulator tests (a few thousand neurons, seconds to simulate).

The arrays are drawn at random with scales that make every layer fire at a
moderate rate; the reference outputs come from the same float64 PyTorch
forward that ``bioflexnet export`` uses (:func:`training.export.reference_forward`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core import equations
from core.export_format import Export, pack_spikes, params_only, read_export, write_export
from training.export import reference_forward


def _layers(flex: bool) -> list[dict]:
    def spec(name, kind, c_in, c_out, size, k, s, p):
        new = (size + 2 * p - k) // s + 1
        return {"name": name, "kind": kind, "c_in": c_in, "c_out": c_out, "in_size": [size, size],
                "out_size": [new, new], "kernel": k, "stride": s, "padding": p}

    if flex:  # 3x3 flex, 2x2 stride-2 flex down-sampling, 3x3 flex with a non-identity channel map
        return [spec("conv1", "flex", 3, 4, 32, 3, 1, 1), spec("down1", "flex", 4, 4, 32, 2, 2, 0),
                spec("conv2", "flex", 4, 6, 16, 3, 1, 1)]
    return [spec("conv1", "conv", 3, 4, 32, 3, 1, 1), spec("down1", "pool", 4, 4, 32, 2, 2, 0),
            spec("conv2", "conv", 4, 6, 16, 3, 1, 1), spec("down2", "pool", 6, 6, 16, 2, 2, 0)]


def random_export(path: Path, *, flex: bool = True, steps: int = 2, n_images: int = 3, beta: float = 0.5,
                  reset: str = "subtract", sigma: str = "hard", plasticity_rate: float = 0.05, encoding: str = "direct",
                  seed: int = 0, plasticity_decay: float = 0.01, ticks: int = 1, refractory: str = "step") -> Export:
    """Write a random export to ``path`` and return it read back (validated)."""
    rng = np.random.default_rng(seed)
    layers = _layers(flex)
    last = layers[-1]
    features = last["c_out"] * last["out_size"][0] ** 2
    header = {
        "model": {"arch": "tiny", "flex": flex, "mode": "stbp", "steps": steps, "beta": beta, "theta": 1.0,
                  "reset": reset, "mask_sigma": sigma, "encoding": encoding, "plasticity_rate": plasticity_rate,
                  "plasticity_decay": plasticity_decay, "num_classes": 10, **({"ticks": ticks} if ticks > 1 else {}),
                  "refractory": refractory},
        "layers": layers, "readout": {"source": last["name"], "features": features},
        "reference": {"split": "random", "selection": "random images", "dtype": "float64", "plasticity": "off",
                      "input_seed": seed},
        "run": {"run_dir": "", "config": {"seed": seed}},
    }
    arrays = {"input.mean": np.array([0.49, 0.48, 0.45]), "input.std": np.array([0.25, 0.24, 0.26]),
              "readout.weight": rng.normal(0, 0.3, (10, features)), "readout.bias": rng.normal(0, 0.1, 10)}
    for i, d in enumerate(layers):
        if d["kind"] == "pool":
            continue
        n, c_in, c_out, k = d["name"], d["c_in"], d["c_out"], d["kernel"]
        fan_in = c_in * k * k
        # the analog first layer sees unit-variance pixels, later layers sparse binary spikes
        scale = 1.2 / np.sqrt(fan_in) if i == 0 else 1.5 / np.sqrt(0.25 * fan_in)
        arrays[f"{n}.weight"] = rng.normal(0, scale, (c_out, c_in, k, k))
        arrays[f"{n}.bias"] = rng.uniform(0.1, 0.6, c_out)
        if d["kind"] == "flex":
            arrays[f"{n}.pool_map"] = equations.channel_map_matrix(c_in, c_out)
            arrays[f"{n}.threshold"] = rng.uniform(-1, 1, (c_out, *d["out_size"]))
            arrays[f"{n}.logit_scale"] = rng.uniform(0.5, 2.0, c_out)
            arrays[f"{n}.logit_shift"] = rng.uniform(-1, 1, c_out)
            arrays[f"{n}.eta"] = rng.uniform(-2, 2, (steps, c_out))
            arrays[f"{n}.plastic_bias"] = rng.uniform(-0.5, 0.5, c_out)
    images = rng.integers(0, 256, (n_images, 3, 32, 32), dtype=np.uint8)
    ref = reference_forward(params_only(header, arrays), images)
    arrays.update({"ref.images": images, "ref.labels": rng.integers(0, 10, n_images),
                   "ref.logits": ref.pop("logits")})
    arrays["ref.model_logits"] = arrays["ref.logits"].copy()  # no float32 model behind a random export
    for key, value in ref.items():
        if key.startswith("spike_ticks."):
            continue
        arrays[f"ref.{key}"] = pack_spikes(value) if "spikes" in key else value
    write_export(path, header, arrays)
    return read_export(path)
