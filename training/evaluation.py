"""Test-split evaluation of a saved run (``bioflexnet evaluate``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from core.results import provenance, write_dataset
from training import data as cifar
from training.runs import load_model
from training.trainer import evaluate

EVALUATION = "evaluation.nc"


def evaluate_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int = 1000) -> xr.Dataset:
    """Evaluate a run's saved model on the full CIFAR-10 test split and write ``evaluation.nc``."""
    run_dir = Path(run_dir)
    model, cfg = load_model(run_dir, device)
    split = cifar.load_split("test", data_dir, device)
    res = evaluate(model, split, batch_size)
    layers = model.names_with_neurons()
    ds = xr.Dataset(
        {
            "test_accuracy": xr.DataArray(res.accuracy, attrs={"long_name": "top-1 accuracy on the CIFAR-10 test split",
                                                               "units": "1"}),
            "test_loss": xr.DataArray(res.loss, attrs={"long_name": "mean cross-entropy on the test split", "units": "nat"}),
            "firing_rate": xr.DataArray([res.firing_rate.get(n, np.nan) for n in layers], dims="layer", attrs={
                "long_name": "mean spikes per neuron and step (ann: fraction of active units)", "units": "1/step"}),
            "conv_ratio": xr.DataArray([res.conv_ratio.get(n, np.nan) for n in layers], dims="layer", attrs={
                "long_name": "mean flex mask m (conv share); NaN for non-flex layers", "units": "1"}),
        },
        coords={"layer": xr.DataArray(layers, dims="layer", attrs={"long_name": "neuron layer"})},
        attrs={**provenance(cfg.to_dict(), cfg.seed), "variant": cfg.variant, "n_images": len(split)},
    )
    write_dataset(ds, run_dir / EVALUATION)
    return ds
