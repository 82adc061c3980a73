"""``bioflexnet sim``: simulate an exported run in Brian2 and check it against PyTorch.

This module is imported by ``bioflexnet.cli`` to register the command; it
imports Brian2 only when the command runs, and never torch.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from core.validate import finite_float, output_dir, renamed, seed_int

EXPORT_FILE = "export.npz"  # the default name written by `bioflexnet export`
RESULT_FILE = "sim.nc"


def export_path(target: Path) -> Path:
    """The export of a run directory, or ``target`` itself if it is a file."""
    return target if target.suffix == ".npz" else target / EXPORT_FILE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="simulate an exported run in Brian2 and compare it with PyTorch",
                       description="Build a Brian2 network of LIF neurons from RUN_DIR/export.npz (write it with "
                                   "`bioflexnet export RUN_DIR`), present the export's reference test images and "
                                   "write spikes, mask trajectories and fidelity figures to OUT/sim.nc.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="run directory holding export.npz, an .npz file, or a NIR graph (.nir file)")
    p.add_argument("--device", choices=["runtime", "cpp_standalone", "cuda_standalone"], default="runtime")
    p.add_argument("--mode", choices=["exact", "biophysical"], default=None,
                   help="exact: one tick per PyTorch step, the same discrete update; biophysical: continuous-time "
                        "LIF in physical units (default: exact for a network trained at one tick per step, "
                        "biophysical for one trained at K > 1 ticks, model.ticks)")
    p.add_argument("--images", type=int, default=None,
                   help="reference images to simulate, the first N of the export's (default: all of them)")
    p.add_argument("--plasticity", action=argparse.BooleanOptionalAction, default=False,
                   help="run the online mask plasticity (default off: the fidelity check needs it off)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default RUN_DIR/sim; for a graph X.nir: sim_X beside it)")
    p.add_argument("--ticks", type=int, default=None,
                   help="biophysical mode: ticks K per PyTorch step, dt = step / K (default: the K the network was "
                        "trained at, model.ticks, recorded in the export)")
    p.add_argument("--substeps", dest="ticks", type=int, action=renamed("--ticks"), help=argparse.SUPPRESS)
    p.add_argument("--synapse", choices=["delta", "pulse"], default="delta",
                   help="biophysical mode: a spike makes its targets' membranes jump (delta, default) or drives them "
                        "with a current pulse one step long (pulse)")
    p.add_argument("--tau-m-ms", type=finite_float(positive=True), default=None,
                   help="biophysical mode: membrane time constant (ms; default the export's, 10). One step lasts "
                        "tau_m ln(1/beta), so this sets the time scale, not the dynamics")
    p.add_argument("--v-rest-mv", type=finite_float(), default=None,
                   help="biophysical mode: resting potential (mV; default the export's, -65)")
    p.add_argument("--v-threshold-mv", type=finite_float(), default=None,
                   help="biophysical mode: firing threshold (mV; default the export's, -50)")
    p.add_argument("--refractory-ms", type=finite_float(0.0), default=None,
                   help="biophysical mode: absolute refractory period, a whole number of ticks (ms; default one "
                        "step, as trained)")
    p.add_argument("--build-dir", type=Path, default=None,
                   help="standalone devices: project directory (default OUT/build_DEVICE)")
    p.add_argument("--build-only", action="store_true", help="standalone devices: generate and compile, do not run")
    p.add_argument("--fresh-poisson", action="store_true",
                   help="Poisson-encoded runs: draw new input spikes (default: replay the reference's, exactly)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of Brian2's random numbers (--fresh-poisson)")
    p.add_argument("--print-model", action="store_true",
                   help="print the Brian2 code of the neurons (equations, mask, mixing, threshold, reset, plasticity) "
                        "for the chosen mode and exit without simulating")
    p.add_argument("--no-spikes", dest="keep_spikes", action="store_false",
                   help="leave the full spike arrays out of sim.nc (the fidelity figures are kept)")
    nir = p.add_argument_group("NIR graphs (RUN_DIR is a .nir file; docs/nir.md)")
    nir.add_argument("--dt", type=finite_float(positive=True), default=None,
                     help="time step in seconds (default: the graph's metadata 'dt'; snnTorch graphs: 1e-4)")
    nir.add_argument("--steps", type=int, default=None,
                     help="ticks per sample (default: the graph's metadata 'steps', or the --inputs file's T)")
    nir.add_argument("--inputs", type=Path, default=None,
                     help="samples as .npy [N, T, *input shape] or .npz with 'inputs' (and 'labels'); default: "
                          "the reference beside the graph, else CIFAR-10 test images for a 3x32x32 input")
    nir.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 directory (default $BIOFLEXNET_DATA_DIR)")
    p.set_defaults(func=cmd_sim)


# options of an export's simulation that a NIR graph does not have (flag -> its default)
_EXPORT_ONLY = {"mode": None, "plasticity": False, "ticks": None, "synapse": "delta", "tau_m_ms": None,
                "v_rest_mv": None, "v_threshold_mv": None, "refractory_ms": None, "fresh_poisson": False,
                "print_model": False, "build_only": False}
_NIR_ONLY = {"dt": None, "steps": None, "inputs": None, "data_dir": None}


def cmd_sim_nir(args: argparse.Namespace) -> None:
    """``bioflexnet sim MODEL.nir``: any NIR graph in Brian2 (:mod:`sim.nir_sim`)."""
    from core.errors import CLIError
    from core.results import write_dataset
    from sim.nir_sim import NIROptions, simulate_nir, summary, to_dataset

    given = [f"--{k.replace('_', '-')}" for k, default in _EXPORT_ONLY.items() if getattr(args, k) != default]
    if given:
        raise CLIError(f"{', '.join(given)} only apply to an export (.npz) of this project; a NIR graph is "
                       "simulated tick by tick with its own dt (see --dt, --steps, --inputs).")
    out = args.out or args.run_dir.parent / f"sim_{args.run_dir.stem}"
    output_dir(out)
    if args.build_dir is not None:
        output_dir(args.build_dir, "--build-dir")
    options = NIROptions(n_images=args.images, steps=args.steps, dt=args.dt, inputs=args.inputs,
                         data_dir=args.data_dir, device=args.device,
                         build_dir=args.build_dir or out / f"build_{args.device}")
    result, reference = simulate_nir(args.run_dir, options)
    ds = to_dataset(result, args.run_dir, options, reference)
    if not args.keep_spikes:
        ds = ds.drop_vars([v for v in ds.data_vars if v.startswith("spikes_")])
    write_dataset(ds, out / RESULT_FILE)
    print(summary(ds))
    print(f"written to {out / RESULT_FILE}")


def cmd_sim(args: argparse.Namespace) -> None:
    import warnings

    # brian2 imports setuptools' MSVC helper, which warns on every Linux run; not actionable for users
    warnings.filterwarnings("ignore", message="_get_vc_env is private", category=UserWarning)
    if args.run_dir.suffix == ".nir":
        return cmd_sim_nir(args)
    given = [f"--{k.replace('_', '-')}" for k, default in _NIR_ONLY.items() if getattr(args, k) != default]
    if given:
        from core.errors import CLIError

        raise CLIError(f"{', '.join(given)} only apply to a NIR graph (a .nir file); an export runs its own steps "
                       "on its reference images.")
    from core.export_format import read_export
    from core.results import write_dataset
    from sim.results import to_dataset
    from sim.simulate import SimOptions, neuron_model_text, simulate

    out = args.out or (args.run_dir.parent if args.run_dir.suffix == ".npz" else args.run_dir) / "sim"
    if not args.print_model:  # printing writes nothing
        output_dir(out)  # before the simulation: a bad --out must not cost its run
        if args.build_dir is not None:
            output_dir(args.build_dir, "--build-dir")
    options = SimOptions(n_images=args.images or 0, mode=args.mode or "exact", device=args.device,
                         plasticity=args.plasticity, ticks=args.ticks, synapse=args.synapse,
                         tau_m_ms=args.tau_m_ms, v_rest_mv=args.v_rest_mv, v_threshold_mv=args.v_threshold_mv,
                         refractory_ms=args.refractory_ms,
                         build_dir=args.build_dir or out / f"build_{args.device}", build_only=args.build_only,
                         fresh_poisson=args.fresh_poisson, seed=args.seed)
    export = read_export(export_path(args.run_dir))  # its errors, SimError and DeviceError are UserErrors
    if args.images is None:
        options = dataclasses.replace(options, n_images=export.n_reference)
    if args.mode is None and export.ticks > 1:  # the trained dynamics: biophysical at the export's K
        options = dataclasses.replace(options, mode="biophysical")
    if args.print_model:
        print(neuron_model_text(export, options))
        return
    result = simulate(export, options)
    if not result.ran:
        print(f"{args.device}: project generated and compiled in {options.build_dir} (--build-only; not run).")
        return
    ds = to_dataset(result, export, options, keep_spikes=args.keep_spikes)
    write_dataset(ds, out / RESULT_FILE)
    print(summary(ds, export.model))
    print(f"written to {out / RESULT_FILE}")


def summary(ds, m) -> str:
    """A few lines (``m``: the export's :class:`core.export_format.ModelHeader`): per-layer spike agreement,
    class agreement, accuracy and wall time."""
    variant = f"{m.variant} ({m.arch}, T={m.steps})"
    lines = [f"{variant}: {ds.attrs['mode']} mode on {ds.attrs['device']}, {ds.attrs['n_images']} images, "
             f"plasticity {'on' if ds.attrs['plasticity'] == 'True' else 'off'}, dt = {ds.attrs['dt_ms']:.4g} ms"
             + (f", {ds.attrs['synapse']} synapses" if "synapse" in ds.attrs else ""),
             f"{'layer':<8} {'agreement':>10} {'mismatches':>11} {'rate':>7} {'ref rate':>9}"]
    if "step_ms" in ds.attrs:  # the physics simulated
        trained = m.ticks
        lines.insert(1, f"physics: K = {ds.attrs['ticks']} ticks per step (trained at {trained}), "
                        f"step = {ds.attrs['step_ms']:.4g} ms, tau_m = {ds.attrs['tau_m_ms']:.4g} ms, "
                        f"V_rest = {ds.attrs['v_rest_mv']:.4g} mV, V_th = {ds.attrs['v_threshold_mv']:.4g} mV, "
                        f"refractory {ds.attrs['refractory_ms']:.4g} ms, {ds.attrs['synapse']} synapses, "
                        f"presentation {m.steps} steps = {m.steps * ds.attrs['step_ms']:.4g} ms")
    for i, layer in enumerate(ds.layer.values):
        lines.append(f"{layer:<8} {float(ds.spike_agreement[i]):10.6f} {int(ds.spike_mismatches[i]):11d} "
                     f"{float(ds.firing_rate[i]):7.4f} {float(ds.reference_firing_rate[i]):9.4f}")
    lines.append(f"class agreement: {float(ds.class_agreement):.4f} with the float64 PyTorch export, "
                 f"{float(ds.class_agreement_model):.4f} with the trained float32 model")
    lines.append(f"accuracy on these images: Brian2 {float(ds.accuracy):.4f}, PyTorch {float(ds.reference_accuracy):.4f}")
    lines.append(f"wall time: network build {ds.attrs['timing_build_network_s']:.1f} s, simulation "
                 f"{ds.attrs['timing_simulate_s']:.2f} s ({ds.attrs['timing_simulate_per_image_s'] * 1e3:.1f} ms "
                 "per image)" + (f", compile {ds.attrs['timing_build_s']:.1f} s" if "timing_build_s" in ds.attrs else ""))
    return "\n".join(lines)
