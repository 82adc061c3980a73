"""``bioflexnet sim MODEL.nir``: simulate any NIR graph in Brian2 and write ``sim.nc``.

The input samples come from, in this order of preference: an input file
(``--inputs``: ``[N, T, *input shape]``), the reference written beside a graph
by ``bioflexnet export RUN --format nir`` (``MODEL.reference.npz``, an export in
:mod:`core.export_format` with the float64 PyTorch forward of the same network),
or the CIFAR-10 test split for a ``3 x 32 x 32`` input, held for ``T`` ticks as
a constant current (normalised as the graph's metadata says, else ``pixel/255``).
With a reference, spikes and classes are compared with it as for an export.
"""
from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr

from core.results import provenance
from sim.devices import device_session
from sim.nir_graph import GraphPlan, NIRGraphError, plan_graph, read_graph

REFERENCE_SUFFIX = ".reference.npz"
CIFAR_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class NIROptions:
    n_images: int | None = None  # None: all samples of the inputs / reference, 128 CIFAR-10 images otherwise
    steps: int | None = None  # ticks per sample; None: the graph's metadata, else the input file's
    dt: float | None = None  # seconds; None: the graph's metadata 'dt'
    inputs: Path | None = None
    data_dir: Path | None = None
    device: str = "runtime"
    build_dir: Path | None = None


class Samples(NamedTuple):
    stimulus: np.ndarray  # [N, T, *input shape] float64
    labels: np.ndarray | None  # [N] int64
    source: str


class NIRResult(NamedTuple):
    plan: GraphPlan
    samples: Samples
    spikes: dict[str, np.ndarray]  # spiking node -> bool [N, T, neurons]
    outputs: dict[str, np.ndarray]  # Output node -> float64 [N, T, features] (spikes as 0/1)
    timings: dict[str, float]

    @property
    def logits(self) -> np.ndarray:
        """Mean over ticks of the first Output node (the read-out; spike counts / T for spiking outputs)."""
        return self.outputs[self.plan.outputs[0]].mean(axis=1)


def reference_path(graph_path: Path) -> Path:
    return Path(graph_path).with_suffix(REFERENCE_SUFFIX)


