"""The discrete -> biophysical mapping, and the biophysical network against exact mode."""
import numpy as np
import pytest
from brian2 import Network, NeuronGroup, StateMonitor, ms, mV, prefs
from export_helpers import random_export

from sim.biophysics import biophysical_to_discrete, discrete_to_biophysical, to_voltage
from sim.results import class_agreement, spike_agreement
from sim.simulate import SimError, SimOptions, simulate


def test_mapping_numbers_and_round_trip():
    p = discrete_to_biophysical(0.5, 1.0, tau_m=10 * ms, v_rest=-65 * mV, v_threshold=-50 * mV)
    assert abs(float(p.step / ms) - 10 * np.log(2)) < 1e-12  # beta = exp(-step / tau_m)
    assert abs(float(p.unit / mV) - 15.0) < 1e-12 and abs(float(p.drive / mV) - 30.0) < 1e-12
    assert p.refractory == p.step  # one spike per step, as in the discrete model
    for beta, theta in [(0.5, 1.0), (0.9, 0.5), (0.05, 2.0)]:
        q = discrete_to_biophysical(beta, theta, tau_m=7 * ms)
        back = biophysical_to_discrete(q)
        assert abs(back[0] - beta) < 1e-12 and abs(back[1] - theta) < 1e-12


@pytest.mark.parametrize("beta", [0.0, 1.0, 1.5])
def test_mapping_refuses_betas_without_a_time_constant(beta):
    with pytest.raises(ValueError, match="0 < beta < 1"):
        discrete_to_biophysical(beta, 1.0)


@pytest.mark.brian
@pytest.mark.parametrize("ticks", [1, 7])
def test_brian2_integrator_with_mapped_units_reproduces_the_discrete_membrane(ticks, monkeypatch):
    """Brian2's own exact integrator of tau_m dV/dt = V_rest - V + drive*u, sampled at step ends,
    equals the discrete v[t] = beta v[t-1] + u[t] (no threshold), for any dt = step / K."""
    monkeypatch.setitem(prefs, "codegen.target", "numpy")  # no Cython build for a five-step check
    beta, theta = 0.6, 1.0
    p = discrete_to_biophysical(beta, theta, tau_m=12 * ms)
    drives = np.array([0.3, 1.1, -0.4, 0.0, 2.0])
    group = NeuronGroup(1, "dv/dt = (v_rest - v + drive*u)/tau_m : volt\nu : 1", method="exact",
                        namespace={"v_rest": p.v_rest, "drive": p.drive, "tau_m": p.tau_m}, dt=p.step / ticks)
    group.v = p.v_rest
    monitor = StateMonitor(group, "v", record=0, when="end")
    net = Network(group, monitor)
    v, expected = 0.0, []
    for u in drives:
        group.u = u
        net.run(p.step)
        v = beta * v + u
        expected.append(float(to_voltage(v, p) / mV))
    np.testing.assert_allclose(np.asarray(monitor.v[0] / mV)[ticks - 1::ticks], expected, atol=1e-9)


@pytest.mark.brian
@pytest.mark.parametrize("synapse", ["delta", "pulse"])
@pytest.mark.parametrize("flex", [True, False])
def test_biophysical_mode_at_one_tick_per_step_equals_exact_mode(tmp_path, flex, synapse):
    """Also the baseline, whose max-pool relays drive the next conv layer and the read-out."""
    export = random_export(tmp_path / "e.npz", flex=flex, n_images=3, beta=0.6)
    result = simulate(export, SimOptions(n_images=3, mode="biophysical", ticks=1, synapse=synapse))
    for layer in export.neuron_layers:
        # the membrane update is written in another operation order (and pulses are switched on and
        # off by adding and subtracting weights): ties at the threshold may differ
        assert spike_agreement(result.spikes[layer.name], export.reference_spikes(layer.name)) > 0.999
    assert class_agreement(result.logits, export.arrays["ref.logits"]) == 1.0


