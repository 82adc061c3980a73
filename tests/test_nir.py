"""NIR both ways: the VGG twin exported as NIR and simulated in Brian2 through the importer, spike for spike
against the project's PyTorch forward and its own Brian2 network; snnTorch's and Norse's own NIR exports
simulated in Brian2 against their own simulation; the importer's node updates against a numpy reading of
docs/nir.md; bad graphs refused in one line naming the node."""
from __future__ import annotations

import copy
import shutil

import nir
import numpy as np
import pytest
import xarray as xr

from bioflexnet.cli import main
from core.config import make_config
from core.export_format import read_export, write_export
from sim.nir_graph import NIRGraphError, plan_graph, read_graph
from sim.nir_sim import Samples, normalise, run_plan
from training.nir_export import DT, exact_tau, nir_graph, refusal

pytestmark = pytest.mark.brian


def _rates(spikes: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in spikes.items()}


# --- this project's twin --------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta, reset", [(0.5, "subtract"), (0.9, "zero"), (1.0, "subtract")])
def test_exported_twin_reproduces_the_pytorch_forward_spike_for_spike(tmp_path, beta, reset):
    """An untrained twin (BN shifts drawn at random) of each reset and leak: LI/Threshold/Scale loop, LIF,
    integrator; every layer's spikes and the read-out equal the float64 PyTorch forward of the same numbers."""
    import torch

    from training.export import build_export, model_arrays
    from training.models import build_model

    cfg = make_config("smoke", mode="stbp", flex=False, overrides=[f"model.beta={beta}", f"model.reset={reset}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # BN shifts that make every layer fire within T = 2 steps
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.uniform_(0.3, 0.9)
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    header, arrays = build_export(model, cfg, images, np.zeros(3, dtype=np.int64))
    graph = nir_graph(*model_arrays(model), cfg)
    plan = plan_graph(graph)
    x = normalise(images, plan.metadata)
    result = run_plan(plan, Samples(np.repeat(x[:, None], cfg.model.steps, axis=1), None, "random images"))
    names = [la["name"] for la in header["layers"]]
    assert set(result.spikes) == set(names)
    export = read_export(write_export(tmp_path / "export.npz", header, arrays))
    for name in names:
        ref = export.reference_spikes(name, 3).reshape(3, cfg.model.steps, -1)
        assert np.array_equal(result.spikes[name], ref), name
        assert 0.0 < ref.mean() < 1.0, f"{name} must fire for the comparison to mean something"
    np.testing.assert_allclose(result.logits, arrays["ref.logits"], rtol=0, atol=1e-9)


def test_exact_tau_makes_the_euler_tick_the_discrete_update():
    for beta in (0.0, 0.5, 0.8, 0.9, 0.95, 0.99):
        tau, r = exact_tau(beta)
        assert 1.0 - DT / tau == beta and DT * r / tau == 1.0, beta


def test_cli_export_and_sim_of_a_trained_twin_agree_with_pytorch_and_the_projects_brian2(analysis_runs, tmp_path,
                                                                                          cifar_dir):
    """`bioflexnet export RUN --format nir` + `bioflexnet sim RUN/model.nir` (issue 25's check, 4 images) and the
    project's own `bioflexnet sim RUN` on the same images: identical spikes in every layer."""
    run = tmp_path / "run"
    shutil.copytree(analysis_runs["vgg-stbp"], run)
    data = ["--data-dir", str(cifar_dir)]
    assert main(["export", str(run), "--format", "nir", "--images", "4", *data]) == 0
    assert {"model.nir", "model.reference.npz"} <= {p.name for p in run.iterdir()}
    assert main(["sim", str(run / "model.nir")]) == 0
    ds = xr.open_dataset(run / "sim_model" / "sim.nc")
    assert ds.attrs["dt_s"] == DT and int(ds.compared_layers) == len(ds.layer) > 0
    assert float(ds.spike_agreement.min()) == 1.0 and float(ds.class_agreement) == 1.0
    alone = tmp_path / "alone"  # without its reference: the CIFAR-10 test images, normalised as the metadata says
    alone.mkdir()
    shutil.copy(run / "model.nir", alone / "model.nir")
    assert main(["sim", str(alone / "model.nir"), "--images", "4", *data]) == 0
    cifar = xr.open_dataset(alone / "sim_model" / "sim.nc")
    assert "spike_agreement" not in cifar and np.array_equal(cifar.logits.values, ds.logits.values)
    assert np.array_equal(cifar.label.values, ds.label.values)
    assert main(["export", str(run), "--images", "4", *data]) == 0
    assert main(["sim", str(run)]) == 0
    own = xr.open_dataset(run / "sim" / "sim.nc")
    for layer in ds.layer.values:
        mine = ds[f"spikes_{layer}"].values
        assert np.array_equal(own[f"spikes_{layer}"].values.reshape(mine.shape), mine), layer
        assert mine.any(), layer


def test_flex_and_max_pool_networks_are_refused_with_the_reason():
    why = refusal(make_config("smoke", mode="stbp", flex=True))
    assert "FLEX" in why and "mask" in why and "twin" in why and "--no-flex" in why
    assert "max-pool" in refusal(make_config("smoke", mode="stbp", flex=False, overrides=["model.downsample=maxpool"]))
    assert refusal(make_config("smoke", mode="stbp", flex=False)) is None


def test_cli_refuses_a_flex_run_in_one_line(tmp_path, monkeypatch, capsys):
    from training import runs
    from training.models import build_model

    cfg = make_config("smoke", mode="stbp", flex=True)
    monkeypatch.setattr(runs, "load_model", lambda run_dir, device="cpu": (build_model(cfg.model), cfg))
    assert main(["export", str(tmp_path), "--format", "nir"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FLEX network has no NIR form" in err and "vgg-stbp" in err
    assert not (tmp_path / "model.nir").exists()


# --- other frameworks' exports ----------------------------------------------------------------------------------

def _snntorch_net():
    import snntorch as snn
    import torch

    def leaky(shape, beta):  # per-neuron parameters: snnTorch's export of scalar ones does not type-check
        return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.ones(shape), init_hidden=True,
                         reset_mechanism="zero")  # snnTorch writes v_reset = 0 whatever the mechanism

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 6, 3, padding=1), leaky((6, 8, 8), 0.8),
        torch.nn.AvgPool2d((2, 2), stride=(2, 2)), torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), leaky((8, 2, 2), 0.6),
        torch.nn.Flatten(), torch.nn.Linear(8 * 2 * 2, 5), leaky((5,), 0.7))
    with torch.no_grad():  # weights large enough that every layer fires
        for module, gain in zip([net[0], net[3], net[6]], [3.0, 6.0, 3.0]):
            module.weight.mul_(gain)
    return net


