"""A NIR graph checked and laid out for Brian2: node kinds, shapes, evaluation order, per-tick coefficients.

NIR (the Neuromorphic Intermediate Representation, ``nir`` on PyPI) states every
neuron as a continuous-time ODE, e.g. LIF ``tau dv/dt = (v_leak - v) + R I``
with a spike when ``v > v_threshold`` and ``v <- v_reset`` after it. This module
reads such a graph (numpy only: no torch, no Brian2) and turns it into a
:class:`GraphPlan`, the input of :mod:`sim.nir_import`:

- every node is one of :data:`SUPPORTED`; anything else is refused by name;
- shapes are propagated from the single ``Input`` node along the edges and each
  node's parameters are checked against the shape it receives;
- edges that close a cycle (found by depth-first search from the input) are
  *back edges*: they carry the previous tick's value; the other edges give the
  order in which nodes run within one tick, so a spike crosses every layer in
  the tick it is emitted, as in snnTorch's and Norse's sequential modules;
- the time step ``dt`` (NIR's time unit, seconds by convention) turns every
  neuron's ODE into the forward-Euler update that snnTorch and Norse use
  (:func:`coefficients`); see ``docs/nir.md``.

All errors are :class:`NIRGraphError`, one line naming the node and the problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import UserError

LINEAR = ("Affine", "Linear", "Conv2d", "Flatten", "Scale", "SumPool2d", "AvgPool2d")
SPIKING = ("Threshold", "IF", "LIF", "CubaLIF")
ANALOG_NEURONS = ("LI", "CubaLI", "I")
SUPPORTED = ("Input", "Output", *LINEAR, *SPIKING, *ANALOG_NEURONS)


class NIRGraphError(UserError, ValueError):
    """A NIR file or graph that cannot be simulated (a user error)."""


@dataclass
class NodePlan:
    """One node: its NIR type, input and output shape, and the parameters Brian2 needs."""

    name: str
    kind: str  # the NIR class name (I for the integrator)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: dict[str, np.ndarray] = field(default_factory=dict)  # per-neuron float64 arrays (flattened, C order)
    geometry: dict = field(default_factory=dict)  # Conv2d / pools: kernel, stride, padding, in_size, out_size
    sources: list[str] = field(default_factory=list)  # incoming forward edges, in the graph's edge order
    back_sources: list[str] = field(default_factory=list)  # incoming back edges (previous tick's value)

    @property
    def size(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def spiking(self) -> bool:
        return self.kind in SPIKING


@dataclass
class GraphPlan:
    """The checked graph: nodes in evaluation order (the input first), outputs, dt and the graph's metadata."""

    nodes: dict[str, NodePlan]  # in evaluation order
    input: str
    outputs: list[str]
    dt: float
    metadata: dict

    @property
    def spiking(self) -> list[NodePlan]:
        return [n for n in self.nodes.values() if n.spiking]


