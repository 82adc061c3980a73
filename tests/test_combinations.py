"""Every model the config accepts runs: forward and backward, export, and Brian2 at the trained K.

The grid is mode x flex x mask_mode x flex_3x3 x downsample x down_neurons x ticks in {1, 2} x encoding at
a tiny width. A combination is either refused when the config is made (ConfigError), or it trains; a spiking
network with neurons after every stage also exports, and its export runs in Brian2 (exact mode at K = 1,
biophysical at the trained K) spike for spike with the float64 reference and the float32 model. The others
(ReLU units, stages without neurons) are refused by the export with the reason.
"""
import itertools

import numpy as np
import pytest
import torch

from core.config import ConfigError, make_config
from core.export_format import read_export, write_export
from training.export import build_export
from training.models import build_model

GRID = {"mode": ["ann", "hybrid", "stbp"], "flex": [True, False], "mask_mode": ["learned", "conv_only"],
        "flex_3x3": [True, False], "downsample": ["conv", "maxpool"], "down_neurons": [True, False],
        "ticks": [1, 2], "encoding": ["direct", "poisson"]}
IMAGES = (torch.arange(2 * 3 * 32 * 32) % 251).reshape(2, 3, 32, 32).to(torch.uint8).numpy()


def _config(**choice):
    overrides = [f"model.{k}={str(v).lower()}" for k, v in choice.items() if k not in ("mode", "flex")]
    return make_config("smoke", mode=choice["mode"], flex=choice["flex"],
                       overrides=[*overrides, "model.width=0.0625"])


def _effective(choice: dict) -> tuple:
    """The choices the model depends on: the twin ignores the flex options, ReLU units the input encoding."""
    c = dict(choice)
    if not c["flex"]:
        c["mask_mode"], c["flex_3x3"] = "learned", True
    if c["mode"] == "ann":
        c["encoding"] = "direct"
    return tuple(c.values())


def _accepted():
    """Every accepted combination once per model it makes (the others only have to be accepted)."""
    accepted, refused, models = [], [], set()
    for values in itertools.product(*GRID.values()):
        choice = dict(zip(GRID, values))
        try:
            cfg = _config(**choice)
        except ConfigError as exc:
            refused.append((choice, str(exc)))
            continue
        if _effective(choice) not in models:
            models.add(_effective(choice))
            accepted.append((choice, cfg))
    return accepted, refused


ACCEPTED, REFUSED = _accepted()


def test_the_grid_is_mostly_accepted_and_refusals_say_why():
    assert len(ACCEPTED) >= 80
    for choice, message in REFUSED:  # each refusal names the field and the reason, in one line
        assert "model." in message and "\n" not in message, (choice, message)


def _bright(model):
    """Positive batch-norm shifts: a random tiny net then fires in every layer (a trained one does anyway)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.fill_(0.8)


def test_every_accepted_combination_trains():
    for choice, cfg in ACCEPTED:
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        out = model.run(torch.from_numpy(IMAGES).float() / 255.0)
        out.logits.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert out.logits.shape == (len(IMAGES), 10) and grads and all(torch.isfinite(g).all() for g in grads), choice
        model.apply_plasticity(out)
        assert all(torch.isfinite(layer.plastic_bias).all() for layer in model.flex_layers().values()), choice


def _exportable(cfg) -> bool:
    """Spiking neurons after every stage but the classic VGG's max-pools (which have none either way)."""
    m = cfg.model
    return m.spiking and (m.down_neurons or m.family == "vggmp")


def test_what_cannot_be_exported_is_refused_with_the_reason():
    for choice, cfg in ACCEPTED:
        if _exportable(cfg):
            continue
        model = build_model(cfg.model).eval()
        with pytest.raises(ValueError, match="ann-mode|down_neurons"):
            build_export(model, cfg, IMAGES[:1], np.zeros(1, dtype=np.int64))


def _structure(header: dict) -> tuple:
    """What the Brian2 network depends on: the layer kinds, K and the input encoding."""
    return (tuple(la["kind"] for la in header["layers"]), header["model"]["ticks"], header["model"]["encoding"])


@pytest.mark.brian
def test_every_exportable_combination_runs_in_brian2_spike_for_spike(tmp_path):
    """One Brian2 run per distinct network structure (hybrid and stbp export the same network; a conv_only
    flex stage exports as a conv stage); every export's float64 reference agrees with its float32 model."""
    from sim.simulate import SimOptions, simulate

    seen = set()
    for choice, cfg in ACCEPTED:
        if not _exportable(cfg):
            continue
        torch.manual_seed(0)
        model = build_model(cfg.model)
        _bright(model)
        model.eval()
        header, arrays = build_export(model, cfg, IMAGES[:1], np.zeros(1, dtype=np.int64))
        if cfg.model.encoding.value == "direct":  # (Poisson: the float32 model draws its own input spikes)
            np.testing.assert_allclose(arrays["ref.model_logits"], arrays["ref.logits"], atol=1e-4,
                                       err_msg=str(choice))
        key = _structure(header)
        if key in seen:
            continue
        seen.add(key)
        export = read_export(write_export(tmp_path / f"{len(seen)}.npz", header, arrays))
        mode = "exact" if export.ticks == 1 else "biophysical"  # at the trained K (the sim CLI's default)
        result = simulate(export, SimOptions(n_images=1, mode=mode))
        for layer in export.neuron_layers:
            np.testing.assert_array_equal(result.spikes[layer.name], export.reference_spikes(layer.name, 1),
                                          err_msg=f"{choice} {layer.name}")
        np.testing.assert_allclose(result.logits, arrays["ref.logits"], atol=1e-9, err_msg=str(choice))
    assert len(seen) == 16  # {all flex, flex down-sampling only, twin, max-pool VGG} x K x encoding
