"""Devices: cpp_standalone equals runtime; cuda_standalone generates and compiles where nvcc is."""
import dataclasses
import importlib.util
import shutil

import numpy as np
import pytest
from export_helpers import random_export

from sim.devices import DeviceError, NoGPUError, check_device, device_session, gpu_available
from sim.network import build_network
from sim.simulate import SimOptions, make_timing, simulate

HAVE_CUDA_BUILD = shutil.which("nvcc") is not None and importlib.util.find_spec("brian2cuda") is not None
needs_cuda_build = pytest.mark.skipif(not HAVE_CUDA_BUILD, reason="needs nvcc on PATH and brian2cuda "
                                      "(pip install -e '.[cuda]')")


def _assert_same(a, b):
    for name in a.spikes:
        np.testing.assert_array_equal(a.spikes[name], b.spikes[name], err_msg=name)
    for name in a.masks:
        for var in a.masks[name]:
            np.testing.assert_array_equal(a.masks[name][var], b.masks[name][var], err_msg=f"{name}.{var}")
    np.testing.assert_array_equal(a.logits, b.logits)


@pytest.mark.brian
def test_cpp_standalone_equals_runtime(tmp_path):
    """Same spikes, masks, plastic biases and read-out, bit for bit (IEEE flags, no fast-math)."""
    export = random_export(tmp_path / "e.npz", n_images=2)
    options = SimOptions(n_images=2, plasticity=True)
    runtime = simulate(export, options)
    cpp = simulate(export, dataclasses.replace(options, device="cpp_standalone", build_dir=tmp_path / "cpp"))
    _assert_same(runtime, cpp)
    assert cpp.timings["build_s"] > 0 and "simulate_s" in cpp.timings


@pytest.mark.brian
@pytest.mark.slow
@pytest.mark.parametrize("synapse", ["delta", "pulse"])
def test_cpp_standalone_equals_runtime_in_biophysical_mode(tmp_path, synapse):
    export = random_export(tmp_path / "e.npz", n_images=2, beta=0.6)
    options = SimOptions(n_images=2, mode="biophysical", ticks=3, plasticity=True, synapse=synapse)
    cpp = dataclasses.replace(options, device="cpp_standalone", build_dir=tmp_path / "cpp")
    _assert_same(simulate(export, options), simulate(export, cpp))


def test_device_errors_name_the_remedy(monkeypatch):
    with pytest.raises(DeviceError, match="not one of"):
        check_device("fpga")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "brian2cuda" else real(name, *a))
    with pytest.raises(DeviceError, match=r"pip install -e '\.\[cuda\]'"):
        check_device("cuda_standalone")


@pytest.mark.nvcc
@needs_cuda_build
@pytest.mark.parametrize("options", [
    SimOptions(n_images=1, plasticity=True),
    SimOptions(n_images=1, mode="biophysical", ticks=2, plasticity=True),
    SimOptions(n_images=1, mode="biophysical", ticks=2, synapse="pulse"),
], ids=["exact", "biophysical-delta", "biophysical-pulse"])
def test_cuda_standalone_generates_code(tmp_path, options):
    """brian2cuda accepts every construct of the network (seconds: generation only, no nvcc run)."""
    export = random_export(tmp_path / "e.npz", n_images=1, beta=0.6)
    with device_session("cuda_standalone", tmp_path / "cuda"):
        net = build_network(export, export.arrays["ref.images"][:1], make_timing(export, options),
                            options.plasticity)
        net.network.run(net.duration)
        from brian2 import device

        device.build(directory=str(tmp_path / "cuda"), compile=False, run=False)
    assert (tmp_path / "cuda" / "makefile").is_file()
    assert any((tmp_path / "cuda" / "code_objects").glob("conv2_conv_*codeobject*.cu"))  # pre, or up/down


@pytest.mark.nvcc
@pytest.mark.slow
@needs_cuda_build
def test_cuda_standalone_compiles_and_runs_where_a_gpu_is(tmp_path):
    """Compiles the whole project (tens of minutes on 2 cores); without a GPU it must say so clearly."""
    export = random_export(tmp_path / "e.npz", n_images=2)
    options = SimOptions(n_images=2, device="cuda_standalone", build_dir=tmp_path / "cuda")
    if gpu_available():
        _assert_same(simulate(export, SimOptions(n_images=2)), simulate(export, options))
        return
    with pytest.raises(NoGPUError, match="generated and compiled .* needs an NVIDIA GPU"):
        simulate(export, options)
    assert (tmp_path / "cuda" / "main").is_file()