def read_graph(path: str | Path):
    """Read a NIR file (HDF5); a file that is not one is refused in one line."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise NIRGraphError(f"{path}: no such file; give a NIR graph written by nir.write (e.g. `bioflexnet export "
                            "RUN --format nir`, snnTorch's export_to_nir, Norse's to_nir).")
    try:
        return nir.read(path, type_check=False)
    except Exception as exc:  # h5py, KeyError, ValueError ...: all mean "not a NIR graph we can read"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NIRGraphError(f"{path}: not a readable NIR graph ({type(exc).__name__}: {first}).") from None


def _shape(value, what: str) -> tuple[int, ...]:
    if value is None:
        raise NIRGraphError(f"{what} has no shape; the input node must state its input_type.")
    shape = tuple(int(v) for v in np.atleast_1d(np.asarray(value)).ravel())
    if not shape or any(v < 1 for v in shape):
        raise NIRGraphError(f"{what} has the shape {list(shape)}; every dimension must be >= 1.")
    return shape


def _array(node, attr: str, name: str) -> np.ndarray:
    value = getattr(node, attr, None)
    if value is None:
        raise NIRGraphError(f"node {name!r} ({type(node).__name__}): parameter {attr} is missing.")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise NIRGraphError(f"node {name!r} ({type(node).__name__}): parameter {attr} has non-finite values.")
    return arr


def _per_neuron(node, attr: str, name: str, n: int) -> np.ndarray:
    """A neuron parameter as ``n`` values: one value for all, or one per neuron."""
    arr = _array(node, attr, name).ravel()
    if arr.size == 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise NIRGraphError(f"node {name!r} ({type(node).__name__}): parameter {attr} has {arr.size} values for "
                            f"{n} neurons (its input); give one value or one per neuron.")
    return arr


def _pair(value, name: str, what: str) -> int:
    """A square kernel / stride / padding as one int (rectangular ones are refused)."""
    arr = np.atleast_1d(np.asarray(value)).ravel()
    if arr.size not in (1, 2) or (arr.size == 2 and arr[0] != arr[1]):
        raise NIRGraphError(f"node {name!r}: {what}={arr.tolist()} is not square; only equal height and width "
                            "values are supported.")
    return int(arr[0])


def _window_geometry(name: str, in_shape, kernel: int, stride: int, padding: int) -> dict:
    if len(in_shape) != 3:
        raise NIRGraphError(f"node {name!r} needs a [C, H, W] input; its input has the shape {list(in_shape)} "
                            "(the shapes do not chain).")
    _, h, w = in_shape
    oh, ow = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    if stride < 1 or kernel < 1 or padding < 0 or oh < 1 or ow < 1:
        raise NIRGraphError(f"node {name!r}: kernel {kernel}, stride {stride}, padding {padding} do not fit its "
                            f"input of shape {list(in_shape)}.")
    return {"kernel": kernel, "stride": stride, "padding": padding, "in_size": (h, w), "out_size": (oh, ow)}


def _conv(node, name: str, in_shape) -> tuple[tuple[int, ...], dict, dict]:
    weight = _array(node, "weight", name)
    if weight.ndim != 4:
        raise NIRGraphError(f"node {name!r} (Conv2d): weight has {weight.ndim} dimensions, expected 4 "
                            "[C_out, C_in, kH, kW].")
    if int(np.asarray(node.groups)) != 1:
        raise NIRGraphError(f"node {name!r} (Conv2d): groups={int(np.asarray(node.groups))} is not supported "
                            "(only groups=1).")
    if _pair(node.dilation, name, "dilation") != 1:
        raise NIRGraphError(f"node {name!r} (Conv2d): dilation {np.asarray(node.dilation).tolist()} is not "
                            "supported (only 1).")
    if weight.shape[2] != weight.shape[3]:
        raise NIRGraphError(f"node {name!r} (Conv2d): kernel {list(weight.shape[2:])} is not square.")
    if len(in_shape) == 3 and weight.shape[1] != in_shape[0]:
        raise NIRGraphError(f"node {name!r} (Conv2d): weight expects {weight.shape[1]} input channels, its input "
                            f"has the shape {list(in_shape)} (the shapes do not chain).")
    k, stride = weight.shape[2], _pair(node.stride, name, "stride")
    padding = node.padding
    if isinstance(padding, (str, bytes)):
        padding = padding.decode() if isinstance(padding, bytes) else padding
        if padding == "same" and (stride != 1 or k % 2 == 0):
            raise NIRGraphError(f"node {name!r} (Conv2d): padding='same' is supported for stride 1 and odd kernels "
                                f"only (stride {stride}, kernel {k}).")
        padding = (k - 1) // 2 if padding == "same" else 0
    geometry = _window_geometry(name, in_shape, k, stride, _pair(padding, name, "padding"))
    bias = np.zeros(weight.shape[0]) if getattr(node, "bias", None) is None else _array(node, "bias", name).ravel()
    if bias.size != weight.shape[0]:
        raise NIRGraphError(f"node {name!r} (Conv2d): bias has {bias.size} values for {weight.shape[0]} channels.")
    out_shape = (weight.shape[0], *geometry["out_size"])
    return out_shape, geometry, {"weight": weight, "bias": np.repeat(bias, np.prod(geometry["out_size"]))}


def _pool(node, name: str, kind: str, in_shape) -> tuple[tuple[int, ...], dict]:
    geometry = _window_geometry(name, in_shape, _pair(node.kernel_size, name, "kernel_size"),
                                _pair(node.stride, name, "stride"), _pair(node.padding, name, "padding"))
    # AvgPool2d divides by the kernel's area, padded taps included (PyTorch's count_include_pad=True)
    geometry["scale"] = 1.0 if kind == "SumPool2d" else 1.0 / geometry["kernel"] ** 2
    return (in_shape[0], *geometry["out_size"]), geometry


def _dense(node, name: str, kind: str, in_shape) -> tuple[tuple[int, ...], dict]:
    weight = _array(node, "weight", name)
    n_in = int(np.prod(in_shape))
    if weight.ndim != 2 or weight.shape[1] != n_in:
        raise NIRGraphError(f"node {name!r} ({kind}): weight of shape {list(weight.shape)} expects "
                            f"{weight.shape[-1]} inputs, its input gives {n_in} (shape {list(in_shape)}; the shapes "
                            "do not chain).")
    params = {"weight": weight}
    if kind == "Affine":
        bias = _array(node, "bias", name).ravel()
        if bias.size != weight.shape[0]:
            raise NIRGraphError(f"node {name!r} (Affine): bias has {bias.size} values for {weight.shape[0]} outputs.")
        params["bias"] = bias
    return (weight.shape[0],), params


def _flatten(node, in_shape) -> tuple[int, ...]:
    """NIR's Flatten on the shape without a batch axis; a flatten never changes the NCHW order of the values."""
    start, end = int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim))
    nd = len(in_shape)
    start, end = start % nd if -nd <= start < nd else 0, end % nd if -nd <= end < nd else nd - 1
    if start > end:
        return tuple(in_shape)
    return (*in_shape[:start], int(np.prod(in_shape[start:end + 1])), *in_shape[end + 1:])


