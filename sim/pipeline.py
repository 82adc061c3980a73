"""The simulation stage of ``bioflexnet reproduce``: export, simulate, summarise.

For the spiking variants in :data:`VARIANTS` and every seed: export the run
(``bioflexnet export``, in a subprocess because this package never imports
torch), simulate it at its trained time resolution (``exact`` mode, or for a network
trained at ``K > 1`` ticks per step the biophysical mode at that ``K``; the
result is still called ``exact``) on the profile's number of reference
images, and in ``biophysical`` mode for a few ``dt`` (and the trained one) on
fewer images (delta synapses, plus one run with pulse synapses for comparison).
Flex runs are also simulated in exact mode with the online plasticity on (mask
trajectories). Results go to ``RUN_DIR/sim/exact/sim.nc``,
``RUN_DIR/sim/exact_plasticity/sim.nc``, ``RUN_DIR/sim/biophysical_k{K}/sim.nc`` and
``RUN_DIR/sim/biophysical_pulse_k{K}/sim.nc``;
``ROOT/sim_summary.nc`` collects the fidelity figures of all runs, ``ROOT/convergence.nc``
the biophysical runs as a convergence table (:mod:`sim.convergence`).

Re-running the stage reuses an export made from the same checkpoint (its
SHA-256 is in the export header) and every ``sim.nc`` simulated from the
same export file with the same options.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr

VARIANTS = ("flex-stbp", "vgg-stbp")
SUMMARY = "sim_summary.nc"
CONVERGENCE = "convergence.nc"  # class agreement, accuracy, rate ratio vs dt (sim.convergence)


class StagePlan(NamedTuple):
    images: int  # reference images exported and simulated in exact mode
    bio_images: int  # images per biophysical run
    substeps: tuple[int, ...]  # biophysical dt = step / K for each K (delta synapses)
    pulse_substeps: int  # the K of the one biophysical run with pulse synapses


PLANS = {"smoke": StagePlan(8, 4, (1, 4), 4), "quick": StagePlan(100, 100, (1, 4, 16), 4),
         "paper": StagePlan(200, 100, (1, 4, 16), 4)}


def _brian_device(torch_device: str) -> str:
    """cuda_standalone where a GPU and brian2cuda are there, else the runtime device."""
    from sim.devices import gpu_available

    if str(torch_device).startswith("cuda") and importlib.util.find_spec("brian2cuda") and gpu_available():
        return "cuda_standalone"
    return "runtime"


def export(run_dir: Path, images: int, data_dir: Path | None) -> Path:
    """Run ``bioflexnet export`` in a subprocess (torch stays out of this process)."""
    cmd = [sys.executable, "-m", "bioflexnet.cli", "export", str(run_dir), "--images", str(images)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"export of {run_dir} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return Path(run_dir) / "export.npz"


def current_export(run_dir: Path, images: int, data_dir: Path | None):
    """The run's export if it holds ``images`` reference images of the present checkpoint, else a new one."""
    from core.export_format import ExportError, read_export
    from core.results import file_sha256

    path = Path(run_dir) / "export.npz"
    if path.is_file():
        try:
            ex = read_export(path)
        except ExportError:  # an older format or a broken file: export again
            ex = None
        checkpoint = Path(run_dir) / "checkpoint.pt"
        if (ex is not None and ex.n_reference == images and checkpoint.is_file()
                and ex.header.get("run", {}).get("checkpoint_sha256") == file_sha256(checkpoint)):
            return ex
    return read_export(export(run_dir, images, data_dir))


