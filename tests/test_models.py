"""Model assembly: shapes, layer lists, normalisation inside the model, modes."""
import pytest
import torch
from torch import nn

from core.config import Arch, Downsample, Encoding, MaskMode, Mode, ModelConfig
from training.flex import PlasticFlexLayer
from training.models import VGG_STAGES, ConvStage, build_model, parameter_count


@pytest.mark.parametrize("arch", list(Arch))
@pytest.mark.parametrize("flex", [False, True])
def test_flex_and_its_twin_have_neurons_in_the_same_places(arch, flex):
    model = build_model(ModelConfig(arch=arch, flex=flex, width=0.0625, mode=Mode.STBP, time_steps=2))
    stages = VGG_STAGES[arch.value]
    assert len(model.names_with_neurons()) == len(stages)
    assert len(model.flex_layers()) == (len(stages) if flex else 0)
    out = model.run(torch.rand(3, 3, 32, 32))
    assert out.logits.shape == (3, 10)
    assert [t.name for t in out.layers] == model.names_with_neurons()
    for t in out.layers:
        assert t.output.shape[0] == 2 and set(t.output.unique().tolist()) <= {0.0, 1.0}


def test_width_multiplier_scales_channels():
    m = build_model(ModelConfig(arch=Arch.VGG11, width=0.25, flex=False))
    assert m.stages[0].conv.out_channels == 16 and m.classifier.in_features == 128


def test_ann_mode_is_one_relu_step():
    m = build_model(ModelConfig(arch=Arch.VGG5, mode=Mode.ANN, width=0.125, time_steps=10)).eval()
    out = m.run(torch.rand(2, 3, 32, 32))
    assert all(t.output.shape[0] == 1 for t in out.layers)
    assert all(m.flex_layers()[n].eta.shape[0] == 1 for n in m.flex_layers())


def test_normalisation_is_inside_the_model():
    m = build_model(ModelConfig(arch=Arch.VGG5, width=0.125))
    x = torch.full((1, 3, 32, 32), 0.5)
    enc = m.encode(x)
    expected = (0.5 - torch.tensor([0.4914, 0.4822, 0.4465])) / torch.tensor([0.2470, 0.2435, 0.2616])
    torch.testing.assert_close(enc[0, 0, :, 0, 0], expected)


def test_poisson_encoding_gives_spikes_with_pixel_rates():
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch=Arch.VGG5, width=0.125, encoding=Encoding.POISSON, time_steps=400))
    x = torch.rand(1, 3, 4, 4)
    enc = m.encode(x)
    assert set(enc.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(enc.mean(0), x, atol=0.1, rtol=0)


def test_bad_input_shape_is_explained():
    m = build_model(ModelConfig(arch=Arch.VGG5, width=0.125))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m.run(torch.rand(3, 32, 32))


def test_twin_stage_has_the_flex_stage_conv_path():
    """Same names, kernels, strides, channels; only the pool path and mask differ."""
    cfg = ModelConfig(arch=Arch.VGG11, width=0.125, time_steps=2)
    flex, twin = build_model(cfg), build_model(ModelConfig(**{**cfg.__dict__, "flex": False}))
    assert flex.names == twin.names and flex.names_with_neurons() == twin.names_with_neurons()
    for f, t in zip(flex.stages, twin.stages):
        assert isinstance(f, PlasticFlexLayer) and isinstance(t, ConvStage)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding"):
            assert getattr(f.conv, attr) == getattr(t.conv, attr)
    # the parameters FLEX adds are exactly its mask's: threshold, logit BN and eta
    extra = sum(p.numel() for n, p in flex.named_parameters() if n.split(".")[-2:][0] in ("logit_bn",)
                or n.endswith((".threshold", ".eta")))
    assert parameter_count(flex) - parameter_count(twin) == extra


def test_classic_maxpool_baseline_and_ablations():
    classic = build_model(ModelConfig(arch=Arch.VGG5, width=0.125, flex=False, downsample=Downsample.MAXPOOL))
    assert sum(isinstance(s, nn.MaxPool2d) for s in classic.stages) == 3
    assert classic.names_with_neurons() == ["conv1", "conv2", "conv3"]
    no_down = build_model(ModelConfig(arch=Arch.VGG5, width=0.125, down_neurons=False))
    assert no_down.names_with_neurons() == ["conv1", "conv2", "conv3"] and len(no_down.flex_layers()) == 6
    down_only = build_model(ModelConfig(arch=Arch.VGG5, width=0.125, flex_3x3=False))
    assert list(down_only.flex_layers()) == ["down1", "down2", "down3"]
    conv_only = build_model(ModelConfig(arch=Arch.VGG5, width=0.125, mask_mode=MaskMode.CONV_ONLY))
    for model in (classic, no_down, down_only, conv_only):
        assert model.run(torch.rand(2, 3, 32, 32)).logits.shape == (2, 10)
    with pytest.raises(ValueError, match="downsample"):
        ModelConfig(flex=True, downsample=Downsample.MAXPOOL)
