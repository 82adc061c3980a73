"""Combine per-run result Datasets into one along ``variant`` and ``seed`` (torch-free, used by every package).

Each run's Dataset carries ``variant`` and ``seed`` attrs. Runs are stacked on
new leading dims ``variant`` and ``seed``; other dims are outer-joined (a
VGG has no ``down*`` layers, an ANN has one time step: missing entries are
NaN). Attrs equal in every run stay attrs; attrs that differ (config,
checkpoint hash, gradient description, creation time, ...) become string
variables ``run_<name>[variant, seed]`` so nothing about a run is lost.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from core.results import read_dataset


def combine_runs(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """Stack runs along ``variant`` and ``seed`` (see the module docstring)."""
    if not datasets:
        raise ValueError("combine_runs needs at least one Dataset.")
    keys = []
    for ds in datasets:
        if "variant" not in ds.attrs or "seed" not in ds.attrs:
            raise ValueError("every Dataset needs 'variant' and 'seed' attrs (results of bioflexnet's analyses have "
                             f"them); got attrs {sorted(ds.attrs)}.")
        keys.append((str(ds.attrs["variant"]), int(ds.attrs["seed"])))
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate (variant, seed) among the Datasets: {keys}.")
    shared = {k: v for k, v in datasets[0].attrs.items()
              if k not in ("variant", "seed") and all(k in ds.attrs and _same(ds.attrs[k], v) for ds in datasets)}
    varying = sorted({k for ds in datasets for k in ds.attrs} - set(shared) - {"variant", "seed"})
    variants = list(dict.fromkeys(v for v, _ in keys))
    seeds = sorted({s for _, s in keys})
    per_variant = []
    for variant in variants:
        runs = [ds for ds, (v, _) in zip(datasets, keys) if v == variant]
        runs = [_tag(ds, varying).expand_dims(seed=[int(ds.attrs["seed"])]) for ds in runs]
        per_variant.append(xr.concat(runs, dim="seed", join="outer", coords="different", compat="equals",
                                     combine_attrs="drop").expand_dims(variant=[variant]))
    out = xr.concat(per_variant, dim="variant", join="outer", coords="different", compat="equals",
                    combine_attrs="drop")
    # the outer join sorts string indexes; restore the runs' order (layers in network order, attacks as run)
    out = out.reindex(seed=seeds, **_label_order(datasets))
    for var in out.variables.values():
        # an integer read from a file keeps its on-disk dtype in `encoding`; once the outer join has put
        # NaN into it, writing it back as that integer would turn NaN into -2**63
        if var.dtype.kind == "f" and np.dtype(var.encoding.get("dtype", var.dtype)).kind in "iu":
            var.encoding.pop("dtype")
    out["variant"].attrs["long_name"] = "model variant ({vgg|flex}-{ann|hybrid|stbp})"
    out["seed"].attrs["long_name"] = "training seed"
    out.attrs = shared
    return out


def _label_order(datasets: Sequence[xr.Dataset]) -> dict[str, list]:
    """Union of every string index, in the order of the run that has the most labels, then the others'."""
    order: dict[str, list] = {}
    for dim in {d for ds in datasets for d in ds.indexes if ds.indexes[d].dtype.kind in "OUS"}:
        runs = sorted((list(ds.indexes[dim]) for ds in datasets if dim in ds.indexes), key=len, reverse=True)
        order[dim] = list(dict.fromkeys(label for labels in runs for label in labels))
    return order


def _same(a, b) -> bool:
    return bool(np.all(a == b)) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b


def _tag(ds: xr.Dataset, varying: list[str]) -> xr.Dataset:
    """Move the run-specific attrs into scalar string variables."""
    ds = ds.copy()
    for key in varying:
        ds[f"run_{key}"] = xr.DataArray(str(ds.attrs.get(key, "")), attrs={"long_name": f"per-run attr {key!r}"})
    return ds


def combine_files(paths: Sequence[str | os.PathLike]) -> xr.Dataset:
    """Read result files and combine them."""
    return combine_runs([read_dataset(Path(p)) for p in paths])
