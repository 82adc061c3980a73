"""Model assembly: shapes, layer lists, normalisation inside the model, modes."""
import pytest
import torch

from training.config import Arch, Encoding, Mode, ModelConfig
from training.models import VGG_STAGES, build_model


@pytest.mark.parametrize("arch", list(Arch))
@pytest.mark.parametrize("flex", [False, True])
def test_every_stage_becomes_a_neuron_layer_when_flex(arch, flex):
    model = build_model(ModelConfig(arch=arch, flex=flex, width=0.0625, mode=Mode.STBP, time_steps=2))
    stages = VGG_STAGES[arch.value]
    n_conv = sum(1 for s in stages if s != "M")
    assert len(model.names_with_neurons()) == (len(stages) if flex else n_conv)
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
