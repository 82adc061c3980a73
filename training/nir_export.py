"""``bioflexnet export RUN --format nir``: the VGG twin as a NIR graph, for any simulator or chip that reads NIR.

NIR describes neurons in continuous time; this project's LIF is discrete,
``v[t] = beta v[t-1] + I[t]``, spike ``s = H(v - theta)`` (``v >= theta``), then
reset. The export follows snnTorch's ``export_to_nir`` convention, so that
every NIR consumer reading snnTorch graphs reads this one the same way
(docs/nir.md states it in full; the graph's ``metadata['convention']`` too):

- one step is ``dt = 1e-4`` (snnTorch's fixed value), a forward-Euler tick:
  ``v <- v + dt/tau ((v_leak - v) + R I)``;
- ``tau = dt / (1 - beta)``, ``R = tau / dt``, ``v_leak = 0``, so the tick is
  ``v <- beta v + I`` (``tau`` is chosen among the float64 neighbours of
  ``dt / (1 - beta)`` so that ``1 - dt/tau`` is ``beta`` to the last bit and
  ``dt R / tau`` is exactly 1);
- NIR fires on ``v > v_threshold``, this project on ``v >= theta``:
  ``v_threshold`` is the float64 just below ``theta`` (the same test in float64);
- reset to zero is a NIR ``LIF`` with ``v_reset = 0``; reset by subtraction
  (the default) has no NIR neuron, so it is written as a loop: an ``LI``
  membrane ``L_membrane``, a ``Threshold`` node ``L`` that emits the spikes, and
  a ``Scale`` node ``L_reset`` of ``-beta theta`` feeding the spikes back into
  the membrane one step later (``beta (v - theta) = beta v - beta theta``);
- batch-norm is folded into the conv weights and bias (:func:`training.export.model_arrays`);
  the input node takes the normalised image ``(pixel/255 - mean)/std``
  (``metadata['input_mean']`` / ``['input_std']``), held for ``T`` steps
  (``metadata['steps']``); the read-out is the ``Affine`` node ``readout`` and the
  class scores its mean over the ``T`` steps.

Besides ``model.nir`` the export writes ``model.reference.npz`` (the project's
export format, :mod:`core.export_format`) with the float64 PyTorch forward on
the first N test images, which ``bioflexnet sim model.nir`` compares with.
FLEX networks (max-pool path, multiplicative mask, plasticity) and the classic
max-pool VGG (NIR 1.0 has no max-pool node) are refused with that reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.config import Downsample, Encoding, Mode, Reset, RunConfig

NIR_FILE = "model.nir"
DT = 1e-4  # seconds per step: snnTorch's export_to_nir / import_from_nir constant
CONVENTION = (
    "bioflexnet discrete LIF in snnTorch's NIR convention: one step = one forward-Euler tick of dt (metadata 'dt'); "
    "tau = dt/(1-beta), r = tau/dt, v_leak = 0, so v <- beta v + I; v_threshold = the float64 below theta (NIR's "
    "v > v_threshold is the project's v >= theta); reset by subtraction = LI node L_membrane + Threshold node L + "
    "Scale node L_reset (-beta*theta) fed back one step later, reset to zero = LIF with v_reset 0; the input node "
    "takes (pixel/255 - input_mean)/input_std held for 'steps' steps; the class scores are the mean over the steps "
    "of the Affine node 'readout'. States start at rest (v = 0) for each image."
)


class NIRExportError(ValueError):
    """The run's network has no NIR form (a user error through RunDirError)."""


def exact_tau(beta: float, dt: float = DT) -> tuple[float, float]:
    """``(tau, r)`` near ``dt/(1-beta)`` and ``tau/dt`` with ``1 - dt/tau == beta`` and ``dt*r/tau == 1`` in float64
    where such neighbours exist (else the plain values: a few ulp of difference, see docs/nir.md)."""
    tau0 = dt / (1.0 - beta)
    candidates = [tau0]
    up = down = tau0
    for _ in range(64):
        up, down = np.nextafter(up, np.inf), np.nextafter(down, 0.0)
        candidates += [float(up), float(down)]
    tau = next((t for t in candidates if 1.0 - dt / t == beta), tau0)
    r0 = tau / dt
    rs = [r0] + [float(np.nextafter(r0, d)) for d in (np.inf, 0.0)]
    r = next((x for x in rs if dt * x / tau == 1.0), r0)
    return float(tau), float(r)


def refusal(cfg: RunConfig) -> str | None:
    """Why a run's network cannot be written as NIR, or None."""
    m = cfg.model
    if m.flex:
        return ("a FLEX network has no NIR form: its max-pool path, the multiplicative mask m*conv + (1-m)*pool and "
                "the mask plasticity are not NIR primitives. Export its twin, the VGG baseline trained with --no-flex "
                "(variant vgg-stbp), which is made of NIR primitives only.")
    if m.mode is Mode.ANN:
        return "an ann-mode model has ReLU units, not spiking neurons; export a hybrid or stbp run."
    if m.downsample is Downsample.MAXPOOL:
        return ("the classic max-pool VGG (model.downsample=maxpool) has no NIR form: NIR 1.0 has SumPool2d and "
                "AvgPool2d but no max-pool node. Export the twin (model.downsample=conv, the default).")
    if m.ticks > 1:
        return (f"this network was trained at model.ticks={m.ticks} ticks per step (refractory, delta synapses); only "
                "the one-tick discrete model (model.ticks=1) is written as NIR.")
    if m.encoding is not Encoding.DIRECT:
        return ("Poisson input encoding draws Bernoulli spikes, which no NIR node does; export a direct-encoding run "
                "(or feed the spikes yourself to a graph of a direct run).")
    return None


