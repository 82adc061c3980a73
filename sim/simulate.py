"""Simulate an export in Brian2 and collect spikes, masks and read-out as arrays.

:func:`simulate` is the entry point that chooses the device; it returns a
:class:`SimResult` of plain numpy arrays, which :mod:`sim.results` compares
with the export's PyTorch reference and turns into an xarray Dataset.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import brian2
import numpy as np
from brian2 import ms, mV

from core import equations
from core.errors import UserError
from core.export_format import Export
from sim.biophysics import discrete_to_biophysical
from sim.devices import DEVICES, device_session
from sim.dynamics import SYNAPSES, Dynamics
from sim.model_code import layer_code, mask_unit_model, plasticity_rule
from sim.network import SimNetwork, Timing, build_network

MODES = ("exact", "biophysical")


class SimError(UserError, ValueError):
    """The requested simulation does not fit the export or the options (a user error)."""


@dataclass(frozen=True)
class SimOptions:
    """What to simulate and how (physical values in ms / mV; ``None``: the export's trained physics)."""

    n_images: int
    mode: str = "exact"
    device: str = "runtime"
    plasticity: bool = False
    ticks: int | None = None  # ticks per discrete step; None: the export's K (exact mode: 1)
    synapse: str = "delta"  # biophysical mode: how a spike drives its targets, "delta" | "pulse" (sim.dynamics)
    tau_m_ms: float | None = None  # None: the export's (core.equations.PHYSICS_DEFAULTS)
    v_rest_mv: float | None = None
    v_threshold_mv: float | None = None
    refractory_ms: float | None = None  # None: one step
    build_dir: Path | None = None
    build_only: bool = False
    fresh_poisson: bool = False  # Poisson exports: new input spikes instead of the reference's
    seed: int = 0  # Brian2's random numbers (fresh Poisson input)


class SimResult(NamedTuple):
    """What a simulation gives; with ``--build-only`` (``ran`` False) the arrays are empty and only the
    build timings are filled."""

    spikes: dict[str, np.ndarray]  # neuron layer -> bool [N, T, C, H, W] (fired during that step)
    masks: dict[str, dict[str, np.ndarray]]  # flex layer -> {mbar, b, rs, ri: [N, T*K, C]}
    logits: np.ndarray  # [N, classes] read-out at the end of each image
    latency: dict[str, float]  # neuron layer -> mean time of its spikes after image onset (s, tick ends)
    timing: Timing
    timings: dict[str, float]  # seconds
    spike_ticks: dict[str, np.ndarray] | None = None  # neuron layer -> [N, T, C, H, W] tick of the step's first spike (K: none)
    ran: bool = True  # False: the standalone project was generated and compiled, not run (build_only)


def make_timing(export: Export, options: SimOptions) -> Timing:
    """Ticks per step and physical parameters of a mode (raises :class:`SimError` for impossible choices).

    The physics defaults to the export's: K ticks per step, tau_m, V_rest, V_th and a refractory period
    of one step, i.e. the dynamics the network was trained with (``training.forward``).
    """
    if options.mode not in MODES:
        raise SimError(f"mode {options.mode!r} is not one of {MODES}.")
    if options.synapse not in SYNAPSES:
        raise SimError(f"synapse {options.synapse!r} is not one of {SYNAPSES}.")
    trained = export.ticks
    if options.mode == "exact":
        physical = {"--ticks": options.ticks not in (None, 1), "--synapse": options.synapse != "delta",
                    "--tau-m-ms": options.tau_m_ms is not None, "--refractory-ms": options.refractory_ms is not None,
                    "--v-rest-mv": options.v_rest_mv is not None,
                    "--v-threshold-mv": options.v_threshold_mv is not None}
        given = [flag for flag, on in physical.items() if on]
        if given:
            raise SimError(f"exact mode runs one tick per PyTorch step with the discrete update and no physical "
                           f"units; {', '.join(given)} only apply to --mode biophysical.")
        if trained > 1:
            raise SimError(f"this network was trained at {trained} ticks per step (model.ticks={trained}); exact mode "
                           f"simulates the one-tick discrete model, a different dynamical system. Use --mode "
                           f"biophysical (default --ticks {trained}, the trained resolution).")
        return Timing("exact", 1, None)
    ticks = trained if options.ticks is None else options.ticks
    if ticks < 1:
        raise SimError(f"--ticks={ticks} must be >= 1 (ticks per PyTorch step).")
    phys = export.physics
    tau_m = phys.tau_m_ms if options.tau_m_ms is None else options.tau_m_ms
    if not tau_m > 0:
        raise SimError(f"--tau-m-ms={tau_m}: the membrane time constant must be positive.")
    step_ms = equations.step_ms(export.model.beta, tau_m) if 0.0 < export.model.beta < 1.0 else None
    refractory_ms = options.refractory_ms
    if refractory_ms is None and export.model.refractory == "none":
        refractory_ms = 0.0  # trained without a refractory period (model.refractory=none)
    if options.refractory_ms is not None and step_ms is not None and options.refractory_ms != 0.0:
        dt_ms, ref = step_ms / ticks, options.refractory_ms
        refractory_ticks = ref / dt_ms
        if ref < dt_ms * (1 - 1e-9) or abs(refractory_ticks - round(refractory_ticks)) > 1e-6:
            raise SimError(f"--refractory-ms={ref} is not 0 (none) or a whole number (>= 1) of ticks of dt = "
                           f"{dt_ms:.6g} ms (one step = {step_ms:.6g} ms, {ticks} ticks); give e.g. {step_ms:.6g} "
                           "(one step).")
    try:
        bio = discrete_to_biophysical(export.model.beta, export.model.theta, tau_m * ms,
                                      (phys.v_rest_mv if options.v_rest_mv is None else options.v_rest_mv) * mV,
                                      (phys.v_threshold_mv if options.v_threshold_mv is None
                                       else options.v_threshold_mv) * mV,
                                      None if refractory_ms is None else refractory_ms * ms)
    except ValueError as exc:
        raise SimError(str(exc)) from exc
    return Timing("biophysical", ticks, bio, options.synapse)


def check_options(export: Export, options: SimOptions) -> Timing:
    """Validate everything that can be checked before Brian2 starts."""
    if options.device not in DEVICES:
        raise SimError(f"device {options.device!r} is not one of {DEVICES}.")
    if not 1 <= options.n_images <= export.n_reference:
        raise SimError(f"--images={options.n_images}: the export holds {export.n_reference} reference images; "
                       f"ask for 1..{export.n_reference}, or export again with `bioflexnet export RUN_DIR --images N`.")
    if options.fresh_poisson and export.model.encoding != "poisson":
        raise SimError("--fresh-poisson needs a Poisson-encoded export; this one feeds the image as a current.")
    return make_timing(export, options)


def collect(net: SimNetwork, export: Export, n_images: int, timing: Timing) -> tuple[dict, dict, np.ndarray, dict,
                                                                                    dict]:
    """Monitors -> dense arrays (image-major, then step / tick)."""
    steps, k = export.steps, timing.ticks
    dt = float(timing.dt)
    spikes, latency, spike_ticks = {}, {}, {}
    for layer in export.neuron_layers:
        mon = net.spikes[layer.name]
        tick = np.rint(np.asarray(mon.t) / dt).astype(np.int64)
        # a spike found at tick k crossed threshold during [k dt, (k+1) dt): count it at the tick's end
        latency[layer.name] = float(np.mean(tick % (steps * k) + 1) * dt) if tick.size else float("nan")
        dense = np.zeros((n_images * steps, layer.n_out), dtype=bool)
        dense[tick // k, np.asarray(mon.i)] = True  # row: (image, step)
        spikes[layer.name] = dense.reshape(n_images, steps, layer.c_out, *layer.out_size)
        first = np.full((n_images * steps, layer.n_out), k, dtype=np.int64)  # tick of the step's first spike
        np.minimum.at(first, (tick // k, np.asarray(mon.i)), tick % k)
        spike_ticks[layer.name] = first.reshape(n_images, steps, layer.c_out, *layer.out_size)
    masks = {}
    for name, mon in net.masks.items():
        masks[name] = {var: np.asarray(getattr(mon, var)).T.reshape(n_images, steps * k, -1)
                       for var in ("mbar", "b", "rs", "ri")}
    readout = np.asarray(net.readout.y).T  # [ticks, classes]
    logits = readout[steps * k - 1::steps * k]
    return spikes, masks, logits, latency, spike_ticks


def simulate(export: Export, options: SimOptions) -> SimResult:
    """Build and run the network on ``options.device`` (only build it with ``options.build_only``:
    then ``result.ran`` is False and the arrays are empty).

    Raises
    ------
    SimError
        For options that do not fit the export.
    sim.devices.DeviceError
        If the device cannot be used here (``NoGPUError`` after a CUDA build without a GPU).
    """
    timing = check_options(export, options)
    images = export.arrays["ref.images"][:options.n_images]
    with device_session(options.device, options.build_dir, options.build_only) as session:
        brian2.seed(options.seed)
        t0 = time.perf_counter()
        net = build_network(export, images, timing, options.plasticity, options.fresh_poisson)
        build_s = time.perf_counter() - t0
        if not session.run(net.network, net.duration):
            classes = export.model.num_classes
            return SimResult({}, {}, np.zeros((0, classes)), {}, timing,
                             {"build_network_s": build_s, **session.timings}, None, ran=False)
        spikes, masks, logits, latency, spike_ticks = collect(net, export, options.n_images, timing)
        timings = {"build_network_s": build_s, **session.timings}
    timings["simulate_per_image_s"] = timings["simulate_s"] / options.n_images
    return SimResult(spikes, masks, logits, latency, timing, timings, spike_ticks)


def neuron_model_text(export: Export, options: SimOptions) -> str:
    """The Brian2 code of the export's neurons in the mode of ``options``, as one printable block.

    One block per kind of neuron layer (the analog first layer, spike-driven flex or conv layers), as
    :func:`sim.network.build_network` builds them (:func:`sim.model_code.layer_code`), then the per-channel
    mask unit and its plasticity rule, the synapses' code and the constants.

    Raises
    ------
    SimError
        For options that do not fit the export (as :func:`simulate`).
    """
    timing = make_timing(export, options)
    model = export.model
    dyn = Dynamics(model, export.steps, 1, timing.ticks, timing.dt, timing.bio, timing.synapse)
    direct = model.encoding == "direct"
    kinds: dict[tuple[str, bool], list[str]] = {}
    for layer in export.neuron_layers:
        kinds.setdefault((layer.kind, direct and layer.name == export.layers[0].name), []).append(layer.name)
    mode = f"{timing.mode} mode" + ("" if timing.bio is None else f" (K = {timing.ticks}, {timing.synapse} synapses)")
    parts = [f"# Brian2 neuron code, {mode}, mask_sigma = {model.mask_sigma} (sim.model_code)"]
    for (kind, analog), names in kinds.items():
        source = "the image (TimedArrays conv_in, pool_in; sim.analog)" if analog else "spikes through synapses"
        code = layer_code(dyn, kind == "flex", model.mask_sigma, analog, timing.ticks)
        parts.append(f"## {kind} layer{'s' if len(names) > 1 else ''} {', '.join(names)}, driven by {source}\n"
                     + code.text().rstrip())
    if any(kind == "flex" for kind, _ in kinds):
        parts.append("## mask unit per channel of a flex layer (L_mask), moments summed over positions\n"
                     "model:\n" + "".join(f"    {line}\n" for line in mask_unit_model().strip().splitlines())
                     + f"plasticity (every tick, with --plasticity):\n    {plasticity_rule()}\n"
                     f"    in the mask unit's namespace: plasticity_rate_tick = model.plasticity_rate / (T K) = "
                     f"{model.plasticity_rate} / "
                     f"{export.steps * timing.ticks}, plasticity_decay_tick = model.plasticity_decay / (T K) = "
                     f"{model.plasticity_decay} / {export.steps * timing.ticks}")
    on_pre = dyn.drive("acc_c", False)["on_pre"]
    parts.append("## synapses (conv path into acc_c, channel map into acc_p)\n"
                 f"on_pre: {on_pre}")
    parts.append("## constants\n" + "".join(f"{k} = {v}\n" for k, v in dyn.constants.items()).rstrip())
    return "\n\n".join(parts)
