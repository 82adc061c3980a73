"""Plotting functions for the paper figures (called from the notebooks).

Each function takes xarray Datasets (as written by the CLI commands) and
returns a matplotlib Figure; the notebooks only choose parameters, call these
and save the figures.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from training.results import read_dataset

MODES = ("ann", "hybrid", "stbp")
FAMILY_STYLE = {"vgg": {"color": "tab:blue", "label": "VGG"}, "flex": {"color": "tab:red", "label": "BioFlexNet"}}


def collect_runs(root: str | os.PathLike, filename: str) -> xr.Dataset:
    """Stack ``ROOT/<variant>/seed<N>/<filename>`` of every run into one Dataset along ``variant`` and ``seed``.

    Runs missing the file are skipped; an error says so when none has it.
    """
    root = Path(root)
    found: dict[tuple[str, int], xr.Dataset] = {}
    for path in sorted(root.glob(f"*/seed*/{filename}")):
        variant, seed = path.parent.parent.name, int(path.parent.name.removeprefix("seed"))
        found[(variant, seed)] = read_dataset(path)
    if not found:
        raise FileNotFoundError(f"no {filename} under {root}/<variant>/seed<N>/; run `bioflexnet reproduce` first.")
    variants = list(dict.fromkeys(v for v, _ in found))
    seeds = sorted({s for _, s in found})
    rows = []
    for v in variants:
        per_seed = [found[(v, s)].expand_dims(seed=[s]) for s in seeds if (v, s) in found]
        rows.append(xr.concat(per_seed, dim="seed", join="outer", combine_attrs="drop_conflicts").expand_dims(variant=[v]))
    return xr.concat(rows, dim="variant", join="outer", combine_attrs="drop_conflicts")


def _mean_spread(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and the min-max band (the band is the single run itself for one seed)."""
    return da.mean("seed").values, da.min("seed").values, da.max("seed").values


def plot_training_curves(metrics: xr.Dataset) -> plt.Figure:
    """Fig 3: accuracy and loss per epoch, train (dashed) and validation (solid), VGG vs BioFlexNet per mode."""
    fig, axes = plt.subplots(2, len(MODES), figsize=(4.2 * len(MODES), 6.5), sharex=True, squeeze=False)
    n_seeds = metrics.sizes.get("seed", 1)
    for col, mode in enumerate(MODES):
        for row, (quantity, ylabel) in enumerate((("accuracy", "top-1 accuracy"), ("loss", "cross-entropy"))):
            ax = axes[row, col]
            for family, style in FAMILY_STYLE.items():
                variant = f"{family}-{mode}"
                if variant not in metrics.variant.values:
                    continue
                run = metrics.sel(variant=variant).dropna("epoch", how="all", subset=["val_accuracy"])
                epochs = run.epoch.values
                for split, ls in (("val", "-"), ("train", "--")):
                    mean, lo, hi = _mean_spread(run[f"{split}_{quantity}"])
                    ax.plot(epochs, mean, ls, marker="o", markersize=3, color=style["color"],
                            label=f"{style['label']} {split}")
                    ax.fill_between(epochs, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
            ax.set_title(f"{mode}" if row == 0 else "")
            ax.set_ylabel(ylabel if col == 0 else "")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if row == 1:
                ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"CIFAR-10 training curves (validation = full test split; band = min–max over {n_seeds} seed(s))")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save a figure atomically (PNG unless the suffix says otherwise) and close it."""
    from training.results import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
