"""A Brian2 network built from a checked NIR graph (:class:`sim.nir_graph.GraphPlan`).

Objects (``X`` = the node's name made a Python identifier, prefixed ``nir_``):
``X`` one NeuronGroup per node but the outputs; ``X_in`` the Synapses of each
incoming edge (``X_in`` for the first, ``X_in1``, ... for further ones).

Signals. Every node holds its value of the current tick: ``out`` for analog
nodes (Input, the linear maps, LI, CubaLI, I), spikes (0/1 per tick) for the
spiking ones (Threshold, IF, LIF, CubaLIF). An edge from a spiking node is an
event-driven synapse (``e_post += w`` for every spike of the tick), an edge from
an analog node a summed variable (``e_post = w out_pre``); each incoming edge
has its own variable ``e0``, ``e1``, ... and a node's input ``I`` is their sum.
A linear node's map (Affine, Linear, Conv2d, pools, Scale, Flatten) is the
weights of its incoming synapses, built with :mod:`sim.connectivity`; a neuron
or Threshold node receives its input one to one.

Time. One tick of ``dt``; within a tick every object runs in the ``groups``
slot in the plan's evaluation order (a spike crosses every layer in the tick it
is emitted): a node's incoming synapses, its update, threshold, reset. Back
edges (cycles) run first and carry the previous tick's value. An input sample
lasts ``T`` ticks; samples follow each other, and at the start of each one the
state returns to rest (``v = v_leak``, synaptic currents 0) and back edges
carry nothing.

Updates (forward Euler, :func:`sim.nir_graph.coefficients`)::

    LIF / LI        v = a*v + g*I + c        (a = 1 - dt/tau, g = dt R/tau, c = dt v_leak/tau)
    CubaLIF/CubaLI  isyn = sa*isyn + sg*I;  v = a*v + g*isyn + c
    IF / I          v = v + g*I              (g = dt R)
    spike           v > v_threshold  ->  v = v_reset          (Threshold: I > threshold)

Where every neuron of a node has ``g = 1`` and ``c = 0`` the update is written
``v = a*v + I`` (the discrete LIF of snnTorch and of this project, bit for bit).
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
from brian2 import Network, NeuronGroup, SpikeMonitor, StateMonitor, Synapses, TimedArray, defaultclock, second

from sim.connectivity import Connections, conv_connections, pool_connections
from sim.nir_graph import ANALOG_NEURONS, LINEAR, GraphPlan, NodePlan


class NIRNetwork(NamedTuple):
    network: Network
    duration: object  # Brian2 Quantity
    spikes: dict[str, SpikeMonitor]  # spiking node -> its spikes
    outputs: dict[str, object]  # Output node -> SpikeMonitor (spiking source) or StateMonitor of `out`


def brian_name(name: str) -> str:
    """A node name as a Brian2 object name (an identifier, unique per distinct name)."""
    return "nir_" + re.sub(r"\W", "_", name)


def _connections(node: NodePlan, src: NodePlan) -> Connections:
    """The synapses that apply ``node``'s map to the values of ``src`` (one to one for neurons)."""
    p, g = node.params, node.geometry
    n = src.size
    if node.kind == "Conv2d":
        return conv_connections(p["weight"], g["in_size"], g["out_size"], g["stride"], g["padding"])
    if node.kind in ("SumPool2d", "AvgPool2d"):
        conn = pool_connections(node.in_shape[0], g["in_size"], g["out_size"], g["kernel"], g["stride"],
                                g["padding"])
        return conn._replace(weight=conn.weight * g["scale"])
    if node.kind in ("Affine", "Linear"):
        post, pre = np.nonzero(np.ones_like(p["weight"], dtype=bool))
        return Connections(pre, post, p["weight"][post, pre])
    weight = p["scale"] if node.kind == "Scale" else np.ones(n)
    return Connections(np.arange(n), np.arange(n), np.asarray(weight, dtype=np.float64))


def _all(values: np.ndarray, target: float) -> bool:
    return bool(np.all(values == target))


def _update(node: NodePlan, inputs: str) -> tuple[str, str]:
    """Model equations and the per-tick update of a node (input expression ``inputs``)."""
    k, p = node.kind, node.params
    edges = "".join(f"e{i} : 1\n" for i in range(len(node.sources) + len(node.back_sources)))
    if k == "Input":
        return "out : 1\n", "out = stimulus(t, i)"
    if k in LINEAR:
        bias = "bias" in p
        return edges + "out : 1\n" + ("bias : 1 (constant)\n" if bias else ""), \
            f"out = {inputs}" + (" + bias" if bias else "")
    plain = "g" in p and _all(p["g"], 1.0) and _all(p.get("c", np.zeros(1)), 0.0)
    state = "out" if k in ANALOG_NEURONS else "v"
    lines, model = [f"I = {inputs}"], edges + f"I : 1\n{state} : 1\n"
    model += "".join(f"{q} : 1 (constant)\n" for q in sorted(p) if not (plain and q in ("g", "c")))
    drive = "I"
    if k in ("CubaLIF", "CubaLI"):
        model += "isyn : 1\n"
        lines.append("isyn = sa*isyn + " + ("I" if _all(p["sg"], 1.0) else "sg*I"))
        drive = "isyn"
    if k in ("LIF", "LI", "CubaLIF", "CubaLI"):
        lines.append(f"{state} = a*{state} + {drive}" if plain else f"{state} = a*{state} + g*{drive} + c")
    elif k in ("IF", "I"):
        lines.append(f"{state} = {state} + {drive}" if plain else f"{state} = {state} + g*{drive}")
    return model, "\n".join(lines)


