"""``bioflexnet combine KIND ROOT``: the reproduction's tables, each from the per-run files it names.

The last rules of the Snakefile; each kind reads only the run files it is given and writes its
tables atomically under ``ROOT`` (torch-free):

* ``training``: ``training_summary.nc`` (validation and test accuracy, parameters, training time on
  variant x seed) from every run's ``metrics.nc``;
* ``analyses``: ``robustness.nc``, ``sparsity.nc``, ``landscape.nc`` stacked on variant x seed;
* ``sim``: ``sim_summary.nc`` and ``convergence.nc`` on variant x seed from the ``sim.nc`` files;
* ``claims``: ``claims.nc`` / ``claims.md``, FLEX - VGG paired over seeds (:mod:`analysis.claims`);
* ``ablations``: ``ablations.nc`` / ``ablations.md``, each ablation against flex-stbp over the same seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from core.combine import combine_files
from core.results import atomic_path, provenance, read_dataset, write_dataset
from core.variants import ABLATIONS, RunLayout

KINDS = ("training", "analyses", "sim", "claims", "ablations")


def training_summary(root: Path, runs: Sequence[tuple[str, int]]) -> xr.Dataset:
    """Final validation and test accuracy, parameter count and training time of every run."""
    variants = list(dict.fromkeys(v for v, _ in runs))
    seeds = sorted({s for _, s in runs})
    acc, val, ttime = (np.full((len(variants), len(seeds)), np.nan) for _ in range(3))
    params = np.zeros(len(variants), dtype=np.int64)
    threads = set()
    for variant, seed in runs:
        i, j = variants.index(variant), seeds.index(seed)
        metrics = read_dataset(RunLayout(root).run_dir(variant, seed) / RunLayout.METRICS)
        acc[i, j] = float(metrics.test_accuracy)
        val[i, j] = float(metrics.val_accuracy[-1])
        ttime[i, j] = float(metrics.train_time.sum())
        params[i] = int(metrics.attrs.get("n_parameters", 0))
        threads.add(str(metrics.attrs.get("torch_num_threads", "?")))
    return xr.Dataset(
        {"test_accuracy": (("variant", "seed"), acc, {"long_name": "top-1 accuracy, full CIFAR-10 test split, "
                                                                   "evaluated once after training", "units": "1"}),
         "val_accuracy": (("variant", "seed"), val, {"long_name": "top-1 accuracy on the held-out validation split "
                                                                  "after the last epoch", "units": "1"}),
         "n_parameters": ("variant", params, {"long_name": "trainable parameters", "units": "1"}),
         "train_time": (("variant", "seed"), ttime, {"long_name": "wall time of the training steps (sum over "
                                                                 "epochs, without validation)", "units": "s"})},
        coords={"variant": variants, "seed": seeds},
        attrs={**provenance(), "train_threads_per_job": ",".join(sorted(threads)),
               "note_threads": "each training process ran with train_threads_per_job torch threads; the same "
                               "seed reproduces its numbers with that thread count"})


def training_lines(summary: xr.Dataset) -> list[str]:
    lines = [f"{'variant':<14}{'params':>9}" + "".join(f"  seed{s} val / test  train s" for s in summary.seed.values)]
    for v in summary.variant.values:
        row = summary.sel(variant=v)
        lines.append(f"{v:<14}{int(row.n_parameters):>9}" + "".join(
            f"  {va:6.4f} / {a:6.4f}  {t:7.0f}" for va, a, t in zip(row.val_accuracy.values, row.test_accuracy.values,
                                                                    row.train_time.values)))
    return lines


def ablation_summary(root: Path, runs: Sequence[tuple[str, int]], main: xr.Dataset) -> xr.Dataset:
    """Test accuracy of every ablation and its paired difference to flex-stbp over the same seeds."""
    from analysis.claims import paired_interval

    names = list(dict.fromkeys(n.removeprefix("ablation-") for n, _ in runs))
    seeds = sorted({s for _, s in runs})
    acc = np.full((len(names), len(seeds)), np.nan)
    for name, seed in runs:
        metrics = read_dataset(Path(root) / RunLayout.run_name(name, seed) / RunLayout.METRICS)
        acc[names.index(name.removeprefix("ablation-")), seeds.index(seed)] = float(metrics.test_accuracy)
    ref = main.test_accuracy.sel(variant="flex-stbp").reindex(seed=seeds).values
    rows = [paired_interval(acc[i], ref, "higher") for i in range(len(names))]
    return xr.Dataset(
        {"test_accuracy": (("ablation", "seed"), acc, {"long_name": "top-1 accuracy, full test split", "units": "1"}),
         "difference": ("ablation", [r.mean for r in rows], {"long_name": "mean paired difference ablation - flex-stbp"}),
         "ci_low": ("ablation", [r.low for r in rows], {"long_name": "95 % Student-t interval, lower end"}),
         "ci_high": ("ablation", [r.high for r in rows], {"long_name": "95 % Student-t interval, upper end"}),
         "change": ("ablation", [ABLATIONS[n].change for n in names],
                    {"long_name": "the single change against flex-stbp / vgg-stbp"})},
        coords={"ablation": names, "seed": seeds}, attrs=provenance(),
    )


def ablation_markdown(ds: xr.Dataset, main: xr.Dataset) -> str:
    lines = ["| run | change | seeds | test acc. (mean) | − flex-stbp [95 % CI] |", "|---|---|---|---|---|"]
    for ref in ("flex-stbp", "vgg-stbp"):
        if ref in main.variant.values:
            a = main.test_accuracy.sel(variant=ref).reindex(seed=ds.seed.values)
            lines.append(f"| {ref} | (main variant) | {int(a.notnull().sum())} | {float(a.mean()):.3f} | |")
    for name in ds.ablation.values:
        r = ds.sel(ablation=name)
        ci = "" if np.isnan(r.ci_low.item()) else f" [{r.ci_low.item():+.3f}, {r.ci_high.item():+.3f}]"
        lines.append(f"| {name} | `{r.change.item()}` | {int(r.test_accuracy.notnull().sum())} | "
                     f"{float(r.test_accuracy.mean()):.3f} | {r.difference.item():+.3f}{ci} |")
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def combine(kind: str, root: Path, runs: Sequence[tuple[str, int]] = (), files: Sequence[Path] = ()) -> None:
    """Write the tables of ``kind`` under ``root`` (see the module docstring) and print them."""
    root = Path(root)
    if kind == "training":
        summary = training_summary(root, runs)
        write_dataset(summary, root / RunLayout.TRAINING_SUMMARY)
        print("\n".join(["training (validation after the last epoch / test once at the end):",
                         *training_lines(summary)]), flush=True)
    elif kind == "analyses":
        from analysis.report import results_table

        combined = {}
        for name in RunLayout.ANALYSES:
            combined[name] = combine_files([RunLayout(root).run_dir(v, s) / name for v, s in runs])
            write_dataset(combined[name], root / name)
        print(results_table(*combined.values()), flush=True)
    elif kind == "sim":
        from sim.summary import lines, summarise

        grouped: dict[tuple[str, int], dict[str, Path]] = {}
        for path in files:  # RUN/sim/JOB/sim.nc
            rel = Path(path).resolve().relative_to(root.resolve())
            grouped.setdefault(RunLayout.parse_run_name("/".join(rel.parts[:2])), {})[rel.parts[3]] = Path(path)
        summary, convergence = summarise(grouped)
        write_dataset(summary, root / RunLayout.SIM_SUMMARY)
        if convergence is not None:
            write_dataset(convergence, root / RunLayout.CONVERGENCE)
        print("\n".join(["Brian2 fidelity (class agreement with PyTorch):", *lines(summary)]), flush=True)
    elif kind == "claims":
        from analysis.claims import claims_dataset, markdown_table

        ds = claims_dataset(root)
        write_dataset(ds.assign_attrs(provenance()), root / RunLayout.CLAIMS)
        table = markdown_table(ds)
        _write_text(root / "claims.md", table)
        print(f"claims, FLEX - VGG paired over seeds ({root / 'claims.md'}):\n{table}", flush=True)
    elif kind == "ablations":
        main = read_dataset(root / RunLayout.TRAINING_SUMMARY)
        ds = ablation_summary(root, runs, main)
        write_dataset(ds, root / RunLayout.ABLATIONS)
        table = ablation_markdown(ds, main)
        _write_text(root / "ablations.md", table)
        print(f"ablations (stbp; test accuracy; {root / 'ablations.md'}):\n{table}", flush=True)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("combine", help="combine per-run results into the reproduction's tables (a pipeline step)",
                       description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("root", type=Path, help="the reproduction root (e.g. runs/quick)")
    p.add_argument("--runs", nargs="*", default=[], metavar="VARIANT/seedN",
                   help="run directories relative to ROOT (training, analyses, ablations)")
    p.add_argument("--files", nargs="*", type=Path, default=[], metavar="SIM_NC", help="sim.nc files (sim)")
    p.set_defaults(func=cmd_combine)


def cmd_combine(args: argparse.Namespace) -> None:
    combine(args.kind, args.root, [RunLayout.parse_run_name(r) for r in args.runs], args.files)
