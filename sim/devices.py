"""Brian2 devices: ``runtime`` (default), ``cpp_standalone`` and ``cuda_standalone`` (brian2cuda).

The device is chosen by :func:`device_session` at the simulation's entry
point and nowhere else; the session restores Brian2's default device and
preferences when it ends, so several simulations can run in one process.

Floating point. All devices use float64. The C++ and CUDA builds are
compiled without ``-ffast-math`` / ``--use_fast_math`` and with fused
multiply-add contraction off, so ``beta*v + u`` is rounded the same way as in
numpy and PyTorch: ``exact`` mode needs IEEE arithmetic to meet ties at the
threshold the same way.

brian2cuda (GPL-3.0) is imported only when ``cuda_standalone`` is chosen. On
this project's machines (docs/model.md, "Brian2") its code needs C++17 with CUDA 13,
and curand comes from the ``nvidia-curand`` wheel. Without a GPU the project
is generated and compiled, then :class:`NoGPUError` says that running it
needs one.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from core.errors import UserError

DEVICES = ("runtime", "cpp_standalone", "cuda_standalone")
GCC_ARGS = ["-w", "-O3", "-fno-fast-math", "-ffp-contract=off", "-march=native", "-std=c++17"]
NVCC_ARGS = ["-w", "-std=c++17", "--fmad=false", "-Xcompiler", "-ffp-contract=off"]
DEFAULT_COMPUTE_CAPABILITY = 9.0  # H100 / H200, used when no GPU can be queried


class DeviceError(UserError, RuntimeError):
    """A Brian2 device cannot be used here (missing package or compiler)."""


class NoGPUError(DeviceError):
    """The CUDA project was built, but there is no GPU to run it on."""


def gpu_available() -> bool:
    """Whether ``nvidia-smi`` lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def check_device(name: str) -> None:
    """Raise :class:`DeviceError` with a remedy if device ``name`` cannot be built here."""
    if name not in DEVICES:
        raise DeviceError(f"device {name!r} is not one of {DEVICES}.")
    if name == "cuda_standalone":
        if importlib.util.find_spec("brian2cuda") is None:
            raise DeviceError("cuda_standalone needs brian2cuda (GPL-3.0, optional): pip install -e '.[cuda]'.")
        if shutil.which("nvcc") is None:
            raise DeviceError("cuda_standalone needs the CUDA compiler nvcc on PATH; install the CUDA toolkit.")


def _curand_dirs(build_dir: Path) -> tuple[list[str], list[str]]:
    """Include and library directories for curand from the ``nvidia-curand`` wheel, if it is installed.

    The wheel ships ``libcurand.so.10`` only; ``-lcurand`` needs the plain name, so a
    link to it is placed in ``BUILD_DIR/curand``.
    """
    spec = importlib.util.find_spec("nvidia.curand")
    if spec is None or not spec.submodule_search_locations:
        return [], []
    root = Path(list(spec.submodule_search_locations)[0])
    libs = sorted((root / "lib").glob("libcurand.so*"))
    if not libs:
        return [str(root / "include")], []
    link_dir = build_dir / "curand"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "libcurand.so"
    if not link.exists():
        link.symlink_to(libs[0])
    return [str(root / "include")], [str(link_dir), str(root / "lib")]


def _configure_cuda(build_dir: Path) -> None:
    import brian2cuda  # noqa: F401 - registers the device (GPL-3.0, optional)
    from brian2 import prefs

    backend = prefs.devices.cuda_standalone.cuda_backend
    backend.extra_compile_args_nvcc = list(NVCC_ARGS)
    if not gpu_available():  # generate and compile for an H100/H200 without querying a GPU
        backend.detect_gpus = False
        backend.gpu_id = 0
        backend.compute_capability = DEFAULT_COMPUTE_CAPABILITY
    include, libs = _curand_dirs(build_dir)
    prefs.codegen.cpp.include_dirs = list(prefs.codegen.cpp.include_dirs) + include
    prefs.codegen.cpp.library_dirs = list(prefs.codegen.cpp.library_dirs) + libs
    prefs.codegen.cpp.runtime_library_dirs = list(prefs.codegen.cpp.runtime_library_dirs) + libs


class Session:
    """Runs a network on the chosen device and reports timings (seconds)."""

    def __init__(self, name: str, build_dir: Path | None, build_only: bool):
        self.name, self.build_dir, self.build_only = name, build_dir, build_only
        self.timings: dict[str, float] = {}

    def run(self, network, duration, namespace: dict | None = None) -> bool:
        """Simulate; returns False when the project was only built (``build_only``)."""
        from brian2 import device

        t0 = time.perf_counter()
        network.run(duration, namespace=namespace or {})
        self.timings["run_call_s"] = time.perf_counter() - t0
        if self.name == "runtime":
            self.timings["simulate_s"] = self.timings["run_call_s"]
            return True
        t0 = time.perf_counter()
        device.build(directory=str(self.build_dir), compile=True, run=False, with_output=False)
        self.timings["build_s"] = time.perf_counter() - t0
        if self.build_only:
            return False
        if self.name == "cuda_standalone" and not gpu_available():
            raise NoGPUError(f"the cuda_standalone project was generated and compiled in {self.build_dir} "
                             f"({self.timings['build_s']:.0f} s), but running it needs an NVIDIA GPU and none "
                             "was found; run the same command on a GPU machine (or pass --build-only).")
        t0 = time.perf_counter()
        device.run(directory=str(self.build_dir), with_output=False)
        self.timings["run_binary_s"] = time.perf_counter() - t0
        self.timings["simulate_s"] = float(getattr(device, "_last_run_time", self.timings["run_binary_s"]))
        return True


@contextlib.contextmanager
def device_session(name: str, build_dir: str | os.PathLike | None = None, build_only: bool = False
                   ) -> Iterator[Session]:
    """Select a Brian2 device for one simulation; restore the runtime defaults afterwards.

    ``runtime`` generates numpy code (no compiler, no cache warm-up); the
    standalone devices build into ``build_dir``.
    """
    from brian2 import prefs, set_device
    from brian2.devices.device import reinit_devices

    check_device(name)
    if name != "runtime" and build_dir is None:
        raise DeviceError(f"{name} needs a build directory.")
    build = Path(build_dir).resolve() if build_dir is not None else None
    reinit_devices()
    try:
        prefs.core.default_float_dtype = np.float64
        if name == "runtime":
            set_device("runtime")
            prefs.codegen.target = "numpy"
        else:
            if name == "cuda_standalone":
                _configure_cuda(build)
            prefs.codegen.cpp.extra_compile_args_gcc = list(GCC_ARGS)
            # Brian2's default `make -j` starts one compiler per file at once; that exhausts memory with nvcc
            prefs.devices.cpp_standalone.extra_make_args_unix = [f"-j{os.cpu_count() or 1}"]
            set_device(name, directory=str(build), build_on_run=False)
        yield Session(name, build, build_only)
    finally:
        reinit_devices()
        set_device("runtime")
