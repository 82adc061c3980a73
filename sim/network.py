"""A Brian2 network of LIF neurons built from an export (docs/model.md, "Brian2").

Objects (``L`` = layer name): ``L`` a NeuronGroup per neuron layer (NCHW
order), ``L_or`` a relay group per max-pool (logical OR of the spikes in a
window), ``L_mask`` one unit per channel of a flex layer holding the plastic
bias ``b``, ``readout`` the linear read-out. Synapses: ``L_conv`` (conv
path), ``L_pool_in`` (window -> OR relay), ``L_pool`` (relay -> layer,
weights = channel map), ``L_drive`` (summed pathway drives per channel),
``readout_in``.

Time. One discrete (PyTorch) step lasts ``K`` ticks of ``dt``; an image lasts
``T`` steps and images follow each other without a gap. ``exact`` mode has
``K = 1`` and the discrete update ``v = beta v + u``; ``biophysical`` mode a
continuous-time LIF in physical units (:mod:`sim.dynamics`, :mod:`sim.biophysics`).
At the start of each image the membranes return to rest.

Schedule within a tick. Brian2's default order (all updates, then all
thresholds, then synapses) would delay every layer by one tick. Instead
every object runs in the ``groups`` slot with an explicit increasing
``order``, layer by layer: incoming synapses, the layer's update, its
pathway drives and plasticity, threshold, reset; then the next layer. The
clearing of inputs and the image bookkeeping run in the ``start`` slot,
monitors in ``end``.

Neuron code. Each layer's model, update, threshold and reset come from
:func:`sim.model_code.layer_code`, which renders the flex equations of
:mod:`core.equations` (mask ``m = sigma(scale (Ip - thr) + shift + (eta[step] + b))``,
current ``u = Ip + m (Ic - Ip)``); :func:`sim.simulate.flex_neuron_model` prints it.

Ties. The update is rendered from the same :mod:`core.equations` as the PyTorch
reference (:func:`training.export.reference_forward`), in its operation order,
but the two still differ in the last bits: synaptic inputs are summed in another
order (a conv in PyTorch, a sequence of ``+= w`` here), and Brian2's sympy pass
re-associates sums and turns ``z / 6.0`` into ``0.1666...*z`` (a few ulp,
``tests/test_equations.py``). A neuron whose membrane lies within ~1e-15 of the
threshold may fire in one and not the other. None was seen on 200 test images of the
quick models (36k neurons, 2 steps).

Plasticity (online version of ``PlasticFlexLayer.apply_plasticity``): every
tick, ``b += lambda/(T K) * (r_sel - r_inv) - delta/(T K) * b`` per channel,
with the tick's scale-free drives ``mean relu(x) / sqrt(mean x^2 + eps)`` of
the conv (``Ic``) and pool (``Ip``) paths, the means over positions; the new
``b`` acts from the next tick. Over one image of ``T`` steps at ``K = 1`` this is
PyTorch's update with the per-image drives of :mod:`core.equations` (a
batch of one image), to first order in ``delta`` (exactly for ``T = 1``), except
that ``b`` already changes within the image. Under delta synapses the drives are
computed from rates: the tick's charge times ``K`` (plus the held bias).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from brian2 import (Network, NeuronGroup, Quantity, SpikeMonitor, StateMonitor, Synapses, TimedArray, defaultclock,
                    linked_var, ms)

from core.export_format import Export, LayerSpec
from sim.analog import first_layer_drives
from sim.biophysics import BiophysicalParams
from sim.connectivity import Connections, channel_map_connections, conv_connections, pool_connections
from sim.dynamics import Dynamics
from sim.model_code import MOMENTS, layer_code, mask_unit_model, plasticity_rule

EXACT_TICK = 1 * ms  # nominal duration of one step in exact mode (the discrete model has no time unit)


class Timing(NamedTuple):
    """How discrete steps map to simulation ticks."""

    mode: str  # "exact" | "biophysical"
    ticks: int  # K ticks per discrete step
    bio: BiophysicalParams | None  # physical parameters (biophysical mode)
    synapse: str = "delta"  # biophysical mode: "delta" | "pulse" (sim.dynamics)

    @property
    def dt(self) -> Quantity:
        return EXACT_TICK if self.bio is None else self.bio.step / self.ticks


class SimNetwork(NamedTuple):
    network: Network
    duration: Quantity
    spikes: dict[str, SpikeMonitor]  # neuron layer -> its spikes
    masks: dict[str, StateMonitor]  # flex layer -> per-channel mbar, b, rs, ri every tick
    readout: StateMonitor  # y = bias + acc / T, every tick


class _Schedule:
    """Hands out increasing ``order`` values in the ``groups`` slot."""

    def __init__(self) -> None:
        self.order = 0

    def __call__(self, *objects) -> None:
        for obj in objects:
            obj.when, obj.order = "groups", self.order
            self.order += 1


class _Builder:
    def __init__(self, export: Export, n_images: int, timing: Timing):
        self.export, self.timing, self.n_images, self.objects = export, timing, n_images, []
        self.dyn = Dynamics(export.model, export.steps, n_images, timing.ticks, timing.dt, timing.bio,
                            timing.synapse)
        self.relays: set[str] = set()  # names of relay groups (they signal on/off events, not spikes)
        # brian2cuda 1.0a7's synapse code refers to `defaultclock` by name, so the network runs on it;
        # device_session restores it afterwards
        defaultclock.dt = timing.dt
        self.clock = defaultclock
        self.schedule = _Schedule()

    def add(self, *objects):
        self.objects.extend(objects)
        return objects[0]

    def synapses(self, name: str, source, target, conn: Connections, target_var: str, weighted: bool = True):
        """Synapses through which ``source`` drives ``target_var`` of ``target`` (scheduled now)."""
        kwargs = self.dyn.drive(target_var, source.name in self.relays, weighted)
        syn = self.add(Synapses(source, target, "w : 1 (constant)" if weighted else "", clock=self.clock,
                                namespace=dict(self.dyn.namespace), name=name, **kwargs))
        syn.connect(i=conn.pre, j=conn.post)
        if weighted:
            syn.w = conn.weight
        on_pre = kwargs.get("on_pre")
        pathways = [getattr(syn, p) for p in on_pre] if isinstance(on_pre, dict) else [syn.pre]
        self.schedule(*pathways)
        return syn

    def relay(self, name: str, source, layer: LayerSpec) -> NeuronGroup:
        """OR of the source spikes over each max-pool window."""
        relay = self.add(NeuronGroup(layer.c_in * layer.out_size[0] * layer.out_size[1], **self.dyn.relay(),
                                     clock=self.clock, namespace={**self.dyn.namespace, **self.dyn.constants},
                                     name=name))
        relay.run_regularly(self.dyn.relay_start(), when="start")
        conn = pool_connections(layer.c_in, layer.in_size, layer.out_size, layer.kernel, layer.stride, layer.padding)
        self.synapses(f"{name}_in", source, relay, conn, "n", weighted=False)
        self.relays.add(name)
        if self.dyn.impulse:
            self.schedule(relay.thresholder["spike"], relay.resetter["spike"])
        else:
            relay.run_on_event("on", "active = 1")
            relay.run_on_event("off", "active = 0")
            self.schedule(relay.thresholder["on"], relay.resetter["on"], relay.thresholder["off"],
                          relay.resetter["off"])
        return relay

    def layer(self, layer: LayerSpec, source, drives: tuple[np.ndarray, np.ndarray | None] | None,
              plasticity: bool) -> tuple[NeuronGroup, StateMonitor | None]:
        """Neurons of a conv or flex layer fed by ``source`` spikes, or by analog ``drives`` (first layer)."""
        a, name, flex, dyn = self.export.arrays, layer.name, layer.kind == "flex", self.dyn
        ns = {**dyn.namespace, **dyn.constants}
        code = layer_code(dyn, flex, self.export.model.mask_sigma, drives is not None, self.timing.ticks)
        group = self.add(NeuronGroup(layer.n_out, code.model, threshold=code.threshold, reset=code.reset,
                                     clock=self.clock, namespace=ns, name=name))
        channel = np.repeat(np.arange(layer.c_out), layer.out_size[0] * layer.out_size[1])
        group.ch = channel
        group.bias = a[f"{name}.bias"][channel]
        group.v = dyn.v_init
        group.run_regularly(code.start, when="start")
        if drives is None:  # spikes of the previous stage drive the conv path through synapses
            conn = conv_connections(a[f"{name}.weight"], layer.in_size, layer.out_size, layer.stride, layer.padding)
            self.synapses(f"{name}_conv", source, group, conn, "acc_c")
        else:  # analog first layer: both pathways computed from the image (sim.analog)
            duration = self.export.steps * self.timing.ticks * self.timing.dt
            ns["conv_in"] = TimedArray(drives[0], dt=duration)
            if drives[1] is not None:
                ns["pool_in"] = TimedArray(drives[1], dt=duration)
        if flex:
            self._mask(layer, group, channel, ns, source if drives is None else None)
        self.schedule(group.run_regularly(code.update, when="groups", name=f"{name}_update"))
        monitor = self.mask_group(layer, group, channel, plasticity) if flex else None
        self.schedule(group.thresholder["spike"], group.resetter["spike"])
        return group, monitor

    def _mask(self, layer: LayerSpec, group: NeuronGroup, channel: np.ndarray, ns: dict, source) -> None:
        """Pool path (from ``source`` spikes, unless analog) and the mask's parameters."""
        a, name = self.export.arrays, layer.name
        if source is not None:
            relay = self.relay(f"{name}_or", source, layer)
            conn = channel_map_connections(a[f"{name}.pool_map"], layer.out_size)
            self.synapses(f"{name}_pool", relay, group, conn, "acc_p")
        group.thr = a[f"{name}.threshold"].ravel()
        group.lscale = a[f"{name}.logit_scale"][channel]
        group.lshift = a[f"{name}.logit_shift"][channel]
        ns["eta"] = TimedArray(np.tile(a[f"{name}.eta"], (self.n_images, 1)), dt=self.timing.ticks * self.timing.dt)

    def mask_group(self, layer: LayerSpec, group: NeuronGroup, channel: np.ndarray, plasticity: bool) -> StateMonitor:
        """Per-channel plastic bias ``b`` with its pathway drives; returns the monitor of mbar, b, rs, ri.

        ``rsel`` / ``rinv`` of a neuron are the tick's conv / pool path; the drives of
        :func:`core.equations.pathway_drive` are rendered from their channel means of ``relu(x)`` and
        ``x**2`` (:data:`core.equations.DRIVE`), the update from ``PLASTICITY`` with the
        per-step plasticity_rate and plasticity_decay spread over the ``T K`` ticks of an image.
        """
        name, a, model = layer.name, self.export.arrays, self.export.model
        ticks_per_image = self.export.steps * self.timing.ticks
        masks = self.add(NeuronGroup(layer.c_out, mask_unit_model(), clock=self.clock, name=f"{name}_mask",
                                     namespace={"plasticity_rate_tick": model.plasticity_rate / ticks_per_image,
                                                "plasticity_decay_tick": model.plasticity_decay / ticks_per_image}))
        masks.b = a[f"{name}.plastic_bias"]
        group.b = linked_var(masks, "b", index=channel)
        drives = self.add(Synapses(group, masks, "\n".join(f"{v}_post = {e}*inv_npos : 1 (summed)"
                                                            for v, e in MOMENTS.items()),
                                   namespace={"inv_npos": 1.0 / (layer.out_size[0] * layer.out_size[1])},
                                   clock=self.clock, name=f"{name}_drive"))
        drives.connect(i=np.arange(layer.n_out), j=channel)
        self.schedule(*(drives.summed_updaters[f"{v}_post"] for v in MOMENTS))
        if plasticity:
            self.schedule(masks.run_regularly(plasticity_rule(), when="groups", name=f"{name}_plasticity"))
        return self.add(StateMonitor(masks, ["mbar", "b", "rs", "ri"], record=True, when="end",
                                     name=f"{name}_mask_monitor"))

    def poisson_input(self, images: np.ndarray, fresh: bool) -> NeuronGroup:
        """Pixel neurons firing at the start of each step with the pixel value as probability.

        Replays the export's reference input spikes, or draws new ones (``fresh``) with Brian2's ``rand()``.
        """
        n, steps, k = len(images), self.export.steps, self.timing.ticks
        ns = dict(self.dyn.namespace)
        if fresh:
            ns["p"] = TimedArray(images.reshape(n, -1) / 255.0, dt=steps * k * self.timing.dt)
            threshold = "step_start(t) > 0.5 and rand() < p(t, i)"
        else:
            spikes = self.export.reference_spikes("input", n).reshape(n * steps, -1)
            ns["replay"] = TimedArray(spikes.astype(np.float64), dt=k * self.timing.dt)
            threshold = "step_start(t) > 0.5 and replay(t, i) > 0.5"
        group = self.add(NeuronGroup(images[0].size, "", threshold=threshold, clock=self.clock, namespace=ns,
                                     name="input"))
        self.schedule(group.thresholder["spike"])
        return group

    def readout(self, source) -> StateMonitor:
        """Linear read-out ``y = bias + (1/T) sum over ticks of W x / K`` (x: the source's activity).

        In exact mode ``x`` is the spikes of the tick, so ``y`` is PyTorch's mean over steps of
        ``W s[t] + bias``; in biophysical mode it is the time average of the pulses / relay states, or
        (delta synapses) the charge of the spikes divided by ``T``.
        """
        a, k = self.export.arrays, self.timing.ticks
        group = self.add(NeuronGroup(len(a["readout.bias"]), "drive : 1\nacc : 1\nbias : 1 (constant)\n"
                                     "y = bias + acc/steps : 1", clock=self.clock,
                                     namespace={**self.dyn.namespace, "steps": self.export.steps,
                                                "ticks": float(k)}, name="readout"))
        group.bias = a["readout.bias"]
        clear = "drive = 0" if self.dyn.impulse else "drive = drive*(1 - image_start(t))"
        group.run_regularly(f"acc = acc*(1 - image_start(t))\n{clear}", when="start")
        weight = a["readout.weight"]
        post, pre = np.nonzero(np.ones_like(weight, dtype=bool))
        self.synapses("readout_in", source, group, Connections(pre, post, weight[post, pre]), "drive")
        per_tick = "drive" if self.dyn.delta else "drive/ticks"  # a delta input is the charge of the tick
        self.schedule(group.run_regularly(f"acc += {per_tick}", when="groups", name="readout_update"))
        return self.add(StateMonitor(group, "y", record=True, when="end", name="readout_monitor"))


