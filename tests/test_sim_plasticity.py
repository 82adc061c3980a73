"""Online mask plasticity in Brian2 against PyTorch's ``PlasticFlexLayer.apply_plasticity``."""
import numpy as np
import pytest
import torch
from export_helpers import random_export

from sim.simulate import SimOptions, simulate
from training.flex import PlasticFlexLayer

pytestmark = pytest.mark.brian


def _pytorch_step(export, name: str, image: int) -> np.ndarray:
    """``b`` after PyTorch's Hebbian step with the drives of one image (a batch of one)."""
    spec = next(la for la in export.layers if la.name == name)
    layer = PlasticFlexLayer(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.padding, spec.out_size,
                             export.steps).double()
    a = export.arrays
    layer.plastic_bias.copy_(torch.from_numpy(a[f"{name}.plastic_bias"]))
    r_sel = torch.from_numpy(a[f"ref.r_sel.{name}"][image])
    r_inv = torch.from_numpy(a[f"ref.r_inv.{name}"][image])
    layer.apply_plasticity(r_sel, r_inv, export.model.plasticity_rate, export.model.plasticity_decay)
    return layer.plastic_bias.numpy()


def test_one_step_equals_pytorch_apply_plasticity_in_every_layer(tmp_path):
    """With T = 1 one image is one step: Brian2's online update equals PyTorch's offline one, layer by layer."""
    export = random_export(tmp_path / "e.npz", steps=1, n_images=1, plasticity_rate=0.05)
    result = simulate(export, SimOptions(n_images=1, plasticity=True))
    for layer in export.layers:
        b0 = export.arrays[f"{layer.name}.plastic_bias"]
        b_brian = result.masks[layer.name]["b"][0, -1]
        b_torch = _pytorch_step(export, layer.name, 0)
        np.testing.assert_allclose(b_brian, b_torch, rtol=0, atol=1e-13, err_msg=layer.name)
        # the pathway that drives harder gains weight (the decay pulls b towards 0 on top)
        rate, decay = export.model.plasticity_rate, export.model.plasticity_decay
        delta = export.arrays[f"ref.r_sel.{layer.name}"][0] - export.arrays[f"ref.r_inv.{layer.name}"][0]
        np.testing.assert_allclose(b_brian - b0 * (1 - decay), rate * delta, atol=1e-13)
        assert (np.sign(b_brian - b0 * (1 - decay)) == np.sign(delta)).all()
        assert (np.abs(b_brian - b0) > 1e-6).all(), "the update is too small to show a direction"


def test_first_layer_after_one_image_equals_pytorch(tmp_path):
    """With T = 2 the first layer's drives do not depend on b, so one image = one PyTorch step exactly.

    (Exactly without decay; a decay applied per tick differs from the per-step one at order decay * rate.)
    """
    export = random_export(tmp_path / "e.npz", steps=2, n_images=1, plasticity_rate=0.05, plasticity_decay=0.0)
    result = simulate(export, SimOptions(n_images=1, plasticity=True))
    np.testing.assert_allclose(result.masks["conv1"]["b"][0, -1], _pytorch_step(export, "conv1", 0), atol=1e-13)
    # and the update is spread over the steps: half of it after the first of two steps
    b0 = export.arrays["conv1.plastic_bias"]
    np.testing.assert_allclose(result.masks["conv1"]["b"][0, 0] - b0, (result.masks["conv1"]["b"][0, -1] - b0) / 2,
                               atol=1e-13)


def test_plasticity_moves_the_mask_towards_the_stronger_pathway(tmp_path):
    export = random_export(tmp_path / "e.npz", n_images=2, plasticity_rate=0.2)
    off = simulate(export, SimOptions(n_images=2))
    on = simulate(export, SimOptions(n_images=2, plasticity=True))
    b0 = export.arrays["conv1.plastic_bias"]
    delta_b = on.masks["conv1"]["b"][0, -1] - b0  # after the first image
    change = on.masks["conv1"]["mbar"][1] - off.masks["conv1"]["mbar"][1]  # second image, [ticks, channels]
    assert (change * np.sign(delta_b) >= -1e-15).all(), "the mask moved against the plastic bias"
    assert (np.abs(change) > 1e-4).any()
    # without plasticity b stays where the export put it
    np.testing.assert_array_equal(off.masks["conv1"]["b"][1, -1], b0)
