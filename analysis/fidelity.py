"""Fidelity levers (issue 19): how a trained network's decisions hold as the time step shrinks.

For a trained run, the PyTorch tick model (:func:`training.forward.run_network`) runs the first
``n_images`` CIFAR-10 test images at ``S`` ticks per step. At ``S = K``, the ticks the run was
trained at, this *is* the trained network; at any ``S`` it is the dynamical system that
``bioflexnet sim RUN --mode biophysical --ticks S`` (delta synapses) simulates in Brian2, tick
for tick (``tests/test_ticks.py``), so it measures Brian2's convergence in ``dt = step / S``
without Brian2's cost. Per configuration and ``S`` (by default ``K, 2K, 4K, 16`` and the reference
``64``):

* ``class_agreement``: fraction of images classified as by the trained network (``S = K``);
* ``reference_agreement``: the same against ``S = 64``, the continuous-time limit's stand-in;
* ``class_agreement_confident`` / ``class_agreement_uncertain``: class agreement on the images whose
  trained top-two logit margin is at least the median / below it;
* ``accuracy`` on the same images;
* ``spike_agreement`` per layer: fraction of (image, step, neuron) whose spike count in the step
  equals the trained network's; ``firing_rate`` per layer (spikes per neuron and step).

``python -m analysis.fidelity OUT.nc LABEL=RUN_DIR [...]`` writes the Dataset and prints a markdown
table; ``--include OLD.nc`` merges configurations measured earlier.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from core.errors import UserError
from training.data import Split, load_split, to_float
from training.models import SpikingVGG

DEFAULT_IMAGES = 200
REFERENCE_TICKS = 64
# T * S * images per forward chunk: bounds memory (the tick model keeps [T*S, B, C, H, W] tensors)
TICK_BATCH = 4096


class FidelityError(UserError, ValueError):
    """A fidelity measurement was asked for something it cannot measure."""


def resolutions(trained_ticks: int, reference: int = REFERENCE_TICKS) -> list[int]:
    """Ticks per step to measure a model trained at ``trained_ticks``: ``K, 2K, 4K, 16`` and ``reference``."""
    k = trained_ticks
    return sorted({k, 2 * k, 4 * k, 16, reference})


def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of every row of ``[N, classes]``."""
    top = np.sort(logits, axis=1)
    return top[:, -1] - top[:, -2]


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def tick_pass(model: SpikingVGG, images: torch.Tensor, ticks: int,
              tick_batch: int = TICK_BATCH) -> Iterator[tuple[slice, np.ndarray, dict[str, torch.Tensor]]]:
    """Run ``images`` (float, ``[N, 3, 32, 32]`` in [0, 1]) at ``ticks`` ticks per step, in chunks.

    Yields ``(rows, logits [n, classes], {layer: spike counts per step [T, n, ...] as uint8})``.
    """
    model.eval()
    size = max(1, tick_batch // (model.cfg.steps * ticks))
    for rows in _chunks(len(images), size):
        out = model.run(images[rows], ticks=ticks)
        yield rows, out.logits.double().numpy(), {t.name: t.output.round().to(torch.uint8) for t in out.layers}


def _spike_stats(model: SpikingVGG, images: torch.Tensor, ticks: int, trained: dict[str, torch.Tensor] | None,
                 tick_batch: int) -> tuple[np.ndarray, dict[str, torch.Tensor], dict[str, float], dict[str, float]]:
    """Logits, spike counts per step, and per layer the fraction of counts equal to ``trained`` and the rate.

    With ``trained=None`` the pass is the trained network's own: its spike counts are returned (and agree
    with themselves); otherwise the returned spike dict is empty (nothing kept).
    """
    logits = np.zeros((len(images), model.cfg.num_classes))
    kept: dict[str, list[torch.Tensor]] = {}
    equal: dict[str, int] = {}
    total: dict[str, int] = {}
    spikes: dict[str, float] = {}
    for rows, lg, layers in tick_pass(model, images, ticks, tick_batch):
        logits[rows] = lg
        for name, x in layers.items():
            if trained is None:
                kept.setdefault(name, []).append(x)
                same = x.numel()
            else:
                same = int((x == trained[name][:, rows]).sum())
            equal[name] = equal.get(name, 0) + same
            total[name] = total.get(name, 0) + x.numel()
            spikes[name] = spikes.get(name, 0.0) + float(x.sum(dtype=torch.float64))
    agreement = {k: equal[k] / total[k] for k in total}
    rate = {k: spikes[k] / total[k] for k in total}
    return logits, {k: torch.cat(v, dim=1) for k, v in kept.items()}, agreement, rate


def measure_model(model: SpikingVGG, split: Split, ticks: Sequence[int], trained_ticks: int,
                  reference: int = REFERENCE_TICKS, tick_batch: int = TICK_BATCH) -> xr.Dataset:
    """The fidelity table of one model over ``ticks`` (which must hold ``trained_ticks`` and ``reference``).

    Returns a Dataset over ``(substeps[, layer])``; see the module docstring.
    """
    ticks = sorted(set(ticks))
    for need, what in ((trained_ticks, "the trained K"), (reference, "the reference")):
        if need not in ticks:
            raise FidelityError(f"ticks {ticks} lack {what} ({need}); every table is measured against it.")
    images, labels = to_float(split.images), split.labels.numpy()
    logits, agreement, rate, seconds = {}, {}, {}, {}
    trained = None
    for s in [trained_ticks] + [t for t in ticks if t != trained_ticks]:  # the trained network first
        t0 = time.perf_counter()
        logits[s], kept, agreement[s], rate[s] = _spike_stats(model, images, s, trained, tick_batch)
        trained = kept if trained is None else trained
        seconds[s] = time.perf_counter() - t0
    layers = model.names_with_neurons()
    cls = {s: lg.argmax(1) for s, lg in logits.items()}
    confident = margins(logits[trained_ticks]) >= np.median(margins(logits[trained_ticks]))

    def agree_on(s, rows):
        return np.mean(cls[s][rows] == cls[trained_ticks][rows]) if rows.any() else np.nan

    def per_s(f):
        return np.array([f(s) for s in ticks], dtype=np.float64)

    def per_layer(d):
        return np.array([[d[s].get(la, np.nan) for la in layers] for s in ticks], dtype=np.float64)

    one = ("substeps",)
    two = ("substeps", "layer")
    return xr.Dataset(
        {
            "class_agreement": (one, per_s(lambda s: np.mean(cls[s] == cls[trained_ticks])), {
                "long_name": "fraction of images classified as by the trained network (S = trained K)", "units": "1"}),
            "reference_agreement": (one, per_s(lambda s: np.mean(cls[s] == cls[reference])), {
                "long_name": f"fraction of images classified as at S = {reference} ticks per step", "units": "1"}),
            "class_agreement_confident": (one, per_s(lambda s: agree_on(s, confident)), {
                "long_name": "class agreement on the images whose trained top-two logit margin is >= the median",
                "units": "1"}),
            "class_agreement_uncertain": (one, per_s(lambda s: agree_on(s, ~confident)), {
                "long_name": "class agreement on the images whose trained top-two logit margin is below the median",
                "units": "1"}),
            "accuracy": (one, per_s(lambda s: np.mean(cls[s] == labels)), {
                "long_name": "top-1 accuracy on the same images", "units": "1"}),
            "seconds": (one, per_s(lambda s: seconds[s]), {
                "long_name": "wall time of the pass at S ticks per step", "units": "s"}),
            "spike_agreement": (two, per_layer(agreement), {
                "long_name": "fraction of (image, step, neuron) whose spike count in the step equals the trained "
                             "network's", "units": "1"}),
            "firing_rate": (two, per_layer(rate), {"long_name": "mean spikes per neuron and step", "units": "1/step"}),
        },
        coords={"substeps": ("substeps", list(ticks), {"long_name": "ticks per step S (dt = step / S)", "units": "1"}),
                "layer": ("layer", layers, {"long_name": "neuron layer"})},
        attrs={"trained_ticks": trained_ticks, "reference_ticks": reference, "n_images": len(labels)},
    )


def run_summary(run_dir: str | Path) -> dict[str, float]:
    """What a run's ``metrics.nc`` says about its training: test accuracy and training wall time."""
    from training.runs import read_metrics

    metrics = read_metrics(run_dir)
    return {"test_accuracy": float(metrics.test_accuracy), "train_seconds": float(metrics.train_time.sum())}


def measure_run(run_dir: str | Path, split: Split, ticks: Sequence[int] | None = None,
                reference: int = REFERENCE_TICKS, tick_batch: int = TICK_BATCH) -> xr.Dataset:
    """:func:`measure_model` of a saved run, with its config (``K``, ``T``, width, beta) and training summary."""
    from training.runs import load_model

    model, cfg = load_model(run_dir)
    k = cfg.model.ticks
    ds = measure_model(model, split, ticks or resolutions(k, reference), k, reference, tick_batch)
    summary = run_summary(run_dir)
    scalars = {
        "trained_ticks": (k, "ticks per step K the network was trained at", "1"),
        "time_steps": (cfg.model.time_steps, "time steps T per presentation", "1"),
        "width": (cfg.model.width, "channel width multiplier", "1"),
        "beta": (cfg.model.beta, "membrane decay per step", "1"),
        "seed": (cfg.seed, "training seed", "1"),
        "test_accuracy": (summary["test_accuracy"], "top-1 accuracy on the full test split at the trained K "
                                                     "(metrics.nc)", "1"),
        "train_seconds": (summary["train_seconds"], "training wall time of this run's epochs (metrics.nc; a "
                                                    "fine-tune's, not its base run's)", "s"),
    }
    for name, (value, long_name, units) in scalars.items():
        ds[name] = xr.DataArray(value, attrs={"long_name": long_name, "units": units})
    ds.attrs.update({"variant": cfg.variant, "run_dir": str(run_dir)})
    return ds


def fidelity_dataset(runs: dict[str, str | Path], n_images: int = DEFAULT_IMAGES, data_dir: str | Path | None = None,
                     reference: int = REFERENCE_TICKS, tick_batch: int = TICK_BATCH) -> xr.Dataset:
    """``{label: run dir}`` -> one Dataset over ``(config, substeps[, layer])``, the first ``n_images`` test images."""
    test = load_split("test", data_dir)
    if not 1 <= n_images <= len(test):
        raise FidelityError(f"--images={n_images}: choose between 1 and {len(test)} test images.")
    split = Split(test.images[:n_images], test.labels[:n_images])
    parts = []
    for label, run_dir in runs.items():
        ds = measure_run(run_dir, split, reference=reference, tick_batch=tick_batch)
        parts.append(ds.expand_dims(config=[label]).assign_coords(run_dir=("config", [str(run_dir)]),
                                                                  variant=("config", [ds.attrs["variant"]])))
    return combine(parts)


def combine(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """Concatenate per-configuration Datasets over ``config`` (NaN where a configuration lacks an ``S``)."""
    from core.results import provenance

    if not parts:
        raise FidelityError("no configurations to combine; give LABEL=RUN_DIR pairs or --include files.")
    n = {int(p.attrs["n_images"]) for p in parts}
    if len(n) > 1:
        raise FidelityError(f"the configurations were measured on different numbers of images {sorted(n)}; "
                            "measure them on the same images.")
    ds = xr.concat(list(parts), dim="config", join="outer", coords="minimal", combine_attrs="override")
    ds.attrs = {**provenance(), "n_images": n.pop(), "reference_ticks": int(parts[0].attrs["reference_ticks"]),
                "images": "the first n_images CIFAR-10 test images",
                "model": "PyTorch tick model (training.forward), the dynamics of bioflexnet sim --mode biophysical "
                         "--ticks S with delta synapses"}
    return ds


def markdown_table(ds: xr.Dataset) -> str:
    """One row per configuration and ``S``: agreement, accuracy and the layers' mean spike agreement."""
    head = ("| config | T | K | S | agree (trained) | agree (S=%d) | agree, confident half | agree, uncertain half "
            "| accuracy | spike agreement (mean over layers) | test acc. (full split) |" % ds.attrs["reference_ticks"])
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in ds.config.values:
        row = ds.sel(config=c)
        for s in ds.substeps.values:
            r = row.sel(substeps=s)
            if np.isnan(float(r.class_agreement)):
                continue
            lines.append("| " + " | ".join([
                str(c), str(int(row.time_steps)), str(int(row.trained_ticks)), str(int(s)),
                f"{float(r.class_agreement):.3f}", f"{float(r.reference_agreement):.3f}",
                f"{float(r.class_agreement_confident):.3f}", f"{float(r.class_agreement_uncertain):.3f}",
                f"{float(r.accuracy):.3f}", f"{float(r.spike_agreement.mean()):.4f}",
                f"{float(row.test_accuracy):.4f}"]) + " |")
    return "\n".join(lines)


def parse_runs(pairs: Sequence[str]) -> dict[str, Path]:
    """``LABEL=RUN_DIR`` strings -> ``{label: path}``; a malformed or repeated label is refused."""
    runs: dict[str, Path] = {}
    for pair in pairs:
        label, sep, folder = pair.partition("=")
        if not sep or not label or not folder:
            raise FidelityError(f"{pair!r} is not LABEL=RUN_DIR (e.g. vgg-T8=/runs/vgg-T8-k4).")
        if label in runs:
            raise FidelityError(f"label {label!r} is given twice; every configuration needs its own label.")
        runs[label] = Path(folder)
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="netCDF file to write (the table is also printed as markdown)")
    parser.add_argument("runs", nargs="*", metavar="LABEL=RUN_DIR", help="trained run directories to measure")
    parser.add_argument("--include", type=Path, action="append", default=[], metavar="FILE.nc",
                        help="merge the configurations of an earlier output (repeatable)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="first N test images (default 200)")
    parser.add_argument("--reference", type=int, default=REFERENCE_TICKS,
                        help="ticks per step of the continuous-time stand-in (default 64)")
    parser.add_argument("--tick-batch", type=int, default=TICK_BATCH,
                        help="T * S * images per forward chunk, bounds memory (default 4096)")
    parser.add_argument("--data-dir", type=Path, default=None, help="directory holding cifar-10-batches-py/")
    args = parser.parse_args(argv)
    from core.results import read_dataset, write_dataset

    runs = parse_runs(args.runs)
    parts = []
    for path in args.include:
        old = read_dataset(path)
        parts.extend(old.sel(config=[c]).assign_attrs(old.attrs) for c in old.config.values if c not in runs)
    if runs:
        parts.append(fidelity_dataset(runs, args.images, args.data_dir, args.reference, args.tick_batch))
    ds = combine([p.sel(config=[c]).assign_attrs(p.attrs) for p in parts for c in p.config.values])
    write_dataset(ds, args.out)
    print(markdown_table(ds))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