@pytest.mark.brian
@pytest.mark.parametrize("synapse", ["delta", "pulse"])
def test_online_plasticity_at_one_tick_per_step_follows_exact_mode(tmp_path, synapse):
    """The pathway drives of both synapse models are the discrete drives when a step is one tick."""
    export = random_export(tmp_path / "e.npz", n_images=3, beta=0.6, plasticity_rate=0.5)
    exact = simulate(export, SimOptions(n_images=3, plasticity=True))
    bio = simulate(export, SimOptions(n_images=3, mode="biophysical", ticks=1, synapse=synapse, plasticity=True))
    for layer, traces in exact.masks.items():
        assert np.abs(traces["b"][-1, -1] - traces["b"][0, 0]).max() > 1e-3  # the rule did move the bias
        for var in ("b", "rs", "ri", "mbar"):
            np.testing.assert_allclose(bio.masks[layer][var], traces[var], atol=1e-9, err_msg=f"{layer} {var}")


@pytest.mark.brian
@pytest.mark.parametrize("synapse", ["delta", "pulse"])
@pytest.mark.parametrize("flex", [True, False])
def test_finer_dt_keeps_the_analog_layer_and_resolves_spike_times(tmp_path, flex, synapse):
    export = random_export(tmp_path / "e.npz", flex=flex, n_images=2, beta=0.6)
    coarse = simulate(export, SimOptions(n_images=2, mode="biophysical", ticks=1, synapse=synapse))
    fine = simulate(export, SimOptions(n_images=2, mode="biophysical", ticks=5, synapse=synapse))
    # from rest, a constant drive u crosses threshold within the first step iff u >= theta, at any dt;
    # later steps differ: a spike's reset now happens mid-step and decays before the step ends
    np.testing.assert_array_equal(fine.spikes["conv1"][:, 0], export.reference_spikes("conv1")[:, 0])
    assert fine.latency["conv1"] < coarse.latency["conv1"]  # conv1 now fires within the step, not at its end
    for layer in export.neuron_layers[1:]:
        first_fine, first_coarse = fine.spikes[layer.name][:, 0].mean(), coarse.spikes[layer.name][:, 0].mean()
        if synapse == "pulse":  # a pulse takes up to a step to charge the membrane: latency grows with depth
            assert first_fine < first_coarse
            assert 0 < fine.spikes[layer.name].mean() <= coarse.spikes[layer.name].mean() + 0.05
        else:  # a delta input acts in the tick of the spike: deep layers fire in the first step as before
            assert first_fine >= 0.8 * first_coarse > 0


def test_biophysical_mode_refuses_beta_one(tmp_path):
    export = random_export(tmp_path / "e.npz", n_images=1, beta=1.0)
    with pytest.raises(SimError, match="0 < beta < 1"):
        simulate(export, SimOptions(n_images=1, mode="biophysical"))


@pytest.mark.brian
def test_each_spike_drives_its_targets_for_exactly_one_step(tmp_path, monkeypatch):
    """Pulse synapses: the conv-path input of down1 at every tick is the summed weight of the conv1 spikes
    of the last K ticks of the same image (a rectangular pulse one step long, cut at the image's end)."""
    from brian2 import StateMonitor

    import sim.network as network
    from sim.connectivity import conv_connections, dense_matrix
    from sim.devices import device_session
    from sim.simulate import make_timing

    export = random_export(tmp_path / "e.npz", n_images=2, beta=0.6)
    k, steps, n = 3, export.steps, 2
    with device_session("runtime"):
        timing = make_timing(export, SimOptions(n_images=n, mode="biophysical", ticks=k, synapse="pulse"))
        net = network.build_network(export, export.arrays["ref.images"][:n], timing)
        monitor = StateMonitor(net.network["down1"], "acc_c", record=True, when="end")
        net.network.add(monitor)
        net.network.run(net.duration)
        ticks = np.rint(np.asarray(net.spikes["conv1"].t) / float(timing.dt)).astype(int)
        cells = np.asarray(net.spikes["conv1"].i)
        acc = np.asarray(monitor.acc_c).T  # [ticks, neurons]
    conv1, down1 = export.layers[0], export.layers[1]
    weights = dense_matrix(conv_connections(export.arrays["down1.weight"], down1.in_size, down1.out_size,
                                            down1.stride, down1.padding), conv1.n_out, down1.n_out)
    per_image = steps * k
    for tick in range(n * per_image):
        start = max(tick - k + 1, tick - tick % per_image)  # pulses started in the last K ticks of this image
        active = np.zeros(conv1.n_out)
        np.add.at(active, cells[(ticks >= start) & (ticks <= tick)], 1.0)
        np.testing.assert_allclose(acc[tick], weights @ active, atol=1e-12, err_msg=f"tick {tick}")
    assert np.abs(acc).max() > 0.1