def simulate_run(run_dir: Path, plan: StagePlan, data_dir: Path | None, device: str) -> dict[str, xr.Dataset]:
    """Export one run and simulate it; returns ``{"exact": ds, "biophysical_k4": ds, ...}``."""
    from core.results import file_sha256, reusable_dataset, write_dataset
    from sim.results import options_key, to_dataset
    from sim.simulate import SimOptions, simulate

    ex = current_export(run_dir, plan.images, data_dir)
    export_sha = file_sha256(ex.path)
    # "exact": the trained dynamics, spike for spike (a network trained at K > 1 ticks per step: the
    # biophysical mode at its K, the export's default)
    trained = "exact" if ex.ticks == 1 else "biophysical"
    jobs = {"exact": SimOptions(n_images=plan.images, mode=trained, device=device)}
    if any(la.kind == "flex" for la in ex.layers):  # mask trajectories under online plasticity (fidelity figure)
        jobs["exact_plasticity"] = SimOptions(n_images=plan.images, mode=trained, device=device, plasticity=True)
    if 0.0 < ex.model["beta"] < 1.0:
        for k in sorted(set(plan.substeps) | {ex.ticks}):
            jobs[f"biophysical_k{k}"] = SimOptions(n_images=plan.bio_images, mode="biophysical", substeps=k,
                                                   device=device)
        k = plan.pulse_substeps
        jobs[f"biophysical_pulse_k{k}"] = SimOptions(n_images=plan.bio_images, mode="biophysical", substeps=k,
                                                     synapse="pulse", device=device)
    out = {}
    for name, options in jobs.items():
        folder = Path(run_dir) / "sim" / name
        options = dataclasses.replace(options, build_dir=folder / f"build_{device}")
        key = {"export_sha256": export_sha, "options": options_key(options)}
        ds = reusable_dataset(folder / "sim.nc", key)  # simulated from the same export with these options
        if ds is None:
            ds = to_dataset(simulate(ex, options), ex, options, keep_spikes=name == "exact")
            ds.attrs.update(key)
            write_dataset(ds, folder / "sim.nc")
        else:
            print(f"  {name}: up to date, reused", flush=True)
        out[name] = ds
    return out


def summarise(results: dict[tuple[str, int], dict[str, xr.Dataset]]) -> xr.Dataset:
    """Class agreement per run and simulation, and the exact-mode spike agreement per layer."""
    runs = list(results)
    sims = list(dict.fromkeys(name for r in results.values() for name in r))
    agree = np.full((len(runs), len(sims)), np.nan)
    for i, run in enumerate(runs):
        for j, name in enumerate(sims):
            if name in results[run]:
                agree[i, j] = float(results[run][name].class_agreement)
    layers = list(dict.fromkeys(la for r in results.values() for la in r["exact"].layer.values))
    spikes = np.full((len(runs), len(layers)), np.nan)
    for i, run in enumerate(runs):
        ds = results[run]["exact"]
        for layer, value in zip(ds.layer.values, ds.spike_agreement.values):
            spikes[i, layers.index(layer)] = value
    from core.results import provenance

    return xr.Dataset(
        {"class_agreement": (("run", "simulation"), agree, {"long_name": "fraction of images classified as by the "
                                                                         "float64 PyTorch reference", "units": "1"}),
         "spike_agreement": (("run", "layer"), spikes, {"long_name": "exact-mode spike agreement", "units": "1"})},
        coords={"run": [f"{v}/seed{s}" for v, s in runs], "simulation": sims, "layer": layers},
        attrs=provenance())


def run_stage(root: Path, run_dirs: dict[tuple[str, int], Path], *, profile: str, data_dir: Path | None = None,
              device: str = "cpu") -> None:
    """Simulate the spiking runs of a reproduction and write ``ROOT/sim_summary.nc``."""
    from core.results import write_dataset

    plan = PLANS.get(profile, PLANS["quick"])
    brian_device = _brian_device(device)
    results = {}
    t0 = time.perf_counter()
    for (variant, seed), run_dir in sorted(run_dirs.items()):
        if variant not in VARIANTS:
            continue
        print(f"simulating {variant} seed {seed} in Brian2 ({brian_device}) ...", flush=True)
        results[(variant, seed)] = simulate_run(run_dir, plan, data_dir, brian_device)
    if not results:
        return
    summary = summarise(results)
    write_dataset(summary, Path(root) / SUMMARY)
    from sim.convergence import convergence_dataset

    write_dataset(convergence_dataset({f"{v}/seed{s}": {int(ds.attrs["substeps"]): ds for name, ds in r.items()
                                                        if name.startswith("biophysical_k")}
                                       for (v, s), r in results.items()}), Path(root) / CONVERGENCE)
    print(f"\nBrian2 fidelity (class agreement with PyTorch; exact mode on {plan.images} images, biophysical on "
          f"{plan.bio_images}):")
    width = max(len(str(s)) for s in summary.simulation.values) + 2
    print(f"{'run':<18}" + "".join(f"{s:>{width}}" for s in summary.simulation.values))
    for run in summary.run.values:
        print(f"{run:<18}" + "".join(f"{v:{width}.3f}" for v in summary.class_agreement.sel(run=run).values))
    low = float(summary.spike_agreement.min())
    print(f"exact-mode spike agreement, lowest over runs and layers: {low:.6f} (written to {root / SUMMARY})")
    print(f"sim stage: {time.perf_counter() - t0:.0f} s wall")
