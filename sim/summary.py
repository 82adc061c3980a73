"""The fidelity summary of a reproduction: every ``sim.nc`` of every simulated run, on ``variant`` x ``seed``.

``run_summary`` reduces the simulations of one run (``{job: sim.nc Dataset}``) to its class agreement per
simulation and its exact-mode spike agreement per layer; ``run_convergence`` its biophysical runs to a
convergence table over ``ticks`` (:mod:`sim.convergence`). Both carry ``variant`` and ``seed`` attrs, so
:func:`core.combine.combine_runs` stacks them like every other per-run result. Torch-free and Brian2-free.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from core.combine import combine_runs
from core.results import provenance, read_dataset
from sim.convergence import convergence_dataset

BIOPHYSICAL_PREFIX = "biophysical_k"  # jobs named biophysical_k{K}: delta synapses at K ticks per step


def run_summary(variant: str, seed: int, sims: dict[str, xr.Dataset]) -> xr.Dataset:
    """Class agreement per simulation and the exact-mode spike agreement per layer of one run."""
    names = list(sims)
    exact = sims["exact"]
    return xr.Dataset(
        {"class_agreement": ("simulation", [float(sims[n].class_agreement) for n in names],
                             {"long_name": "fraction of images classified as by the float64 PyTorch reference",
                              "units": "1"}),
         "spike_agreement": ("layer", exact.spike_agreement.values,
                             {"long_name": "exact-mode spike agreement", "units": "1"})},
        coords={"simulation": names, "layer": exact.layer.values},
        attrs={"variant": str(variant), "seed": int(seed)})


def run_convergence(variant: str, seed: int, sims: dict[str, xr.Dataset]) -> xr.Dataset | None:
    """The biophysical (delta-synapse) runs of one run over ``ticks``; None if it has none."""
    bio = {int(ds.attrs["ticks"]): ds for name, ds in sims.items() if name.startswith(BIOPHYSICAL_PREFIX)}
    if not bio:
        return None
    ds = convergence_dataset({str(variant): bio}).isel(model=0, drop=True)
    return ds.assign_attrs(variant=str(variant), seed=int(seed))


def summarise(runs: dict[tuple[str, int], dict[str, Path]]) -> tuple[xr.Dataset, xr.Dataset | None]:
    """``{(variant, seed): {job: sim.nc path}}`` -> (``sim_summary``, ``convergence``) on variant x seed."""
    summaries, tables = [], []
    for (variant, seed), paths in runs.items():
        sims = {job: read_dataset(path) for job, path in paths.items()}
        summaries.append(run_summary(variant, seed, sims))
        table = run_convergence(variant, seed, sims)
        if table is not None:
            tables.append(table)
    attrs = provenance()
    summary = combine_runs(summaries).assign_attrs(attrs)
    convergence = combine_runs(tables).assign_attrs(attrs) if tables else None
    if convergence is not None and convergence.dt_ms.ndim > 1:  # runs of different step lengths: the mean dt
        dt = convergence.dt_ms.mean([d for d in convergence.dt_ms.dims if d != "ticks"])
        convergence = convergence.assign_coords(dt_ms=("ticks", dt.values, convergence.dt_ms.attrs))
    return summary, convergence


def lines(summary: xr.Dataset) -> list[str]:
    """The class agreement table and the lowest exact-mode spike agreement."""
    sims = [str(s) for s in summary.simulation.values]
    width = max(len(s) for s in sims) + 2
    out = [f"{'run':<18}" + "".join(f"{s:>{width}}" for s in sims)]
    for v in summary.variant.values:
        for s in summary.seed.values:
            row = summary.class_agreement.sel(variant=v, seed=s).values
            if np.isfinite(row).any():
                out.append(f"{f'{v}/seed{int(s)}':<18}" + "".join(f"{x:{width}.3f}" for x in row))
    out.append(f"exact-mode spike agreement, lowest over runs and layers: {float(summary.spike_agreement.min()):.6f}")
    return out