def _neuron_nodes(name: str, shape: tuple[int, ...], beta: float, theta: float, reset: Reset):
    """NIR nodes and internal edges of one layer of neurons; returns (nodes, edges, entry node, spike node)."""
    import nir

    full = lambda value: np.full(shape, value, dtype=np.float64)  # noqa: E731 - per-neuron arrays, NIR's form
    threshold = float(np.nextafter(theta, -np.inf))
    if beta == 1.0:  # no leak: NIR's integrate-and-fire / integrator, dv/dt = R I with dt R = 1
        if reset is Reset.ZERO:
            return {name: nir.IF(r=full(1.0 / DT), v_threshold=full(threshold), v_reset=full(0.0))}, [], name, name
        membrane_node = nir.I(r=full(1.0 / DT))
    elif reset is Reset.ZERO:
        tau, r = exact_tau(beta)
        node = nir.LIF(tau=full(tau), r=full(r), v_leak=full(0.0), v_threshold=full(threshold), v_reset=full(0.0))
        return {name: node}, [], name, name
    else:
        tau, r = exact_tau(beta)
        membrane_node = nir.LI(tau=full(tau), r=full(r), v_leak=full(0.0))
    membrane, reset_name = f"{name}_membrane", f"{name}_reset"
    nodes = {membrane: membrane_node,
             name: nir.Threshold(threshold=full(threshold)),
             reset_name: nir.Scale(scale=full(-beta * theta))}
    return nodes, [(membrane, name), (name, reset_name), (reset_name, membrane)], membrane, name


def nir_graph(layers: list[dict], arrays: dict[str, np.ndarray], cfg: RunConfig, metadata: dict | None = None):
    """The NIR graph of a twin's layer specs and BN-folded arrays (:func:`training.export.model_arrays`)."""
    import nir

    m = cfg.model
    nodes, edges = {"input": nir.Input(input_type={"input": np.array([3, *layers[0]["in_size"]])})}, []
    previous = "input"
    for layer in layers:
        if layer["kind"] != "conv":
            raise NIRExportError(f"stage {layer['name']} is a {layer['kind']} stage, which has no NIR form.")
        name, s, p = layer["name"], layer["stride"], layer["padding"]
        conv = f"{name}_conv"
        nodes[conv] = nir.Conv2d(input_shape=tuple(layer["in_size"]), weight=arrays[f"{name}.weight"],
                                 stride=(s, s), padding=(p, p), dilation=(1, 1), groups=1,
                                 bias=arrays[f"{name}.bias"])
        shape = (layer["c_out"], *layer["out_size"])
        neurons, inner, entry, spikes = _neuron_nodes(name, shape, m.beta, m.theta, m.reset)
        nodes.update(neurons)
        edges += [(previous, conv), (conv, entry), *inner]
        previous = spikes
    last = layers[-1]
    shape = np.array([last["c_out"], *last["out_size"]])
    nodes["flatten"] = nir.Flatten(input_type={"input": shape}, start_dim=0, end_dim=-1)
    nodes["readout"] = nir.Affine(weight=arrays["readout.weight"], bias=arrays["readout.bias"])
    nodes["output"] = nir.Output(output_type={"output": np.array([arrays["readout.bias"].shape[0]])})
    edges += [(previous, "flatten"), ("flatten", "readout"), ("readout", "output")]
    meta = {"convention": CONVENTION, "dt": DT, "steps": m.steps, "beta": m.beta, "theta": m.theta,
            "reset": m.reset.value, "input_mean": arrays["input.mean"], "input_std": arrays["input.std"],
            "input_scale": 1.0 / 255.0, "readout": "mean over steps of node 'readout'", "variant": str(cfg.variant),
            "producer": "bioflexnet export --format nir", **(metadata or {})}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def export_nir(run_dir: Path, out: Path | None = None, n_images: int = 128, data_dir: Path | None = None) -> Path:
    """Write ``RUN/model.nir`` (or ``out``) and its reference ``*.reference.npz``; returns the graph's path."""
    import nir

    from core.export_format import write_export
    from core.results import file_sha256
    from training.data import load_split
    from training.export import build_export, model_arrays
    from training.runs import CHECKPOINT, RunDirError, load_model

    if n_images < 1:
        raise RunDirError(f"--images={n_images}: the export needs at least one reference image.")
    model, cfg = load_model(run_dir)
    why = refusal(cfg)
    if why is not None:
        raise RunDirError(f"{run_dir}: cannot export as NIR: {why}")
    test = load_split("test", data_dir)
    if n_images > len(test):
        raise RunDirError(f"--images={n_images} exceeds the {len(test)} test images.")
    run_info = {"run_dir": str(Path(run_dir).resolve()), "checkpoint_sha256": file_sha256(Path(run_dir) / CHECKPOINT)}
    try:
        layers, arrays = model_arrays(model)
        graph = nir_graph(layers, arrays, cfg, {"source_run_dir": run_info["run_dir"],
                                                "checkpoint_sha256": run_info["checkpoint_sha256"]})
        header, ref_arrays = build_export(model, cfg, test.images[:n_images].numpy(), test.labels[:n_images].numpy(),
                                          run_info=run_info)
    except ValueError as exc:
        raise RunDirError(f"{run_dir}: {exc}") from exc
    path = Path(out) if out is not None else Path(run_dir) / NIR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    nir.write(tmp, graph)
    tmp.replace(path)
    write_export(path.with_suffix(".reference.npz"), header, ref_arrays)
    return path
