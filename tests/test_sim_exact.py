"""Exact mode: the Brian2 network reproduces the PyTorch forward of the export, spike for spike."""
import numpy as np
import pytest
from export_helpers import random_export

from sim.results import class_agreement, to_dataset
from sim.simulate import SimError, SimOptions, simulate

pytestmark = pytest.mark.brian


@pytest.mark.parametrize("flex, beta, reset, sigma", [
    (True, 0.5, "subtract", "hard"),
    (True, 0.7, "zero", "logistic"),
    (False, 0.9, "subtract", "hard"),
])
def test_exact_mode_reproduces_pytorch_spikes_in_every_layer(tmp_path, flex, beta, reset, sigma):
    export = random_export(tmp_path / "e.npz", flex=flex, beta=beta, reset=reset, sigma=sigma, n_images=3)
    result = simulate(export, SimOptions(n_images=3))
    for layer in export.neuron_layers:
        ref = export.reference_spikes(layer.name)
        sim = result.spikes[layer.name]
        assert 0.02 < ref.mean() < 0.98, f"{layer.name}: reference rate {ref.mean()} makes the check vacuous"
        np.testing.assert_array_equal(sim, ref, err_msg=f"spikes of {layer.name}")
        if layer.kind == "flex":
            mbar = result.masks[layer.name]["mbar"]
            np.testing.assert_allclose(mbar, export.arrays[f"ref.mask_mean.{layer.name}"], atol=1e-12)
    np.testing.assert_allclose(result.logits, export.arrays["ref.logits"], atol=1e-12)
    assert class_agreement(result.logits, export.arrays["ref.logits"]) == 1.0


def test_images_follow_each_other_without_leaking_state(tmp_path):
    """Image 2 simulated after images 0, 1 gives the same spikes as the reference of image 2 alone."""
    export = random_export(tmp_path / "e.npz", n_images=3, steps=3)
    result = simulate(export, SimOptions(n_images=3))
    for layer in export.neuron_layers:
        np.testing.assert_array_equal(result.spikes[layer.name][2], export.reference_spikes(layer.name)[2])


def test_dataset_reports_perfect_fidelity(tmp_path):
    export = random_export(tmp_path / "e.npz", n_images=2)
    options = SimOptions(n_images=2)
    ds = to_dataset(simulate(export, options), export, options)
    assert list(ds.layer.values) == ["conv1", "down1", "conv2"]
    assert (ds.spike_agreement.values == 1.0).all() and (ds.spike_mismatches.values == 0).all()
    assert float(ds.class_agreement) == 1.0
    assert ds.spikes_conv2.dims == ("image", "step", "conv2_channel", "conv2_y", "conv2_x")
    assert ds.mask_down1.dims == ("image", "tick", "down1_channel")
    for name in ("spike_agreement", "logits", "mask_conv1", "accuracy"):
        assert {"long_name", "units"} <= set(ds[name].attrs)
    assert ds.attrs["mode"] == "exact" and "git_commit" in ds.attrs


@pytest.mark.parametrize("options, match", [
    (SimOptions(n_images=5), "holds 2 reference images"),
    (SimOptions(n_images=1, ticks=4), "exact mode runs one tick"),
    (SimOptions(n_images=1, mode="dream"), "not one of"),
    (SimOptions(n_images=1, mode="biophysical", synapse="alpha"), "synapse 'alpha' is not one of"),
    (SimOptions(n_images=1, device="fpga"), "not one of"),
])
def test_bad_options_are_refused_before_simulating(tmp_path, options, match):
    export = random_export(tmp_path / "e.npz", n_images=2)
    with pytest.raises(SimError, match=match):
        simulate(export, options)


def test_poisson_input_replays_the_reference_spikes_exactly(tmp_path):
    export = random_export(tmp_path / "e.npz", encoding="poisson", n_images=2, steps=3)
    result = simulate(export, SimOptions(n_images=2))
    for layer in export.neuron_layers:
        assert 0.02 < export.reference_spikes(layer.name).mean() < 0.98
        np.testing.assert_array_equal(result.spikes[layer.name], export.reference_spikes(layer.name))
    np.testing.assert_allclose(result.logits, export.arrays["ref.logits"], atol=1e-12)


def test_fresh_poisson_input_fires_at_the_pixel_rate(tmp_path):
    """New Bernoulli draws: other spikes than the reference's, the same statistics."""
    export = random_export(tmp_path / "e.npz", encoding="poisson", n_images=4, steps=4)
    a = simulate(export, SimOptions(n_images=4, fresh_poisson=True, seed=1))
    b = simulate(export, SimOptions(n_images=4, fresh_poisson=True, seed=1))
    np.testing.assert_array_equal(a.spikes["conv1"], b.spikes["conv1"])  # seeded
    ref = export.reference_spikes("conv1")
    assert (a.spikes["conv1"] != ref).any()
    assert abs(a.spikes["conv1"].mean() - ref.mean()) < 0.02
    with pytest.raises(SimError, match="needs a Poisson-encoded export"):
        simulate(random_export(tmp_path / "d.npz", n_images=1), SimOptions(n_images=1, fresh_poisson=True))
