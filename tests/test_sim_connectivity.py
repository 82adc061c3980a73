"""Synapse index arrays against dense references computed by explicit loops."""
import numpy as np
import pytest

from core.equations import channel_map_matrix
from sim.analog import conv2d, max_pool2d
from sim.connectivity import channel_map_connections, conv_connections, dense_matrix, pool_connections


def _loop_conv(x, w, stride, pad):
    """Cross-correlation of one [C, H, W] input by explicit loops over every output and tap."""
    c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((c_out, ho, wo))
    for o in range(c_out):
        for i in range(ho):
            for j in range(wo):
                for c in range(c_in):
                    for ky in range(k):
                        for kx in range(k):
                            y, xx = i * stride - pad + ky, j * stride - pad + kx
                            if 0 <= y < h and 0 <= xx < wd:
                                out[o, i, j] += w[o, c, ky, kx] * x[c, y, xx]
    return out


def _loop_or(x, k, stride, pad):
    c, h, wd = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((c, ho, wo), dtype=bool)
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                for ky in range(k):
                    for kx in range(k):
                        y, xx = i * stride - pad + ky, j * stride - pad + kx
                        if 0 <= y < h and 0 <= xx < wd and x[ch, y, xx]:
                            out[ch, i, j] = True
    return out


GEOMETRIES = [(3, 1, 1, 5), (2, 2, 0, 6), (3, 2, 1, 7), (1, 1, 0, 4)]  # kernel, stride, padding, size


@pytest.mark.parametrize("k, s, p, size", GEOMETRIES)
def test_conv_connectivity_equals_dense_reference(k, s, p, size):
    rng = np.random.default_rng(k * 10 + s)
    w = rng.normal(size=(3, 2, k, k))
    out = (size + 2 * p - k) // s + 1
    conn = conv_connections(w, (size, size), (out, out), s, p)
    n_in, n_out = 2 * size * size, 3 * out * out
    pairs = conn.post * n_in + conn.pre
    assert len(np.unique(pairs)) == len(pairs), "duplicate synapses"
    matrix = dense_matrix(conn, n_in, n_out)
    # column i of the dense matrix is the response to a unit impulse at input neuron i (NCHW order)
    reference = np.stack([_loop_conv(np.eye(n_in)[i].reshape(2, size, size), w, s, p).ravel() for i in range(n_in)], 1)
    np.testing.assert_allclose(matrix, reference, rtol=0, atol=1e-15)
    # and the numpy conv used for the analog first layer agrees with the same loops
    x = rng.normal(size=(1, 2, size, size))
    np.testing.assert_allclose(conv2d(x, w, np.zeros(3), s, p)[0], _loop_conv(x[0], w, s, p), atol=1e-12)


def test_conv_has_no_kernel_flip():
    """A kernel with a single tap at (0, 0) reads the input up-left of each output (cross-correlation)."""
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 0, 0] = 1.0
    conn = conv_connections(w, (4, 4), (4, 4), 1, 1)
    nonzero = conn.weight != 0
    # output (1, 1) reads input (0, 0); outputs in row or column 0 read the padding there
    assert set(zip(conn.pre[nonzero].tolist(), conn.post[nonzero].tolist())) == {(y * 4 + x, (y + 1) * 4 + x + 1)
                                                              for y in range(3) for x in range(3)}


@pytest.mark.parametrize("k, s, p, size", GEOMETRIES)
def test_pool_connections_compute_or_of_window(k, s, p, size):
    rng = np.random.default_rng(size)
    spikes = rng.random((3, size, size)) < 0.2
    out = (size + 2 * p - k) // s + 1
    conn = pool_connections(3, (size, size), (out, out), k, s, p)
    counts = dense_matrix(conn, spikes.size, 3 * out * out) @ spikes.ravel()
    np.testing.assert_array_equal((counts > 0).reshape(3, out, out), _loop_or(spikes, k, s, p))
    # for binary spikes the OR is the max-pool (padding is -inf, never the max)
    np.testing.assert_array_equal((counts > 0).reshape(3, out, out),
                                  max_pool2d(spikes[None].astype(float), k, s, p)[0] > 0)


@pytest.mark.parametrize("c_in, c_out", [(4, 4), (4, 6), (6, 3)])
def test_channel_map_connections_apply_the_map_at_every_position(c_in, c_out):
    pool_map = channel_map_matrix(c_in, c_out)
    x = np.random.default_rng(0).random((c_in, 3, 5))
    conn = channel_map_connections(pool_map, (3, 5))
    y = dense_matrix(conn, x.size, c_out * 15) @ x.ravel()
    np.testing.assert_allclose(y.reshape(c_out, 3, 5), np.einsum("oc,chw->ohw", pool_map, x), atol=1e-15)
