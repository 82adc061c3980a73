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

from core.variants import Variant

MODES = ("ann", "hybrid", "stbp")
FAMILY_STYLE = {"vgg": {"color": "tab:blue", "label": "VGG"}, "flex": {"color": "tab:red", "label": "BioFlexNet"},
                "vggmp": {"color": "tab:cyan", "label": "VGG (max-pool)"}}


def collect_runs(root: str | os.PathLike, filename: str) -> xr.Dataset:
    """Every ``ROOT/<variant>/seed<N>/<filename>`` combined along ``variant`` and ``seed``
    (:func:`core.combine.combine_files`)."""
    from core.combine import combine_files

    paths = sorted(p for p in Path(root).glob(f"*/seed*/{filename}") if not p.parts[-3].startswith("ablation-"))
    if not paths:
        raise FileNotFoundError(f"no {filename} under {root}/<variant>/seed<N>/; run `bioflexnet reproduce` first.")
    return combine_files(paths)


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
                variant = Variant(family, mode)
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
    fig.suptitle(f"CIFAR-10 training curves (validation = {metrics.attrs.get('validation', 'held-out training images')}; "
                 f"band = min–max over {n_seeds} seed(s))")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save a figure atomically (PNG unless the suffix says otherwise) and close it."""
    from core.results import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


VARIANT_ORDER = tuple(Variant(f, m) for m in MODES for f in ("vgg", "flex"))
MODE_LINESTYLE = {"ann": ":", "hybrid": "--", "stbp": "-"}


def _style(variant: str) -> dict:
    v = Variant.parse(variant)
    return {"color": FAMILY_STYLE[v.family]["color"], "linestyle": MODE_LINESTYLE[v.mode.value],
            "label": f"{FAMILY_STYLE[v.family]['label']} {v.mode.value}"}


def _variants(ds: xr.Dataset, modes: tuple[str, ...] = MODES) -> list[str]:
    return [v for v in VARIANT_ORDER if v in ds.variant.values and v.mode.value in modes]


def _first_seed_value(da: xr.DataArray) -> xr.DataArray:
    """A coordinate that is the same in every run (e.g. the epsilon grid): drop the run dims."""
    for dim in ("variant", "seed"):
        if dim in da.dims:
            da = da.dropna(dim, how="all").isel({dim: 0})
    return da


HEADLINE = ("worst", "apgd_ce", "apgd_dlr", "pgd", "square", "transfer")  # the robustness claim and its parts
PAPER = ("fgsm", "pgd_last", "spgd")  # the original authors' protocol
TITLES = {"worst": "worst case per image (APGD-CE/DLR, PGD, Square, transfer)", "apgd_ce": "APGD-CE",
          "apgd_dlr": "APGD-DLR", "pgd": "PGD (best iterate)", "square": "Square (no gradient)",
          "transfer": "transfer from the ANN twin", "fgsm": "FGSM (paper)", "pgd_last": "PGD, last iterate (paper)",
          "spgd": "SPGD, last iterate (paper)"}


def _curve(ax: plt.Axes, rob: xr.Dataset, attack: str, first: bool) -> None:
    eps = _first_seed_value(rob.epsilon.sel(attack=attack)).values
    for v in _variants(rob):
        mean, lo, hi = _mean_spread(rob.accuracy.sel(attack=attack, variant=v))
        style = _style(v)
        ax.plot(eps * 255, mean, marker="o", markersize=2.5, **style)
        ax.fill_between(eps * 255, lo, hi, color=style["color"], alpha=0.12, linewidth=0)
    ax.axhline(float(rob.attrs.get("chance", 0.1)), color="grey", lw=0.8, ls=":")
    if attack == "worst":
        ax.axvline(8, color="black", lw=0.8, ls="--")
    ax.set_title(TITLES.get(attack, attack.upper()), fontsize=9)
    ax.set_xlabel("ε × 255 (L∞, [0, 1] pixels)")
    ax.set_ylabel("top-1 accuracy" if first else "")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)


def plot_robustness(rob: xr.Dataset) -> plt.Figure:
    """Fig 4: robustness (row 1: the per-image worst case, dashed at 8/255, and the attacks it combines) and the
    paper protocol (row 2: FGSM, last-iterate PGD and SPGD curves; row 3: their AUC bars)."""
    headline = [a for a in HEADLINE if a in rob.attack.values]
    paper = [a for a in PAPER if a in rob.attack.values]
    cols = max(len(headline), len(paper), 1)
    rows = [r for r in (headline, paper) if r]
    fig = plt.figure(figsize=(3.6 * cols, 3.6 * len(rows) + (3.2 if paper else 0)))
    grid = fig.add_gridspec(len(rows) + bool(paper), cols)
    for r, attacks in enumerate(rows):
        for i, attack in enumerate(attacks):
            _curve(fig.add_subplot(grid[r, i]), rob, attack, i == 0)
    fig.axes[0].legend(fontsize=7)
    if paper:
        ax = fig.add_subplot(grid[len(rows), :])
        variants = _variants(rob)
        width = 0.8 / max(1, len(variants))
        for j, v in enumerate(variants):
            auc = rob.auc_normalised.sel(variant=v, attack=paper)
            style = _style(v)
            ax.bar(np.arange(len(paper)) + (j - (len(variants) - 1) / 2) * width, auc.mean("seed").values, width,
                   yerr=auc.std("seed").values if rob.sizes.get("seed", 1) > 1 else None, color=style["color"],
                   hatch={"ann": "..", "hybrid": "//", "stbp": ""}[v.mode.value], edgecolor="white",
                   label=style["label"])
        ax.set_xticks(np.arange(len(paper)), [TITLES[b] for b in paper])
        ax.set_ylabel("AUC / ε range (paper protocol)")
        ax.legend(fontsize=7, ncol=3)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Robustness on {rob.sizes.get('sample', '?')} CIFAR-10 test images: worst case (row 1) and the "
                 f"paper protocol (below); gradients: see the `gradient` attr of robustness.nc")
    fig.tight_layout()
    return fig


def worst_table(rob: xr.Dataset) -> xr.DataArray:
    """Worst-case accuracy at 8/255 per variant (mean over seeds): the robustness number."""
    return rob.worst_accuracy_8_255.mean("seed") if "seed" in rob.worst_accuracy_8_255.dims else rob.worst_accuracy_8_255


def sanity_table(rob: xr.Dataset) -> list[str]:
    """One line per run: the weak-attack / gradient-masking sanity verdict."""
    return [f"{v} seed {int(s)}: {rob.sanity_verdict.sel(variant=v, seed=s).item()}"
            for v in _variants(rob) for s in rob.seed.values
            if str(rob.sanity_verdict.sel(variant=v, seed=s).item()) not in ("", "nan")]


def plot_sparsity(spa: xr.Dataset, raster_variants: tuple[str, ...] = ("vgg-stbp", "flex-stbp"),
                  image: int = 0) -> plt.Figure:
    """Fig 5: spike rasters (sampled neurons, one image), per-layer firing rates, SynOps and energy."""
    seed = spa.seed.values[0]
    raster_variants = tuple(v for v in raster_variants if v in spa.variant.values)
    fig = plt.figure(figsize=(13, 8))
    grid = fig.add_gridspec(2, max(2, len(raster_variants)))
    for i, v in enumerate(raster_variants):
        ax = fig.add_subplot(grid[0, i])
        run = spa.sel(variant=v, seed=seed)
        layers = [str(n) for n in run.layer.values if not np.all(np.isnan(run.raster.sel(layer=n).values))]
        offset = 0
        for name in layers:
            act = run.raster.sel(layer=name).isel(raster_image=image).values  # [neuron, time]
            act = act[~np.isnan(act).any(axis=1)]
            t_idx, n_idx = np.nonzero(act.T > 0)
            ax.scatter(t_idx + 0.5, n_idx + offset, s=1.5, marker="|", color="black")
            ax.axhline(offset, color="grey", lw=0.4)
            ax.text(act.shape[1] + 0.05, offset + act.shape[0] / 2, name, fontsize=7, va="center")
            offset += act.shape[0]
        ax.set_xlim(0, run.sizes["time"])
        ax.set_ylim(0, offset)
        ax.set_xlabel("time step")
        ax.set_ylabel("sampled neurons (by layer)")
        ax.set_title(f"{_style(v)['label']}: spikes of test image {int(run.raster_sample.values[image])}")
    spiking = [v for v in _variants(spa, ("hybrid", "stbp"))]
    ax = fig.add_subplot(grid[1, 0])
    order = [str(n) for n in spa.layer.values if str(n) != "classifier"]  # network order (combine keeps it)
    for v in spiking:
        rate = spa.mean_firing_rate.sel(variant=v, layer=order).mean("seed")
        keep = ~np.isnan(rate.values)
        ax.plot(np.arange(len(order))[keep], rate.values[keep], marker="o", **_style(v))
    ax.set_xticks(np.arange(len(order)), order, rotation=60, fontsize=7)
    ax.set_ylabel("spikes / neuron / step")
    ax.set_title("per-layer firing rate (test images)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[1, 1:])
    variants = _variants(spa)
    energy = np.array([float(spa.total_energy.sel(variant=v).mean("seed")) for v in variants]) / 1e6
    synops = np.array([float(spa.synops.sel(variant=v).sum("layer").mean("seed")) for v in variants]) / 1e6
    colors = [_style(v)["color"] for v in variants]
    ax.bar(np.arange(len(variants)), energy, color=colors)
    for k, (e, s) in enumerate(zip(energy, synops)):
        ax.text(k, e, f"{s:.1f} M ops", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(variants)), variants, rotation=20)
    ax.set_ylabel("µJ per image (ESTIMATE)")
    ax.set_title("synaptic energy, 45 nm estimate: 0.9 pJ/AC, 4.6 pJ/MAC")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_landscapes(land: xr.Dataset, modes: tuple[str, ...] = ("hybrid", "stbp")) -> plt.Figure:
    """Fig 6: 3-D loss surfaces along two filter-normalised directions, one panel per variant (first seed)."""
    variants = _variants(land, modes)
    seed = land.seed.values[0]
    cols = max(1, len(variants) // 2) if len(variants) > 2 else len(variants)
    rows = int(np.ceil(len(variants) / cols))
    fig = plt.figure(figsize=(4.5 * cols, 4.2 * rows))
    a, b = np.meshgrid(land.alpha.values, land.beta.values, indexing="ij")
    zmax = float(land.loss.sel(variant=variants, seed=seed).max())
    for k, v in enumerate(variants):
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
        run = land.sel(variant=v, seed=seed)
        ax.plot_surface(a, b, run.loss.values, cmap="viridis", linewidth=0, antialiased=True, vmin=0, vmax=zmax)
        ax.set_zlim(0, zmax)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_zlabel("loss")
        ax.set_title(f"{_style(v)['label']}\nλ_max(H) = {float(run.hessian_top_eigenvalue):.3g}", fontsize=9)
    fig.suptitle("Loss landscapes (Li et al. 2018 filter-normalised directions; Hessian through the surrogate)")
    fig.tight_layout()
    return fig


def _runs(da: xr.DataArray) -> list[tuple[str, int]]:
    """The (variant, seed) pairs of a variant x seed result that hold data (a run not simulated is all NaN)."""
    other = [d for d in da.dims if d not in ("variant", "seed")]
    have = da.notnull().any(other) if other else da.notnull()
    return [(str(v), int(s)) for v in da.variant.values for s in da.seed.values
            if bool(have.sel(variant=v, seed=s))]


def plot_fidelity(summary: xr.Dataset, plastic: xr.Dataset | None = None) -> plt.Figure:
    """Brian2 vs PyTorch: exact-mode spike agreement per layer, class agreement per simulation, and the
    flex masks' trajectories under online plasticity (``plastic``: a ``sim.nc`` run with ``--plasticity``)."""
    ncols = 3 if plastic is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2))
    runs = _runs(summary.class_agreement)
    width = 0.8 / max(1, len(runs))
    layers = list(summary.layer.values)
    for k, (variant, seed) in enumerate(runs):
        agree = summary.spike_agreement.sel(variant=variant, seed=seed).values
        color = FAMILY_STYLE[Variant.parse(variant).family]["color"]
        axes[0].bar(np.arange(len(layers)) + (k - (len(runs) - 1) / 2) * width, agree, width,
                    label=f"{variant}/seed{seed}", color=color, alpha=1.0 if "stbp" in str(variant) else 0.5)
    axes[0].set_xticks(np.arange(len(layers)), layers, rotation=45)
    axes[0].set_ylim(min(0.9, float(np.nanmin(summary.spike_agreement))) - 0.01, 1.005)
    axes[0].set_ylabel("spike agreement (exact mode)")
    axes[0].set_title("Brian2 vs PyTorch spikes per layer")
    axes[0].legend(fontsize=7)
    sims = list(summary.simulation.values)
    for k, (variant, seed) in enumerate(runs):
        color = FAMILY_STYLE[Variant.parse(variant).family]["color"]
        axes[1].bar(np.arange(len(sims)) + (k - (len(runs) - 1) / 2) * width,
                    summary.class_agreement.sel(variant=variant, seed=seed).values, width,
                    label=f"{variant}/seed{seed}", color=color)
    axes[1].set_xticks(np.arange(len(sims)), sims, rotation=30, ha="right")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel("class agreement with PyTorch")
    axes[1].set_title("classification: exact, plastic, biophysical (dt = step/K)")
    axes[1].set_xlabel("biophysical: delta synapses unless marked pulse")
    for ax in axes[:2]:
        ax.grid(alpha=0.3, axis="y")
    if plastic is not None:
        ax = axes[2]
        for name in [str(v).removeprefix("plastic_bias_") for v in plastic.data_vars if str(v).startswith("plastic_bias_")]:
            b = plastic[f"plastic_bias_{name}"]  # [image, tick, channel]
            drift = (b - b.isel(image=0, tick=0)).mean(b.dims[-1]).values.reshape(-1)
            ax.plot(np.arange(drift.size), drift, label=name)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("simulation tick (images presented one after another)")
        ax.set_ylabel("channel-mean change of the mask bias b")
        lam = plastic.attrs.get("plasticity_rate")  # lambda, named as in --set model.plasticity_rate
        rule = "" if lam is None else (f"\nλ = model.plasticity_rate = {float(lam):g}, "
                                       f"δ = model.plasticity_decay = {float(plastic.attrs['plasticity_decay']):g}")
        ax.set_title(f"online plasticity: drift of the mask bias b over {plastic.attrs.get('n_images', '?')} images"
                     + rule, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_claims(claims: xr.Dataset) -> plt.Figure:
    """The poster's claims: FLEX − VGG per mode with the 95 % interval over paired seeds (error bars)."""
    names = list(claims.claim.values)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        c = claims.sel(claim=name)
        x = np.arange(claims.sizes["mode"])
        mean, low, high = c.difference.values, c.ci_low.values, c.ci_high.values
        err = np.vstack([mean - low, high - mean])
        colors = ["tab:green" if v == "holds" else "tab:red" if v == "fails" else "tab:grey" for v in c.verdict.values]
        for i in x:
            if np.isfinite(mean[i]):
                ax.errorbar(i, mean[i], yerr=None if np.isnan(err[:, i]).any() else err[:, i:i + 1], fmt="o",
                            color=colors[i], capsize=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, claims.mode.values)
        better = "↑ FLEX better" if c.better.item() == "higher" else "↓ FLEX better"
        ax.set_title(f"{c.claim_long_name.item()}\n({better})", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    n = int(np.nanmax(claims.n_seeds.values)) if np.isfinite(claims.n_seeds.values).any() else 0
    fig.suptitle(f"FLEX − VGG twin, mean and 95 % t-interval over {n} paired seed(s); "
                 "green: holds, red: fails, grey: can't tell", fontsize=9)
    fig.tight_layout()
    return fig


def plot_convergence(conv: xr.Dataset) -> plt.Figure:
    """Convergence in dt (``sim.convergence``): class agreement with PyTorch and Brian2 accuracy vs
    ``dt = step / K``, one line per model; the trained ``K`` of each model is marked with a ring; a dotted
    line per model: the agreement on the images whose reference margin is at least the median."""
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2))
    ks = np.asarray(conv.ticks.values)
    for variant, seed in _runs(conv.class_agreement):
        row = conv.sel(variant=variant, seed=seed)
        trained = int(row.trained_ticks)
        family = Variant.parse(variant).family
        style = {"color": FAMILY_STYLE.get(family, {"color": None})["color"], "marker": "o",
                 "ls": "-" if trained > 1 else "--"}
        label = f"{variant}/seed{seed} (trained K={trained})"
        for ax, var in zip(axes, ("class_agreement", "accuracy")):
            y = row[var].values
            ok = np.isfinite(y)
            ax.plot(1.0 / ks[ok], y[ok], label=label, **style)
            if trained in ks and np.isfinite(y[list(ks).index(trained)]):
                ax.plot(1.0 / trained, y[list(ks).index(trained)], "o", ms=12, mfc="none", color=style["color"])
        if "class_agreement_confident" in row:  # the same, on the half of the images the reference is surest of
            y = row.class_agreement_confident.values
            ok = np.isfinite(y)
            axes[0].plot(1.0 / ks[ok], y[ok], color=style["color"], marker=".", ls=":", lw=1,
                         label=f"{variant}/seed{seed}, margin ≥ median")
    for ax, name in zip(axes, ("class agreement with PyTorch (trained K)", "Brian2 accuracy")):
        ax.set_xscale("log", base=2)
        ax.invert_xaxis()
        ax.set_xlabel("dt / step = 1/K (finer to the right)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.95, color="grey", lw=0.6, ls=":")
    axes[0].set_ylim(0, 1.02)
    axes[0].set_title(f"Brian2 biophysical mode vs PyTorch ({conv.attrs.get('n_images', '?')} test images)")
    axes[1].set_title("accuracy on the same images")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_fidelity_levers(levers: xr.Dataset) -> plt.Figure:
    """Fidelity levers (``analysis.fidelity``): class agreement with the trained network and with the
    ``S = 64`` reference vs ``dt = step / S``, one line per configuration; a ring marks the trained ``K``;
    the dotted grey line is the 0.95 target of issue 19."""
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2), sharey=True)
    ss = np.asarray(levers.substeps.values)
    for config in levers.config.values:
        row = levers.sel(config=config)
        trained = int(row.trained_ticks)
        family = str(row.variant.values).split("-")[0] if "variant" in row.coords else ""
        style = {"color": FAMILY_STYLE.get(family, {"color": None})["color"] if family else None, "marker": "o",
                 "ls": "-" if int(row.time_steps) > 2 else "--"}
        for ax, var in zip(axes, ("class_agreement", "reference_agreement")):
            y = row[var].values
            ok = np.isfinite(y)
            line, = ax.plot(1.0 / ss[ok], y[ok], label=f"{config} (T={int(row.time_steps)}, K={trained})", **style)
            if trained in ss:
                ax.plot(1.0 / trained, y[list(ss).index(trained)], "o", ms=12, mfc="none", color=line.get_color())
    for ax, name in zip(axes, ("class agreement with the trained network (S = K)",
                               f"class agreement with S = {levers.attrs.get('reference_ticks', 64)}")):
        ax.set_xscale("log", base=2)
        ax.invert_xaxis()
        ax.set_xlabel("dt / step = 1/S (finer to the right)")
        ax.set_title(name, fontsize=9)
        ax.axhline(0.95, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"fraction of {levers.attrs.get('n_images', '?')} test images")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
