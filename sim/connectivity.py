"""Synapse index arrays for convolutions, max-pool windows and the pool path's channel map.

Neurons are numbered in PyTorch's NCHW order without the batch axis:
``index = (c * H + y) * W + x``. A convolution is a cross-correlation (no
kernel flip): post-synaptic unit ``(co, oy, ox)`` receives from
``(ci, oy*stride - pad + ky, ox*stride - pad + kx)`` with weight
``W[co, ci, ky, kx]``; taps that fall into the zero padding get no synapse.
Synapses are listed post-major, then ``(ci, ky, kx)`` (the order of a
direct convolution's dot product). Everything is built by broadcasting
index grids; there is no Python loop over synapses.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Connections(NamedTuple):
    pre: np.ndarray  # int64 index of the pre-synaptic neuron
    post: np.ndarray  # int64 index of the post-synaptic neuron
    weight: np.ndarray  # float64 weight of each synapse


def _window_grid(c_out: int, out_size: tuple[int, int], c_in: int, in_size: tuple[int, int], kernel: int,
                 stride: int, padding: int, depthwise: bool):
    """Broadcast index grids ``(post, pre, valid, co, ci, ky, kx)`` over ``[C_out, H', W', C_in?, k, k]``."""
    ho, wo = out_size
    h, w = in_size
    co = np.arange(c_out).reshape(-1, 1, 1, 1, 1, 1)
    oy = np.arange(ho).reshape(1, -1, 1, 1, 1, 1)
    ox = np.arange(wo).reshape(1, 1, -1, 1, 1, 1)
    ci = co if depthwise else np.arange(c_in).reshape(1, 1, 1, -1, 1, 1)
    ky = np.arange(kernel).reshape(1, 1, 1, 1, -1, 1)
    kx = np.arange(kernel).reshape(1, 1, 1, 1, 1, -1)
    iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
    shape = np.broadcast_shapes(co.shape, oy.shape, ox.shape, ci.shape, ky.shape, kx.shape)
    valid = np.broadcast_to((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w), shape)
    post = np.broadcast_to((co * ho + oy) * wo + ox, shape)
    pre = np.broadcast_to((ci * h + iy) * w + ix, shape)
    return post, pre, valid, np.broadcast_to(co, shape), np.broadcast_to(ci, shape), ky, kx, shape


def conv_connections(weight: np.ndarray, in_size: tuple[int, int], out_size: tuple[int, int], stride: int,
                     padding: int) -> Connections:
    """Synapses of a 2-d convolution with ``weight [C_out, C_in, k, k]``."""
    c_out, c_in, k, _ = weight.shape
    post, pre, valid, co, ci, ky, kx, shape = _window_grid(c_out, out_size, c_in, in_size, k, stride, padding, False)
    w = weight[co, ci, np.broadcast_to(ky, shape), np.broadcast_to(kx, shape)]
    return Connections(pre[valid].astype(np.int64), post[valid].astype(np.int64), w[valid].astype(np.float64))


def pool_connections(channels: int, in_size: tuple[int, int], out_size: tuple[int, int], kernel: int, stride: int,
                     padding: int) -> Connections:
    """Synapses from every unit of a max-pool window to the window's output unit (weight 1).

    Padding is ``-inf`` in PyTorch's max-pool, so padded taps never win and
    get no synapse; for binary spikes the max over the window is the OR.
    """
    post, pre, valid, *_ = _window_grid(channels, out_size, channels, in_size, kernel, stride, padding, True)
    n = int(valid.sum())
    return Connections(pre[valid].astype(np.int64), post[valid].astype(np.int64), np.ones(n))


def channel_map_connections(pool_map: np.ndarray, size: tuple[int, int]) -> Connections:
    """Synapses of the pool path's channel map ``P [C_out, C_in]`` at every position (non-zero entries only)."""
    co, ci = np.nonzero(pool_map)
    positions = np.arange(size[0] * size[1])
    n_pos = positions.size
    post = (co[:, None] * n_pos + positions[None, :]).ravel()
    pre = (ci[:, None] * n_pos + positions[None, :]).ravel()
    weight = np.repeat(pool_map[co, ci], n_pos)
    return Connections(pre.astype(np.int64), post.astype(np.int64), weight.astype(np.float64))


def dense_matrix(conn: Connections, n_pre: int, n_post: int) -> np.ndarray:
    """``[n_post, n_pre]`` matrix with the summed weights (for tests against dense references)."""
    matrix = np.zeros((n_post, n_pre))
    np.add.at(matrix, (conn.post, conn.pre), conn.weight)
    return matrix