def _cifar_test(n: int, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` CIFAR-10 test images (uint8 ``[n, 3, 32, 32]``) and labels, without torch."""
    root = Path(data_dir or os.environ.get("BIOFLEXNET_DATA_DIR", "data")) / "cifar-10-batches-py"
    path = root / "test_batch"
    if not path.is_file():
        raise NIRGraphError(f"{path} not found: the CIFAR-10 test images are needed for a 3x32x32 input; run "
                            "`bioflexnet data`, pass --data-dir, or give the inputs with --inputs FILE.")
    allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("_codecs", "encode")}

    class Safe(pickle.Unpickler):  # as training.data: plain containers and arrays only, never code
        def find_class(self, module, name):
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")
            return super().find_class(module, name)

    with open(path, "rb") as f:
        batch = Safe(f, encoding="latin1").load()
    images = np.asarray(batch["data"], dtype=np.uint8)[:n].reshape(-1, *CIFAR_SHAPE)
    return images, np.asarray(batch["labels"][:n], dtype=np.int64)


def normalise(images: np.ndarray, metadata: dict) -> np.ndarray:
    """uint8 images as the graph's input: ``(pixel/255 - mean) / std`` per channel where the metadata gives
    ``input_mean`` / ``input_std`` (this project's exports), else ``pixel/255``."""
    x = images.astype(np.float64) / 255.0
    if "input_mean" in metadata and "input_std" in metadata:
        mean = np.asarray(metadata["input_mean"], dtype=np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(metadata["input_std"], dtype=np.float64).reshape(1, -1, 1, 1)
        x = (x - mean) / std  # core.equations.normalise_input's order of operations
    return x


def _steps(plan: GraphPlan, options: NIROptions) -> int:
    steps = options.steps if options.steps is not None else plan.metadata.get("steps")
    if steps is None:
        raise NIRGraphError("the number of ticks per sample is unknown: the graph's metadata has no 'steps'; pass "
                            "--steps T, or give --inputs with [N, T, ...] arrays.")
    steps = int(np.asarray(steps))
    if steps < 1:
        raise NIRGraphError(f"--steps={steps}: a sample lasts at least one tick.")
    return steps


def _read_inputs(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise NIRGraphError(f"--inputs {path}: no such file; give a .npy array or an .npz with 'inputs' "
                            f"[N, T, {', '.join(map(str, shape))}] (and optionally 'labels' [N]).")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            x, labels = data["inputs"], (data["labels"] if "labels" in data.files else None)
        else:
            x, labels = data, None
    except (OSError, ValueError, KeyError) as exc:
        raise NIRGraphError(f"--inputs {path}: not a .npy array or an .npz with 'inputs' ({exc}).") from None
    if x.ndim != len(shape) + 2 or tuple(x.shape[2:]) != shape:
        raise NIRGraphError(f"--inputs {path}: an array of shape {list(x.shape)}; the graph's input needs "
                            f"[N, T, {', '.join(map(str, shape))}].")
    return np.asarray(x, dtype=np.float64), labels


def load_samples(plan: GraphPlan, options: NIROptions, reference=None) -> Samples:
    """The stimulus ``[N, T, *input shape]``: from ``--inputs``, the reference's images, or CIFAR-10."""
    shape = plan.nodes[plan.input].out_shape
    if options.inputs is not None:
        x, labels = _read_inputs(Path(options.inputs), shape)
        if options.steps is not None and options.steps != x.shape[1]:
            raise NIRGraphError(f"--steps={options.steps} but the inputs hold {x.shape[1]} ticks per sample.")
        n = x.shape[0] if options.n_images is None else options.n_images
        if not 1 <= n <= x.shape[0]:
            raise NIRGraphError(f"--images={n}: the input file holds {x.shape[0]} samples.")
        return Samples(x[:n], None if labels is None else np.asarray(labels[:n]), str(options.inputs))
    if shape != CIFAR_SHAPE:
        raise NIRGraphError(f"the graph's input has the shape {list(shape)}, not a CIFAR-10 image "
                            f"{list(CIFAR_SHAPE)}; give the samples with --inputs FILE ([N, T, ...]).")
    steps = _steps(plan, options)
    if reference is not None:
        n = reference.n_reference if options.n_images is None else options.n_images
        if not 1 <= n <= reference.n_reference:
            raise NIRGraphError(f"--images={n}: the reference beside the graph holds {reference.n_reference} images.")
        images, labels = reference.arrays["ref.images"][:n], reference.arrays["ref.labels"][:n]
        source = f"{reference.path} (the first {n} CIFAR-10 test images)"
    else:
        n = 128 if options.n_images is None else options.n_images
        if not 1 <= n <= 10000:
            raise NIRGraphError(f"--images={n}: CIFAR-10 has 10000 test images.")
        images, labels = _cifar_test(n, options.data_dir)
        source = f"the first {n} CIFAR-10 test images"
    x = normalise(images, plan.metadata)
    return Samples(np.repeat(x[:, None], steps, axis=1), labels, source)


def simulate_nir(graph_path: Path, options: NIROptions) -> tuple[NIRResult, object | None]:
    """Read, check and simulate a NIR graph; returns the result and the reference export (or None)."""
    from core.export_format import read_export

    graph_path = Path(graph_path)
    plan = plan_graph(read_graph(graph_path), options.dt)
    ref_file = reference_path(graph_path)
    reference = read_export(ref_file) if ref_file.is_file() and options.inputs is None else None
    graph_sha = str(plan.metadata.get("checkpoint_sha256", ""))
    if reference is not None and graph_sha and reference.header.run.checkpoint_sha256 != graph_sha:
        raise NIRGraphError(f"{ref_file} is the reference of another checkpoint than {graph_path}; export both again "
                            "with `bioflexnet export RUN --format nir`.")
    samples = load_samples(plan, options, reference)
    return run_plan(plan, samples, options.device, options.build_dir), reference


def run_plan(plan: GraphPlan, samples: Samples, device: str = "runtime", build_dir: Path | None = None) -> NIRResult:
    """Simulate a checked graph on ``samples`` with a Brian2 device."""
    from sim.nir_import import build_nir_network

    n, steps = samples.stimulus.shape[:2]
    with device_session(device, build_dir) as session:
        t0 = time.perf_counter()
        net = build_nir_network(plan, samples.stimulus)
        timings = {"build_network_s": time.perf_counter() - t0}
        session.run(net.network, net.duration)
        timings.update(session.timings)
        spikes = {name: _dense(mon, n, steps, plan.nodes[name].size, plan.dt) for name, mon in net.spikes.items()}
        outputs = {}
        for name, mon in net.outputs.items():
            src = plan.nodes[plan.nodes[name].sources[0]]
            outputs[name] = spikes[src.name].astype(np.float64) if src.spiking else \
                np.asarray(mon.out).T.reshape(n, steps, -1)
    return NIRResult(plan, samples, spikes, outputs, timings)


def _dense(monitor, n: int, steps: int, size: int, dt: float) -> np.ndarray:
    tick = np.rint(np.asarray(monitor.t) / dt).astype(np.int64)
    dense = np.zeros((n * steps, size), dtype=bool)
    dense[tick, np.asarray(monitor.i)] = True
    return dense.reshape(n, steps, size)


def _var(dims, values, long_name: str, units: str = "1") -> tuple:
    return dims, values, {"long_name": long_name, "units": units}


def to_dataset(result: NIRResult, graph_path: Path, options: NIROptions, reference=None) -> xr.Dataset:
    """``sim.nc`` of a NIR simulation: read-out, spikes per spiking node, and, with a reference, the same
    fidelity figures as for an export (:mod:`sim.results`)."""
    plan, n = result.plan, result.samples.stimulus.shape[0]
    layers = [node.name for node in plan.spiking]
    data = {"logits": _var(("image", "class"), result.logits, "Brian2 read-out: mean over ticks of the first "
                                                                 f"Output node ({plan.outputs[0]!r})"),
            "firing_rate": _var("layer", np.array([result.spikes[k].mean() for k in layers]),
                                "Brian2 spikes per neuron and tick")}
    coords = {"image": np.arange(n), "step": np.arange(result.samples.stimulus.shape[1]), "layer": layers,
              "class": np.arange(result.logits.shape[1])}
    for name in layers:
        data[f"spikes_{name}"] = _var(("image", "step", f"{name}_neuron"), result.spikes[name].astype(np.int8),
                                      f"Brian2 spikes of NIR node {name!r} (flattened in C order)")
    for name, values in result.outputs.items():
        data[f"output_{name}"] = _var(("image", "step", f"{name}_feature"), values, f"NIR Output node {name!r}")
    labels = result.samples.labels
    if labels is not None:
        data["label"] = _var("image", labels, "label of the sample")
        data["accuracy"] = _var((), float((result.logits.argmax(1) == labels).mean()), "Brian2 top-1 accuracy")
    if reference is not None:
        data.update(_fidelity(result, reference, layers, n))
    attrs = provenance(None, None)
    attrs.update({"source_nir": str(Path(graph_path).resolve()), "inputs": result.samples.source,
                  "device": options.device, "n_images": n, "dt_s": plan.dt,
                  "steps": int(result.samples.stimulus.shape[1]),
                  "integration": "forward Euler per tick of dt (docs/nir.md)",
                  **{f"timing_{k}": float(v) for k, v in result.timings.items()}})
    for key in ("convention", "source_run_dir", "checkpoint_sha256"):
        if key in plan.metadata:
            attrs[f"nir_{key}"] = str(plan.metadata[key])
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    for name in ds.data_vars:
        if name.startswith("spikes_"):
            ds[name].encoding.update({"zlib": True, "complevel": 4})
    return ds


def _fidelity(result: NIRResult, reference, layers: list[str], n: int) -> dict:
    a = reference.arrays
    ref_logits, model_logits, labels = a["ref.logits"][:n], a["ref.model_logits"][:n], a["ref.labels"][:n]
    names = {la.name for la in reference.neuron_layers}
    compared = [k for k in layers if k in names]
    agree, mismatch, ref_rate = [], [], []
    for name in layers:
        if name not in names:
            agree.append(np.nan), mismatch.append(-1), ref_rate.append(np.nan)
            continue
        ref = reference.reference_spikes(name, n).reshape(n, reference.steps, -1)
        sim = result.spikes[name]
        agree.append(float((sim == ref).mean()))
        mismatch.append(int((sim != ref).sum()))
        ref_rate.append(float(ref.mean()))
    return {
        "spike_agreement": _var("layer", np.array(agree), "fraction of (image, step, neuron) with the same spike in "
                                "Brian2 and the float64 PyTorch reference (NaN: no reference layer of that name)"),
        "spike_mismatches": _var("layer", np.array(mismatch), "number of (image, step, neuron) that differ (-1: none "
                                 "compared)"),
        "reference_firing_rate": _var("layer", np.array(ref_rate), "PyTorch spikes per neuron and step"),
        "reference_logits": _var(("image", "class"), ref_logits, "float64 PyTorch forward of the export"),
        "model_logits": _var(("image", "class"), model_logits, "trained float32 PyTorch model"),
        "class_agreement": _var((), float((result.logits.argmax(1) == ref_logits.argmax(1)).mean()),
                                "fraction of images with the same class in Brian2 and the float64 PyTorch reference"),
        "class_agreement_model": _var((), float((result.logits.argmax(1) == model_logits.argmax(1)).mean()),
                                      "fraction of images with the same class in Brian2 and the float32 model"),
        "reference_accuracy": _var((), float((ref_logits.argmax(1) == labels).mean()), "PyTorch top-1 accuracy"),
        "compared_layers": _var((), len(compared), "spiking nodes compared with a reference layer of the same name"),
    }


def summary(ds: xr.Dataset) -> str:
    """A few lines: per spiking node rate (and agreement), class agreement, accuracy, wall time."""
    lines = [f"NIR graph on {ds.attrs['device']}: {ds.attrs['n_images']} samples of {ds.attrs['steps']} ticks, "
             f"dt = {ds.attrs['dt_s']:.4g} s ({ds.attrs['inputs']})"]
    ref = "spike_agreement" in ds
    lines.append(f"{'node':<16} {'rate':>7}" + (f" {'agreement':>10} {'mismatches':>11}" if ref else ""))
    for i, layer in enumerate(ds.layer.values):
        line = f"{str(layer):<16} {float(ds.firing_rate[i]):7.4f}"
        if ref:
            line += f" {float(ds.spike_agreement[i]):10.6f} {int(ds.spike_mismatches[i]):11d}"
        lines.append(line)
    if ref:
        lines.append(f"class agreement: {float(ds.class_agreement):.4f} with the float64 PyTorch export, "
                     f"{float(ds.class_agreement_model):.4f} with the trained float32 model")
    if "accuracy" in ds:
        lines.append(f"accuracy on these samples: Brian2 {float(ds.accuracy):.4f}"
                     + (f", PyTorch {float(ds.reference_accuracy):.4f}" if ref else ""))
    lines.append(f"wall time: network build {ds.attrs['timing_build_network_s']:.1f} s, simulation "
                 f"{ds.attrs['timing_simulate_s']:.2f} s")
    return "\n".join(lines)