class _Builder:
    def __init__(self, plan: GraphPlan, stimulus: np.ndarray, steps: int):
        self.plan, self.steps, self.objects, self.order = plan, steps, [], 0
        self.dt = plan.dt * second
        # brian2cuda's synapse code refers to `defaultclock` by name (as in sim.network); device_session restores it
        defaultclock.dt = self.dt
        first = np.zeros(steps)
        first[0] = 1.0
        n = stimulus.shape[0]
        self.namespace = {"fresh": TimedArray(np.tile(first, n), dt=self.dt),
                          "stimulus": TimedArray(stimulus.reshape(n * steps, -1), dt=self.dt)}
        self.groups: dict[str, NeuronGroup] = {}

    def schedule(self, *objects) -> None:
        for obj in objects:
            obj.when, obj.order = "groups", self.order
            self.order += 1

    def add(self, obj):
        self.objects.append(obj)
        return obj

    def group(self, node: NodePlan) -> NeuronGroup:
        model, _ = _update(node, _inputs(node))
        spiking = node.spiking
        threshold = ("I > vth" if node.kind == "Threshold" else "v > vth") if spiking else None
        reset = ("" if node.kind == "Threshold" else "v = vreset") if spiking else None
        group = self.add(NeuronGroup(node.size, model, threshold=threshold, reset=reset, namespace=self.namespace,
                                     name=brian_name(node.name)))
        for key, values in node.params.items():
            if f"{key} : 1 (constant)" in model:
                setattr(group, key, values)
        state = "out" if node.kind in ANALOG_NEURONS else "v"
        rest = [f"{state} = v0*fresh(t) + {state}*(1 - fresh(t))"] if "v0" in node.params else []
        if node.kind in ("CubaLIF", "CubaLI"):
            rest.append("isyn = isyn*(1 - fresh(t))")
        if "v0" in node.params:
            setattr(group, state, node.params["v0"])
        clear = [f"e{i} = 0" for i in range(len(node.sources) + len(node.back_sources))
                 if self.plan.nodes[(node.sources + node.back_sources)[i]].spiking]
        if rest or clear:
            group.run_regularly("\n".join(rest + clear), when="start", name=f"{group.name}_start")
        self.groups[node.name] = group
        return group

    def edge(self, node: NodePlan, src: NodePlan, index: int, back: bool):
        """Synapses carrying ``src``'s value into ``e{index}`` of ``node``; scheduled unless a back edge."""
        conn = _connections(node, src)
        var = f"e{index}"
        if src.spiking:
            kwargs = {"on_pre": f"{var}_post += w"}
            model = "w : 1 (constant)"
        else:
            kwargs = {}
            model = f"w : 1 (constant)\n{var}_post = w*out_pre : 1 (summed)"
        suffix = "" if index == 0 else str(index)
        syn = self.add(Synapses(self.groups[src.name], self.groups[node.name], model, namespace=self.namespace,
                                name=f"{brian_name(node.name)}_in{suffix}", **kwargs))
        syn.connect(i=conn.pre, j=conn.post)
        syn.w = conn.weight
        return syn.pre if src.spiking else syn.summed_updaters[f"{var}_post"]


def build_nir_network(plan: GraphPlan, stimulus: np.ndarray) -> NIRNetwork:
    """The Brian2 network of ``plan`` presenting ``stimulus`` ``[N, T, *input shape]`` sample after sample.

    Parameters
    ----------
    plan
        A checked graph (:func:`sim.nir_graph.plan_graph`).
    stimulus
        The input node's value at every tick: ``N`` samples of ``T`` ticks each, float64.
    """
    n, steps = stimulus.shape[:2]
    builder = _Builder(plan, stimulus, steps)
    nodes = [node for node in plan.nodes.values() if node.kind != "Output"]
    for node in nodes:
        builder.group(node)
    back_edges, forward = [], {}
    for node in nodes:
        forward[node.name] = [builder.edge(node, plan.nodes[s], i, False) for i, s in enumerate(node.sources)]
        offset = len(node.sources)
        back_edges += [builder.edge(node, plan.nodes[s], offset + i, True) for i, s in enumerate(node.back_sources)]
    builder.schedule(*back_edges)  # the previous tick's values, before any node updates
    for node in nodes:
        group = builder.groups[node.name]
        builder.schedule(*forward[node.name])
        builder.schedule(group.run_regularly(_update(node, _inputs(node))[1], when="groups",
                                             name=f"{group.name}_update"))
        if node.spiking:
            builder.schedule(group.thresholder["spike"])
            if node.kind != "Threshold":
                builder.schedule(group.resetter["spike"])
    spikes = {node.name: builder.add(SpikeMonitor(builder.groups[node.name], when="end",
                                                  name=f"{brian_name(node.name)}_spikes"))
              for node in nodes if node.spiking}
    outputs = {}
    for name in plan.outputs:
        src = plan.nodes[plan.nodes[name].sources[0]]
        outputs[name] = spikes[src.name] if src.spiking else builder.add(
            StateMonitor(builder.groups[src.name], "out", record=True, when="end",
                         name=f"{brian_name(name)}_monitor"))
    duration = n * steps * builder.dt
    return NIRNetwork(Network(*builder.objects, name="nir"), duration, spikes, outputs)


def _inputs(node: NodePlan) -> str:
    terms = [f"e{i}" for i in range(len(node.sources))]
    terms += [f"e{len(node.sources) + i}*(1 - fresh(t))" for i in range(len(node.back_sources))]
    return " + ".join(terms) or "0"