def coefficients(node, name: str, kind: str, n: int, dt: float) -> dict[str, np.ndarray]:
    """Forward-Euler coefficients of one tick ``dt``, per neuron.

    ``tau dv/dt = (v_leak - v) + R I`` becomes ``v <- a v + g I + c`` with ``a = 1 - dt/tau``,
    ``g = dt R / tau``, ``c = dt v_leak / tau``; ``dv/dt = R I`` (IF, I) becomes ``v <- v + g I``, ``g = dt R``;
    the synaptic current of CubaLIF / CubaLI, ``tau_syn dI/dt = -I + w_in S``, becomes
    ``I <- a_syn I + g_syn S`` with ``a_syn = 1 - dt/tau_syn``, ``g_syn = dt w_in / tau_syn``.
    """
    p = {}

    def leak(tau_attr: str, prefix: str = "") -> np.ndarray:
        tau = _per_neuron(node, tau_attr, name, n)
        if np.any(tau <= 0):
            raise NIRGraphError(f"node {name!r} ({kind}): {tau_attr} must be > 0 (min {tau.min():g}).")
        p[f"{prefix}a"] = 1.0 - dt / tau
        return tau

    if kind in ("LIF", "LI"):
        tau = leak("tau")
        p["g"] = dt * _per_neuron(node, "r", name, n) / tau
        p["c"] = dt * _per_neuron(node, "v_leak", name, n) / tau
        p["v0"] = _per_neuron(node, "v_leak", name, n)
    elif kind in ("CubaLIF", "CubaLI"):
        tau_syn = leak("tau_syn", "s")
        p["sg"] = dt * _per_neuron(node, "w_in", name, n) / tau_syn
        tau = leak("tau_mem")
        p["g"] = dt * _per_neuron(node, "r", name, n) / tau
        p["c"] = dt * _per_neuron(node, "v_leak", name, n) / tau
        p["v0"] = _per_neuron(node, "v_leak", name, n)
    elif kind in ("IF", "I"):
        p["g"] = dt * _per_neuron(node, "r", name, n)
        p["v0"] = np.zeros(n)
    if kind in ("LIF", "CubaLIF", "IF"):
        p["vth"] = _per_neuron(node, "v_threshold", name, n)
        reset = getattr(node, "v_reset", None)
        p["vreset"] = np.zeros(n) if reset is None else _per_neuron(node, "v_reset", name, n)
    if kind == "Threshold":
        p["vth"] = _per_neuron(node, "threshold", name, n)
    return p


def _kind(node, name: str) -> str:
    kind = type(node).__name__
    if kind not in SUPPORTED:
        what = "a nested NIRGraph (subgraph)" if kind == "NIRGraph" else f"a {kind} node"
        raise NIRGraphError(f"node {name!r} is {what}, which this importer cannot express in Brian2; supported "
                            f"nodes: {', '.join(SUPPORTED)}.")
    return kind