def build_network(export: Export, images: np.ndarray, timing: Timing, plasticity: bool = False,
                  fresh_poisson: bool = False) -> SimNetwork:
    """The Brian2 network of ``export`` presenting ``images`` (uint8 ``[N, 3, 32, 32]``) one after another.

    Direct encoding feeds the image as a constant current (the first layer's
    pathways from :mod:`sim.analog`); Poisson encoding feeds spikes of pixel
    neurons through synapses like every other layer.

    Parameters
    ----------
    export
        A validated export (:func:`core.export_format.read_export`).
    images
        The input images; each is shown for T frames of ``timing.ticks`` ticks.
    timing
        Mode, ticks per step and physical parameters (see :func:`make_timing`).
    plasticity
        Run the online plasticity rule on every flex layer's mask bias.
    fresh_poisson
        Poisson-encoded exports: draw new input spikes instead of replaying the reference's.
    """
    n_images = len(images)
    builder = _Builder(export, n_images, timing)
    spikes, masks, source = {}, {}, None
    direct = export.model.encoding == "direct"
    if not direct:
        source = builder.poisson_input(images, fresh_poisson)
    for index, layer in enumerate(export.layers):
        if layer.kind == "pool":
            source = builder.relay(f"{layer.name}_or", source, layer)
            continue
        drives = first_layer_drives(export, images) if index == 0 and direct else None
        source, monitor = builder.layer(layer, source, drives, plasticity)
        spikes[layer.name] = builder.add(SpikeMonitor(source, when="end", name=f"{layer.name}_spikes"))
        if monitor is not None:
            masks[layer.name] = monitor
    readout = builder.readout(source)
    duration = n_images * export.steps * timing.ticks * timing.dt
    network = Network(*builder.objects, name="bioflexnet")
    return SimNetwork(network, duration, spikes, masks, readout)
