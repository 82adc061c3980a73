"""Sparsity and energy: firing rates and synaptic operations against hand counts."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.settings import SparsitySettings
from analysis.sparsity import AC_PJ, MAC_PJ, fan_out, firing_rate, sparsity, stage_ops
from core.config import make_config
from training.data import load_split
from training.flex import PlasticFlexLayer
from training.models import ConvStage, build_model
from training.runs import load_model

SMALL = SparsitySettings(n_images=40, batch_size=16, raster_images=3, raster_neurons=20)


def test_firing_rates_of_a_hand_built_spike_tensor():
    spikes = torch.zeros(3, 2, 2, 2, 2)  # [T, B, C, H, W]: 16 neurons x batch per step
    spikes[0, 0, 0, 0, 0] = 1  # step 0: 1 spike
    spikes[1, :, 1] = 1  # step 1: a whole channel of both images, 2 * 4 = 8 spikes
    spikes[2] = 1  # step 2: everything
    torch.testing.assert_close(firing_rate(spikes), torch.tensor([1 / 16, 8 / 16, 1.0]))


def test_fan_out_hand_count():
    # 3x3, stride 1, padding 1 on 4x4: a corner is read by 4 outputs, an edge by 6, the inside by 9
    expected = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float32)
    torch.testing.assert_close(fan_out(3, 1, 1, 4, 4), expected)
    torch.testing.assert_close(fan_out(2, 2, 0, 4, 4), torch.ones(4, 4))  # non-overlapping windows
    assert fan_out(3, 1, 1, 32, 32).sum() == (3 * 32 - 2) ** 2  # every (input, output) pair of 1-D taps: 3n - 2


def test_conv_stage_ops_hand_count():
    stage = ConvStage(1, 2)  # 3x3 conv, 1 -> 2 channels
    x = torch.zeros(2, 1, 1, 4, 4)  # [T, B, C, H, W]
    x[0, 0, 0, 0, 0] = 1  # a corner spike: 4 output positions x 2 channels
    x[0, 0, 0, 0, 1] = 1  # an edge spike: 6 x 2
    x[1, 0, 0, 2, 2] = 1  # an inner spike: 9 x 2
    assert stage_ops(stage, x, analog=False, steps=2) == {"weights": 2 * (4 + 6 + 9), "channel_map": 0, "mask": 0}
    # analog: every input multiplies, zero or not: T' * B * C_in * (sum of fan-outs = 10 * 10) * C_out
    assert stage_ops(stage, x, analog=True, steps=2)["weights"] == 2 * 1 * 1 * 100 * 2


def test_flex_stage_ops_hand_count():
    stage = PlasticFlexLayer(2, 4, 3, 1, 1, (4, 4), steps=2)
    # channel map 2 -> 4 (linear interpolation): rows [1, 0], [2/3, 1/3], [1/3, 2/3], [0, 1]: each input
    # channel feeds 3 output channels
    assert (stage.channel_map != 0).sum(0).tolist() == [3, 3]
    x = torch.zeros(2, 1, 2, 4, 4)
    x[0, 0, 0, 0, 0] = 1  # one corner spike in channel 0 at step 0
    ops = stage_ops(stage, x, analog=False, steps=2)
    assert ops["weights"] == 4 * 4  # 4 output positions x 4 output channels
    assert ops["channel_map"] == 4 * 3  # the max-pool spreads the spike to 4 positions, each feeds 3 channels
    assert ops["mask"] == 2 * 2 * 1 * (4 * 4 * 4)  # 2 MACs x 2 steps x 1 image x 64 output neurons


def test_spike_driven_acs_equal_the_active_synapses_of_a_convolution():
    """An independent route: summing, over outputs, the active inputs in each receptive field."""
    torch.manual_seed(0)
    stage = ConvStage(3, 5)
    x = (torch.rand(2, 4, 3, 8, 8) < 0.3).float()
    active = F.conv2d(x.flatten(0, 1), torch.ones(5, 3, 3, 3), padding=1).sum()
    assert stage_ops(stage, x, analog=False, steps=2)["weights"] == pytest.approx(float(active))


def test_ann_macs_of_a_tiny_vgg_match_a_hand_count(cifar_dir):
    # classic vgg5 at width 1/8: conv 3->8 (32x32), pool, 8->16 (16x16), pool, 16->32 (8x8), pool, linear 512->10
    model = build_model(make_config("smoke", mode="ann", flex=False, overrides=["model.downsample=maxpool"]).model)
    ds = sparsity(model.eval(), load_split("test", cifar_dir), SMALL)
    hand = {"conv1": 3 * 8 * 94 ** 2, "conv2": 8 * 16 * 46 ** 2, "conv3": 16 * 32 * 22 ** 2, "classifier": 32 * 16 * 10}
    for layer, macs in hand.items():
        assert float(ds.ann_macs.sel(layer=layer).sum()) == macs
        assert float(ds.macs.sel(layer=layer).sum()) == macs  # an ANN computes densely
    assert float(ds.total_acs) == 0 and float(ds.ann_total_macs) == sum(hand.values())
    assert float(ds.total_energy) == pytest.approx(MAC_PJ * sum(hand.values()))
    # the twin: a 2x2 stride-2 conv C->C after each 3x3 stage; every input feeds exactly one output position
    twin = build_model(make_config("smoke", mode="ann", flex=False).model).eval()
    ds = sparsity(twin, load_split("test", cifar_dir), SMALL)
    hand.update({"down1": 8 * 8 * 32 ** 2, "down2": 16 * 16 * 16 ** 2, "down3": 32 * 32 * 8 ** 2})
    for layer, macs in hand.items():
        assert float(ds.ann_macs.sel(layer=layer).sum()) == macs, layer


def test_snn_sparsity_dataset(analysis_runs, cifar_dir, tmp_path):
    model, _ = load_model(analysis_runs["vgg-stbp"])
    ds = sparsity(model, load_split("test", cifar_dir), SMALL)
    assert ds.firing_rate.dims == ("layer", "time") and ds.sizes["time"] == 2
    assert list(ds.layer.values) == ["conv1", "down1", "conv2", "down2", "conv3", "down3", "classifier"]
    rates = ds.firing_rate.values[:-1]
    assert np.all((rates > 0) & (rates < 1)) and np.isnan(ds.firing_rate.values[-1]).all()
    # the first layer sees the analog image (MACs, counted once); every later layer is spike-driven (ACs)
    assert float(ds.acs.sel(layer="conv1").sum()) == 0 and float(ds.macs.sel(layer="conv1").sum()) > 0
    assert float(ds.macs.sel(layer=["down1", "conv2", "down2", "conv3", "down3", "classifier"]).sum()) == 0
    assert np.all(ds.acs.sel(layer=["down1", "conv2", "down2", "conv3", "down3"], path="weights") > 0)
    expected = AC_PJ * float(ds.total_acs) + MAC_PJ * float(ds.total_macs)
    assert float(ds.total_energy) == pytest.approx(expected) and "ESTIMATE" in ds.total_energy.attrs["long_name"]
    assert ds.total_energy.attrs["units"] == "pJ" and float(ds.total_energy) < float(ds.ann_energy)
    raster = ds.raster.isel(layer=slice(0, 3)).values
    assert raster.shape == (3, 3, 20, 2) and set(np.unique(raster)) <= {0.0, 1.0}
    # the raster holds the actual spikes of the sampled neurons of the first images
    first = load_split("test", cifar_dir).images[int(ds.raster_sample[0])][None].float() / 255
    with torch.no_grad():
        conv1 = model.run(first).layers[0].output[:, 0].flatten(1)  # [T, neurons]
    idx = torch.from_numpy(ds.neuron_index.sel(layer="conv1").values)
    np.testing.assert_array_equal(ds.raster.sel(layer="conv1").values[0], conv1[:, idx].T.numpy())
    n_spikes = float(ds.spikes_per_image.sel(layer="conv1"))
    assert n_spikes == pytest.approx(float(ds.firing_rate.sel(layer="conv1").sum()) * int(ds.neurons.sel(layer="conv1")))


def test_flex_model_counts_every_path(cifar_dir):
    torch.manual_seed(0)
    model = build_model(make_config("smoke", mode="stbp", flex=True).model).eval()
    ds = sparsity(model, load_split("test", cifar_dir), SMALL)
    assert np.all(ds.macs.sel(path="mask").values[:-1] > 0)  # every flex layer mixes its paths
    assert float(ds.macs.sel(layer="conv1", path="channel_map")) > 0  # 3 -> 8 channels: analog map on the image
    assert float(ds.acs.sel(layer="down1", path="channel_map")) == 0  # 8 -> 8: the identity map is wiring
    ratio = ds.conv_ratio.values[:-1]
    assert np.all((ratio > 0) & (ratio < 1))
