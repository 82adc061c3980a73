"""Export: BN folding, the float64 reference equals the model, and malformed files are refused clearly."""
import json

import numpy as np
import pytest
import torch
from export_helpers import random_export

from core.config import make_config
from core.export_format import FORMAT_VERSION, ExportError, read_export
from training.export import build_export, fold_conv
from training.models import SpikingVGG


def _random_model(flex: bool, mode: str = "stbp", seed: int = 0, encoding: str = "direct"):
    """A VGG5 of width 1/16 with randomised BN statistics and mask parameters (not a trained net)."""
    cfg = make_config("smoke", flex=flex, mode=mode, overrides=["model.width=0.0625", "model.beta=0.7",
                                                               f"model.encoding={encoding}"])
    torch.manual_seed(seed)
    model = SpikingVGG(cfg.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3, generator=gen)
                mod.running_var.uniform_(0.3, 1.5, generator=gen)
                mod.weight.uniform_(0.8, 2.0, generator=gen)
                mod.bias.uniform_(0.0, 0.5, generator=gen)
        for layer in model.flex_layers().values():
            layer.threshold.uniform_(-1, 1, generator=gen)
            layer.eta.uniform_(-2, 2, generator=gen)
            layer.plastic_bias.uniform_(-0.5, 0.5, generator=gen)
    return model.eval(), cfg


def test_fold_conv_equals_conv_then_batchnorm():
    model, _ = _random_model(flex=False)
    stage = model.stages[0]
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    weight, bias = fold_conv(stage.conv, stage.bn)
    folded = torch.nn.functional.conv2d(x, torch.from_numpy(weight), torch.from_numpy(bias), 1, 1)
    expected = stage.bn.double()(stage.conv.double()(x))
    torch.testing.assert_close(folded, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flex", [True, False])
def test_reference_forward_equals_model_in_float64(flex):
    """The export's reference is the model's own forward: same spikes in every layer, same logits."""
    model, cfg = _random_model(flex)
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    header, arrays = build_export(model, cfg, images, np.zeros(4, dtype=np.int64))
    with torch.no_grad():
        out = model.double().run(torch.from_numpy(images).double() / 255.0)
    for trace in out.layers:
        spikes = trace.output.transpose(0, 1).numpy().astype(bool)
        rate = spikes.mean()
        assert 0.01 < rate < 0.9, f"{trace.name} fires at rate {rate}; the comparison would be vacuous"
        packed = np.packbits(spikes.reshape(*spikes.shape[:2], -1), axis=-1)
        np.testing.assert_array_equal(arrays[f"ref.spikes.{trace.name}"], packed, err_msg=trace.name)
    np.testing.assert_allclose(arrays["ref.logits"], out.logits.numpy(), rtol=0, atol=1e-12)
    # the float32 model's logits are stored too and close to the float64 ones
    np.testing.assert_allclose(arrays["ref.model_logits"], arrays["ref.logits"], atol=1e-3)


def test_poisson_reference_equals_model_fed_the_same_input_spikes(monkeypatch):
    model, cfg = _random_model(flex=True, encoding="poisson")
    images = np.random.default_rng(2).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    header, arrays = build_export(model, cfg, images, np.zeros(3, dtype=np.int64))
    bits = np.unpackbits(arrays["ref.input_spikes"], axis=-1, count=3072).reshape(3, cfg.model.steps, 3, 32, 32)
    assert 0.3 < bits.mean() < 0.7  # pixel probabilities of uniform random images
    stored = torch.from_numpy(bits.transpose(1, 0, 2, 3, 4).astype(np.float64))
    monkeypatch.setattr(model, "encode", lambda images: stored)
    with torch.no_grad():
        out = model.double().run(torch.zeros(3, 3, 32, 32, dtype=torch.float64))
    for trace in out.layers:
        spikes = trace.output.transpose(0, 1).numpy().astype(bool)
        packed = np.packbits(spikes.reshape(*spikes.shape[:2], -1), axis=-1)
        np.testing.assert_array_equal(arrays[f"ref.spikes.{trace.name}"], packed, err_msg=trace.name)


def test_export_refuses_ann_mode():
    model, cfg = _random_model(flex=True, mode="ann")
    with pytest.raises(ValueError, match="ann-mode"):
        build_export(model, cfg, np.zeros((1, 3, 32, 32), np.uint8), np.zeros(1, np.int64))


@pytest.fixture
def tiny(tmp_path):
    return random_export(tmp_path / "export.npz", n_images=2)


def _rewrite(src, dst, header_change=None, drop=None, change=None):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays.pop("header")))
    if header_change:
        header_change(header)
    if drop:
        arrays.pop(drop)
    if change:
        change(arrays)
    with open(dst, "wb") as f:
        np.savez(f, header=np.array(json.dumps(header)), **arrays)
    return dst


def test_export_roundtrip(tiny):
    again = read_export(tiny.path)
    assert again.header.format_version == FORMAT_VERSION
    assert [la.name for la in again.layers] == ["conv1", "down1", "conv2"]
    assert again.reference_spikes("conv2").shape == (2, 2, 6, 16, 16)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("truncated", "truncated"),
    ("not_zip", "truncated or not an export"),
    ("newer", "newer than this bioflexnet reads"),
    ("no_array", r"lacks the arrays \['conv2.eta'\]"),
    ("bad_shape", "array conv1.weight has shape"),
    ("nan", "NaN"),
    ("bad_reset", "model.reset='sometimes'"),
    ("broken_chain", "takes 5x"),
])
def test_malformed_exports_are_refused_with_the_reason(tiny, tmp_path, case, match):
    bad = tmp_path / "bad.npz"
    if case == "missing":
        bad = tmp_path / "nothing.npz"
    elif case == "truncated":
        data = tiny.path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case == "not_zip":
        bad.write_text("hello")
    elif case == "newer":
        _rewrite(tiny.path, bad, header_change=lambda h: h.update(format_version=FORMAT_VERSION + 1))
    elif case == "no_array":
        _rewrite(tiny.path, bad, drop="conv2.eta")
    elif case == "bad_shape":
        _rewrite(tiny.path, bad, change=lambda a: a.update({"conv1.weight": a["conv1.weight"][:, :2]}))
    elif case == "nan":
        _rewrite(tiny.path, bad, change=lambda a: a["down1.bias"].__setitem__(0, np.nan))
    elif case == "bad_reset":
        _rewrite(tiny.path, bad, header_change=lambda h: h["model"].update(reset="sometimes"))
    elif case == "broken_chain":
        _rewrite(tiny.path, bad, header_change=lambda h: h["layers"][1].update(c_in=5))
    with pytest.raises(ExportError, match=match):
        read_export(bad)