def test_snntorch_export_simulates_in_brian2_spike_for_spike(tmp_path):
    """snnTorch 1.0's export_to_nir of a small conv net, read from file, run in Brian2 at snnTorch's dt (1e-4):
    every Leaky layer's spikes equal snnTorch's own simulation (float64)."""
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir

    net = _snntorch_net()
    nir.write(tmp_path / "snn.nir", export_to_nir(net, torch.zeros(1, 2, 8, 8), ignore_dims=[0]))
    net = copy.deepcopy(net).double()  # nirtorch traces in float32; the simulation runs in float64
    n, steps = 3, 12
    x = torch.rand(n, steps, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    layers = [str(i) for i, m in enumerate(net) if isinstance(m, snn.Leaky)]
    ref = {k: np.zeros((n, steps, int(np.prod(net[int(k)].beta.shape))), dtype=bool) for k in layers}
    with torch.no_grad():
        for i in range(n):
            for m in net:
                if isinstance(m, snn.Leaky):
                    m.mem = torch.zeros(0, dtype=torch.float64)  # a fresh state per sample
            for t in range(steps):
                h = x[i, t:t + 1]
                for j, m in enumerate(net):
                    h = m(h).double()  # snnTorch's spikes are float32
                    if str(j) in ref:
                        ref[str(j)][i, t] = h[0].flatten().numpy() > 0
    np.save(tmp_path / "inputs.npy", x.numpy())
    plan = plan_graph(read_graph(tmp_path / "snn.nir"), dt=1e-4)
    result = run_plan(plan, Samples(x.numpy(), None, "random"))
    for k in layers:
        assert np.array_equal(result.spikes[k], ref[k]), k
        assert 0.0 < ref[k].mean() < 1.0, f"layer {k} must fire for the comparison to mean something"
    # the same through the command line, with the samples from a file
    assert main(["sim", str(tmp_path / "snn.nir"), "--dt", "1e-4", "--inputs", str(tmp_path / "inputs.npy")]) == 0
    ds = xr.open_dataset(tmp_path / "sim_snn" / "sim.nc")
    assert np.array_equal(ds["spikes_7"].values.astype(bool), ref["7"])


def test_norse_export_simulates_in_brian2_spike_for_spike():
    """Norse's to_nir of a conv net of LIFBox cells, run in Brian2: spikes equal Norse's own simulation.

    Norse 1.1 writes ``tau = dt / tau_mem_inv`` (norse/norse#411), i.e. ``dt`` times the time constant, so the
    graph's Euler tick equals Norse's at ``dt_brian = dt_norse ** 2`` (1e-6 for Norse's 1e-3)."""
    norse = pytest.importorskip("norse.torch")
    import torch
    from norse.torch.utils.export_nir import to_nir

    torch.manual_seed(0)
    net = norse.SequentialState(torch.nn.Conv2d(2, 6, 3, padding=1), norse.LIFBoxCell(),
                                torch.nn.Conv2d(6, 4, 3, stride=2, padding=1), norse.LIFBoxCell())
    with torch.no_grad():
        net[0].weight.mul_(8.0)
        net[2].weight.mul_(40.0)
    graph = to_nir(net, torch.zeros(2, 8, 8))  # Norse's graph leaves the conv shapes open: not writable to a file
    net = net.double()
    n, steps = 3, 15
    x = torch.rand(n, steps, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    ref = {"1": [], "3": []}
    with torch.no_grad():
        for i in range(n):
            state = [None] * len(net)
            for t in range(steps):
                h = x[i, t]
                for j, m in enumerate(net):
                    if str(j) in ref:
                        h, state[j] = m(h, state[j])
                        ref[str(j)].append(h.flatten().numpy() > 0)
                    else:
                        h = m(h)
    result = run_plan(plan_graph(graph, dt=1e-3 ** 2), Samples(x.numpy(), None, "random"))
    for k, spikes in ref.items():
        spikes = np.array(spikes).reshape(n, steps, -1)
        assert np.array_equal(result.spikes[k], spikes), k
        assert 0.0 < spikes.mean() < 1.0, f"layer {k} must fire for the comparison to mean something"


def test_snntorch_imports_the_exported_zero_reset_twin(tmp_path):
    """The other direction: snnTorch's own import_from_nir reads the twin's graph (reset to zero, a plain LIF
    chain) and its float32 forward gives the float64 PyTorch logits to float32 precision."""
    import torch
    from snntorch.import_nir import import_from_nir

    from training.export import build_export, model_arrays
    from training.models import build_model

    cfg = make_config("smoke", mode="stbp", flex=False, overrides=["model.beta=0.9", "model.reset=zero"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.uniform_(0.3, 0.9)
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    _, arrays = build_export(model, cfg, images, np.zeros(2, dtype=np.int64))
    nir.write(tmp_path / "twin.nir", nir_graph(*model_arrays(model), cfg))
    x = torch.from_numpy(normalise(images, {"input_mean": arrays["input.mean"], "input_std": arrays["input.std"]}))
    logits = []
    for i in range(len(images)):  # one image at a time: snnTorch maps NIR's Flatten(0) to one over the batch too
        net, state, scores = import_from_nir(nir.read(tmp_path / "twin.nir")), None, []
        with torch.no_grad():
            for _ in range(cfg.model.steps):
                out, state = net(x[i:i + 1].float(), state) if state is not None else net(x[i:i + 1].float())
                scores.append(out.reshape(-1).double())
        logits.append(torch.stack(scores).mean(0).numpy())
    np.testing.assert_allclose(np.array(logits), arrays["ref.logits"], rtol=0, atol=1e-5)


# --- the importer's updates against docs/nir.md ------------------------------------------------------------------

def _mixed_graph(rng: np.random.Generator):
    """Every supported node kind in three branches from one input."""
    f = lambda *shape: rng.uniform(0.5, 1.5, shape)  # noqa: E731
    nodes = {
        "input": nir.Input(input_type={"input": np.array([2, 6, 6])}),
        "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([2, 3, 3])}, start_dim=0, end_dim=-1),
        "aff": nir.Affine(weight=rng.normal(0, 1.5, (5, 18)), bias=rng.normal(0, 0.3, 5)),
        "cuba": nir.CubaLIF(tau_syn=f(5) * 3e-3, tau_mem=f(5) * 5e-3, r=f(5), v_leak=rng.normal(0, 0.1, 5),
                            v_threshold=f(5), v_reset=rng.normal(0, 0.1, 5), w_in=f(5)),
        "lin": nir.Linear(weight=rng.normal(0, 1.0, (4, 5))),
        "li": nir.LI(tau=f(4) * 4e-3, r=f(4), v_leak=rng.normal(0, 0.1, 4)),
        "thr": nir.Threshold(threshold=f(4) * 0.3),
        "integ": nir.I(r=f(5) * 100),
        "cli": nir.CubaLI(tau_syn=f(5) * 2e-3, tau_mem=f(5) * 6e-3, r=f(5), v_leak=np.zeros(5), w_in=f(5)),
        "sum": nir.SumPool2d(kernel_size=np.array([3, 3]), stride=np.array([3, 3]), padding=np.array([0, 0])),
        "flat2": nir.Flatten(input_type={"input": np.array([2, 2, 2])}, start_dim=0, end_dim=-1),
        "scale": nir.Scale(scale=rng.normal(0, 0.5, 8)),
        "ifn": nir.IF(r=f(8) * 200, v_threshold=f(8), v_reset=np.zeros(8)),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=rng.normal(0, 0.5, (3, 2, 3, 3)), stride=2, padding=1,
                           dilation=1, groups=1, bias=rng.normal(0, 0.2, 3)),
        "lif": nir.LIF(tau=f(3, 3, 3) * 5e-3, r=f(3, 3, 3), v_leak=np.zeros((3, 3, 3)),
                       v_threshold=f(3, 3, 3), v_reset=np.zeros((3, 3, 3))),
        **{f"out{i}": nir.Output(output_type={"output": np.array([n])}) for i, n in enumerate([4, 5, 5, 8])},
        "out4": nir.Output(output_type={"output": np.array([3, 3, 3])}),
    }
    edges = [("input", "avg"), ("avg", "flat"), ("flat", "aff"), ("aff", "cuba"), ("cuba", "lin"), ("lin", "li"),
             ("li", "thr"), ("thr", "out0"), ("aff", "integ"), ("integ", "out1"), ("aff", "cli"), ("cli", "out2"),
             ("input", "sum"), ("sum", "flat2"), ("flat2", "scale"), ("scale", "ifn"), ("ifn", "out3"),
             ("input", "conv"), ("conv", "lif"), ("lif", "out4")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": 1e-3}, type_check=False)


def _euler_reference(g, x: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """docs/nir.md's tick, written out in numpy: the spikes of every spiking node and the analog outputs."""
    n, steps = x.shape[:2]
    nd = g.nodes
    out = {k: np.zeros((n, steps, s)) for k, s in [("thr", 4), ("cuba", 5), ("integ", 5), ("cli", 5), ("ifn", 8),
                                                     ("lif", 27)]}
    windows = lambda a, k: a.reshape(2, 6 // k, k, 6 // k, k).sum(axis=(2, 4)).ravel()  # noqa: E731
    from sim.analog import conv2d

    for i in range(n):
        s = {"cuba_v": nd["cuba"].v_leak.copy(), "cuba_i": np.zeros(5), "li": nd["li"].v_leak.copy(),
             "integ": np.zeros(5), "cli_v": np.zeros(5), "cli_i": np.zeros(5), "ifn": np.zeros(8),
             "lif": np.zeros(27)}
        for t in range(steps):
            a = x[i, t]
            aff = nd["aff"].weight @ (windows(a, 2) / 4) + nd["aff"].bias
            c = nd["cuba"]
            s["cuba_i"] = (1 - dt / c.tau_syn) * s["cuba_i"] + dt * c.w_in / c.tau_syn * aff
            s["cuba_v"] = (1 - dt / c.tau_mem) * s["cuba_v"] + dt * c.r / c.tau_mem * s["cuba_i"] \
                + dt * c.v_leak / c.tau_mem
            z = s["cuba_v"] > c.v_threshold
            s["cuba_v"] = np.where(z, c.v_reset, s["cuba_v"])
            out["cuba"][i, t] = z
            li = nd["li"]
            s["li"] = (1 - dt / li.tau) * s["li"] + dt * li.r / li.tau * (nd["lin"].weight @ z) \
                + dt * li.v_leak / li.tau
            out["thr"][i, t] = s["li"] > nd["thr"].threshold
            s["integ"] = s["integ"] + dt * nd["integ"].r * aff
            out["integ"][i, t] = s["integ"]
            cl = nd["cli"]
            s["cli_i"] = (1 - dt / cl.tau_syn) * s["cli_i"] + dt * cl.w_in / cl.tau_syn * aff
            s["cli_v"] = (1 - dt / cl.tau_mem) * s["cli_v"] + dt * cl.r / cl.tau_mem * s["cli_i"]
            out["cli"][i, t] = s["cli_v"]
            s["ifn"] = s["ifn"] + dt * nd["ifn"].r * (nd["scale"].scale * windows(a[:, :6, :6], 3))
            z = s["ifn"] > nd["ifn"].v_threshold
            s["ifn"] = np.where(z, 0.0, s["ifn"])
            out["ifn"][i, t] = z
            lif = nd["lif"]
            cur = conv2d(a[None], nd["conv"].weight, nd["conv"].bias, 2, 1).ravel()
            s["lif"] = (1 - dt / lif.tau.ravel()) * s["lif"] + dt * lif.r.ravel() / lif.tau.ravel() * cur
            z = s["lif"] > lif.v_threshold.ravel()
            s["lif"] = np.where(z, 0.0, s["lif"])
            out["lif"][i, t] = z
    return out


def test_every_node_kind_follows_the_documented_euler_tick(tmp_path):
    rng = np.random.default_rng(3)
    graph = _mixed_graph(rng)
    nir.write(tmp_path / "mixed.nir", graph)
    plan = plan_graph(read_graph(tmp_path / "mixed.nir"))
    x = rng.uniform(0, 2, (2, 20, 2, 6, 6))
    result = run_plan(plan, Samples(x, None, "random"))
    ref = _euler_reference(graph, x, 1e-3)
    for spiking in ("thr", "cuba", "ifn", "lif"):
        assert np.array_equal(result.spikes[spiking], ref[spiking].astype(bool)), spiking
        assert 0.0 < ref[spiking].mean() < 1.0, spiking
    np.testing.assert_allclose(result.outputs["out1"], ref["integ"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.outputs["out2"], ref["cli"], rtol=1e-12, atol=1e-12)
    assert np.array_equal(result.outputs["out0"], ref["thr"])


# --- bad input ------------------------------------------------------------------------------------------------------

def _chain(*nodes):
    """A sequential graph of ``nodes`` (NIR names them by their type: 'affine', 'lif', ...)."""
    return nir.NIRGraph.from_list(*nodes, type_check=False)


@pytest.mark.parametrize("graph, dt, match", [
    (lambda: _chain(nir.Input(input_type={"input": np.array([4])}), nir.Affine(np.ones((3, 5)), np.zeros(3))),
     1e-3, r"node 'affine' \(Affine\).*expects 5 inputs, its input gives 4.*do not chain"),
    (lambda: _chain(nir.Input(input_type={"input": np.array([4])}), nir.Delay(delay=np.ones(4))),
     1e-3, r"node 'delay' is a Delay node.*supported nodes: Input"),
    (lambda: _chain(nir.Input(input_type={"input": np.array([4])}), nir.LIF(tau=np.ones(3), r=np.ones(3),
                                                                              v_leak=np.zeros(3),
                                                                              v_threshold=np.ones(3))),
     1e-3, r"node 'lif' \(LIF\): parameter tau has 3 values for 4 neurons"),
    (lambda: _chain(nir.Input(input_type={"input": np.array([4])}), nir.LI(tau=np.ones(4), r=np.ones(4),
                                                                             v_leak=np.zeros(4))),
     None, r"no time step.*--dt"),
    (lambda: _chain(nir.Input(input_type={"input": np.array([4])}), nir.LI(tau=-np.ones(4), r=np.ones(4),
                                                                             v_leak=np.zeros(4))),
     1e-3, r"node 'li' \(LI\): tau must be > 0"),
    (lambda: _chain(nir.Input(input_type={"input": np.array([2, 5, 5])}),
                    nir.Conv2d(input_shape=(5, 5), weight=np.ones((1, 3, 3, 3)), stride=1, padding=0, dilation=1,
                               groups=1, bias=np.zeros(1))),
     1e-3, r"node 'conv2d' \(Conv2d\): weight expects 3 input channels.*do not chain"),
])
def test_bad_graphs_are_refused_naming_the_node(graph, dt, match):
    with pytest.raises(NIRGraphError, match=match):
        plan_graph(graph(), dt)


def test_bad_files_are_refused_in_one_line_by_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.nir"
    bad.write_text("not an HDF5 file")
    assert main(["sim", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable NIR graph" in err
    graph = _chain(nir.Input(input_type={"input": np.array([4])}), nir.Delay(delay=np.ones(4)))
    nir.write(tmp_path / "delay.nir", graph)
    assert main(["sim", str(tmp_path / "delay.nir"), "--dt", "1e-3", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'delay' is a Delay node" in err
    assert main(["sim", str(bad), "--plasticity"]) == 2
    assert "--plasticity only apply to an export" in capsys.readouterr().err


def test_the_importer_never_imports_torch(tmp_path):
    """sim/ stays torch-free on the NIR path too (file -> plan -> Brian2 -> sim.nc), in a fresh interpreter."""
    import subprocess
    import sys
    import textwrap

    nir.write(tmp_path / "mixed.nir", _mixed_graph(np.random.default_rng(3)))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 2, (1, 4, 2, 6, 6)))
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from sim.nir_sim import NIROptions, simulate_nir, to_dataset
        options = NIROptions(inputs=Path({str(tmp_path / "x.npy")!r}))
        result, reference = simulate_nir(Path({str(tmp_path / "mixed.nir")!r}), options)
        ds = to_dataset(result, Path("mixed.nir"), options, reference)
        assert reference is None and ds.logits.shape == (1, 4)
        loaded = [m for m in ("torch", "brian2cuda") if m in sys.modules]
        assert not loaded, f"sim imported {{loaded}}"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