@pytest.mark.brian
def test_delta_synapses_deliver_each_spike_in_its_own_tick_and_relays_fire_once_per_step(tmp_path):
    """Delta synapses: down1's conv-path charge at every tick is the summed weight of the conv1 spikes of
    that very tick (no latency from layer to layer), and a max-pool relay fires in the first tick of a
    step in which its window fires, and not again in that step (the OR over the step)."""
    from brian2 import SpikeMonitor, StateMonitor

    import sim.network as network
    from sim.connectivity import conv_connections, dense_matrix, pool_connections
    from sim.devices import device_session
    from sim.simulate import make_timing

    export = random_export(tmp_path / "e.npz", n_images=2, beta=0.6)
    k, steps, n = 4, export.steps, 2
    with device_session("runtime"):
        timing = make_timing(export, SimOptions(n_images=n, mode="biophysical", ticks=k))
        assert timing.synapse == "delta"  # the default
        net = network.build_network(export, export.arrays["ref.images"][:n], timing)
        acc_monitor = StateMonitor(net.network["down1"], "acc_c", record=True, when="end")
        relay_monitor = SpikeMonitor(net.network["down1_or"], when="end")
        net.network.add(acc_monitor, relay_monitor)
        net.network.run(net.duration)
        dt = float(timing.dt)
        ticks = np.rint(np.asarray(net.spikes["conv1"].t) / dt).astype(int)
        cells = np.asarray(net.spikes["conv1"].i)
        relay_ticks = np.rint(np.asarray(relay_monitor.t) / dt).astype(int)
        relay_cells = np.asarray(relay_monitor.i)
        acc = np.asarray(acc_monitor.acc_c).T  # [ticks, neurons]
    conv1, down1 = export.layers[0], export.layers[1]
    total = n * steps * k
    fired = np.zeros((total, conv1.n_out))
    fired[ticks, cells] = 1.0
    weights = dense_matrix(conv_connections(export.arrays["down1.weight"], down1.in_size, down1.out_size,
                                            down1.stride, down1.padding), conv1.n_out, down1.n_out)
    np.testing.assert_allclose(acc, fired @ weights.T, atol=1e-12)
    assert np.abs(acc).max() > 0.1
    window = dense_matrix(pool_connections(conv1.c_out, conv1.out_size, down1.out_size, down1.kernel, down1.stride,
                                           down1.padding), conv1.n_out, down1.c_in * down1.out_size[0] ** 2)
    active = (fired @ window.T) > 0  # [ticks, relays]: some input of the window fired in this tick
    expected = np.zeros_like(active)
    for start in range(0, total, k):  # the first active tick of every step
        block = active[start:start + k]
        first = block.argmax(0)
        hit = block.any(0)
        expected[start + first[hit], np.nonzero(hit)[0]] = True
    observed = np.zeros_like(active)
    observed[relay_ticks, relay_cells] = True
    assert len(relay_ticks) == observed.sum()  # at most one event per relay and tick
    np.testing.assert_array_equal(observed, expected)
    assert expected.sum() < active.sum()  # some windows fired in several ticks of a step