def _order(graph, input_name: str) -> tuple[list[str], set[tuple[str, str]]]:
    """Nodes in evaluation order and the back edges (those closing a cycle in a DFS from the input)."""
    succ: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for src, dst in graph.edges:
        succ[src].append(dst)
    back, state, post = set(), {}, []  # state: 1 on the stack, 2 done

    def visit(start: str) -> None:  # iterative DFS (deep graphs must not hit the recursion limit)
        stack = [(start, iter(succ[start]))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                post.append(node)
                stack.pop()
            elif state.get(child) == 1:
                back.add((node, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(succ[child])))

    visit(input_name)
    unreached = [k for k in graph.nodes if k not in state]
    if unreached:
        raise NIRGraphError(f"node {unreached[0]!r} cannot be reached from the input node {input_name!r}; every node "
                            "must lie on a path from the input.")
    return post[::-1], back


def plan_graph(graph, dt: float | None = None) -> GraphPlan:
    """Check ``graph`` (a ``nir.NIRGraph``) and lay it out; ``dt`` overrides the graph's ``metadata['dt']``."""
    metadata = dict(getattr(graph, "metadata", None) or {})
    dt = dt if dt is not None else metadata.get("dt")
    if dt is None:
        raise NIRGraphError("the graph states no time step (metadata 'dt') and none was given: pass --dt SECONDS, "
                            "the step the network was simulated with where it was trained (snnTorch's export "
                            "assumes 1e-4, Norse's 1e-3; see docs/nir.md).")
    dt = float(np.asarray(dt))
    if not (np.isfinite(dt) and dt > 0):
        raise NIRGraphError(f"dt={dt}: the time step must be a positive number of seconds.")
    kinds = {name: _kind(node, name) for name, node in graph.nodes.items()}
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise NIRGraphError(f"edge ({src!r}, {dst!r}) names the node {end!r}, which the graph does not have.")
    inputs = [k for k, kind in kinds.items() if kind == "Input"]
    outputs = [k for k, kind in kinds.items() if kind == "Output"]
    if len(inputs) != 1:
        raise NIRGraphError(f"the graph has {len(inputs)} Input nodes ({inputs}); exactly one is supported.")
    if not outputs:
        raise NIRGraphError("the graph has no Output node; nothing would be recorded.")
    order, back = _order(graph, inputs[0])
    incoming: dict[str, list[str]] = {k: [] for k in graph.nodes}
    back_in: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for src, dst in graph.edges:
        (back_in if (src, dst) in back else incoming)[dst].append(src)
    plans: dict[str, NodePlan] = {}
    for name in order:
        plans[name] = _plan_node(graph.nodes[name], name, kinds[name], incoming[name], back_in[name], plans, dt)
    for name, plan in plans.items():  # back edges: the value of the previous tick must fit too
        for src in plan.back_sources:
            if plans[src].size != int(np.prod(plan.in_shape)):
                raise NIRGraphError(f"edge ({src!r}, {name!r}): {src!r} gives {plans[src].size} values, {name!r} takes "
                                    f"{int(np.prod(plan.in_shape))} (the shapes do not chain).")
    for name in outputs:
        if len(plans[name].sources) != 1:
            raise NIRGraphError(f"node {name!r} (Output) has {len(plans[name].sources)} incoming edges; exactly one "
                                "is supported.")
    return GraphPlan(plans, inputs[0], outputs, dt, metadata)


def _plan_node(node, name: str, kind: str, sources: list[str], back_sources: list[str], plans: dict, dt: float
               ) -> NodePlan:
    if kind == "Input":
        if sources or back_sources:
            raise NIRGraphError(f"node {name!r} (Input) has incoming edges.")
        shape = _shape(node.input_type.get("input") if isinstance(node.input_type, dict) else None,
                       f"node {name!r} (Input)")
        return NodePlan(name, kind, shape, shape)
    if not sources:
        raise NIRGraphError(f"node {name!r} ({kind}) has no incoming edge from the input side.")
    shapes = {plans[s].out_shape for s in sources}
    sizes = {int(np.prod(s)) for s in shapes}
    if len(sizes) > 1:
        detail = ", ".join(f"{s!r}: {list(plans[s].out_shape)}" for s in sources)
        raise NIRGraphError(f"node {name!r} ({kind}) sums inputs of different sizes ({detail}; the shapes do not "
                            "chain).")
    in_shape = plans[sources[0]].out_shape
    plan = NodePlan(name, kind, in_shape, in_shape, sources=list(sources), back_sources=list(back_sources))
    n = int(np.prod(in_shape))
    if kind == "Conv2d":
        plan.out_shape, plan.geometry, plan.params = _conv(node, name, in_shape)
    elif kind in ("SumPool2d", "AvgPool2d"):
        plan.out_shape, plan.geometry = _pool(node, name, kind, in_shape)
    elif kind in ("Affine", "Linear"):
        plan.out_shape, plan.params = _dense(node, name, kind, in_shape)
    elif kind == "Flatten":
        plan.out_shape = _flatten(node, in_shape)
    elif kind == "Scale":
        plan.params = {"scale": _per_neuron(node, "scale", name, n)}
    elif kind != "Output":
        plan.params = coefficients(node, name, kind, n, dt)
    return plan
