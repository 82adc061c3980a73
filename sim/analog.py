"""The analog first layer: its conv and pool paths computed from the input image.

With direct encoding the first layer receives the normalised image as a
constant current, so its two pathways are constant over an image's T steps.
A max-pool of analog values has no synaptic equivalent (synapses sum), so
both pathways of the first layer are computed here in float64 numpy, once
per image, and enter the Brian2 network as per-image currents
(``TimedArray``); the mask, the mixing and the neurons run in Brian2 as in
every other layer. Formulas and operation order follow
:func:`training.export.reference_forward`.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from core import equations
from core.export_format import Export, LayerSpec


def normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 3, H, W]`` -> float64 ``(pixel / 255 - mean) / std``."""
    return equations.normalise_input(images.astype(np.float64) / 255.0, mean.reshape(1, -1, 1, 1),
                                     std.reshape(1, -1, 1, 1))


def _windows(x: np.ndarray, kernel: int, stride: int, padding: int, fill: float) -> np.ndarray:
    """``[N, C, H', W', k, k]`` view of the padded input's windows."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=fill)
    return sliding_window_view(padded, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Cross-correlation plus bias, ``[N, C_in, H, W] -> [N, C_out, H', W']``."""
    win = _windows(x, weight.shape[-1], stride, padding, 0.0)
    return np.einsum("nchwij,ocij->nohw", win, weight, optimize=True) + bias.reshape(1, -1, 1, 1)


def max_pool2d(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Max-pool with ``-inf`` padding (PyTorch's convention)."""
    return _windows(x, kernel, stride, padding, -np.inf).max(axis=(-2, -1))


def first_layer_drives(export: Export, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Conv-path and pool-path drives of the first layer, ``[N, C*H'*W']`` each (NCHW order).

    The pool drive is ``None`` for a plain conv layer (baseline VGG).
    """
    layer: LayerSpec = export.layers[0]
    a = export.arrays
    x = normalise(images, a["input.mean"], a["input.std"])
    conv = conv2d(x, a[f"{layer.name}.weight"], a[f"{layer.name}.bias"], layer.stride, layer.padding)
    if layer.kind != "flex":
        return conv.reshape(len(x), -1), None
    pool = max_pool2d(x, layer.kernel, layer.stride, layer.padding)
    if equations.maps_channels(layer.c_in, layer.c_out):  # the identity map is skipped, as in PyTorch
        pool = np.einsum("oc,nchw->nohw", a[f"{layer.name}.pool_map"], pool)
    return conv.reshape(len(x), -1), pool.reshape(len(x), -1)
