"""``bioflexnet reproduce``: train every paper variant of a profile, then run the analyses.

Layout of the output root::

    ROOT/<variant>/seed<N>/      one run directory per variant and seed (train.log inside)
    ROOT/training_summary.nc     validation and test accuracy, parameters, training time per variant and seed
    ROOT/claims.nc, claims.md    the poster's claims: FLEX - VGG per mode, paired over seeds, 95 % intervals
    ROOT/ablation-<name>/seed<N> with --ablations: the ablation runs (flex-stbp and vgg-stbp variations)
    ROOT/ablations.nc, .md       their test accuracy against flex-stbp, paired over the same seeds

Training runs as parallel ``bioflexnet train`` processes (the longest first),
each with its share of the CPU threads. Finished runs are skipped and
interrupted ones resumed, so re-running the command continues where it stopped.
After training, every stage in :data:`STAGES` (Brian2 simulation, analyses, figures) runs
on the run directories; the Brian2 simulation stage runs on the first seed only (its
fidelity checks do not need more), the analyses on every seed.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from core.config import make_config
from core.results import provenance, write_dataset

# (flex, mode), most expensive first so parallel workers finish together
VARIANTS: tuple[tuple[bool, str], ...] = (
    (True, "stbp"), (True, "hybrid"), (True, "ann"), (False, "stbp"), (False, "hybrid"), (False, "ann"),
)
# post-training stages: module with ``run_stage(root, run_dirs, profile, data_dir, device)``
STAGES: tuple[str, ...] = ("sim.pipeline", "analysis.pipeline", "analysis.notebooks")
FIRST_SEED_ONLY = ("sim.pipeline",)
SUMMARY = "training_summary.nc"
CLAIMS = "claims.nc"
ABLATIONS = "ablations.nc"
# name -> (flex, overrides): each a single change against flex-stbp (or vgg-stbp), stbp mode
ABLATION_RUNS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "lambda0": (True, ("model.plasticity_rate=0",)),
    "conv_only": (True, ("model.mask_mode=conv_only",)),
    "no_pool_3x3": (True, ("model.flex_3x3=false",)),
    "flex_no_down_neurons": (True, ("model.down_neurons=false",)),
    "vgg_no_down_neurons": (False, ("model.down_neurons=false",)),
    "vgg_maxpool": (False, ("model.downsample=maxpool",)),
}


def variant_name(flex: bool, mode: str) -> str:
    return f"{'flex' if flex else 'vgg'}-{mode}"


def _train_command(profile: str, flex: bool, mode: str, seed: int, run_dir: Path, data_dir: Path | None,
                   device: str, overrides: Sequence[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "bioflexnet.cli", "train", "--profile", profile, "--mode", mode,
           "--flex" if flex else "--no-flex", "--seed", str(seed), "--out", str(run_dir), "--device", device]
    for item in overrides:
        cmd += ["--set", item]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    if resume:
        cmd.append("--resume")
    return cmd


def threads_per_job(jobs: int) -> int:
    """CPU threads each training process gets (OMP_NUM_THREADS): numbers depend on it, so it is recorded."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _epochs_done(run_dir: Path) -> int:
    from training.runs import RunDirError, load_checkpoint

    try:
        return int(load_checkpoint(run_dir)["epoch"])
    except RunDirError:
        return 0


def train_all(profile: str, root: Path, seeds: Sequence[int], jobs: int, data_dir: Path | None, device: str,
              overrides: Sequence[str], ablations: bool = False) -> tuple[dict[tuple[str, int], Path], dict[tuple[str, int], Path]]:
    """Train (or finish) every variant (and ablation) for every seed.

    Returns ``({(variant, seed): run_dir}, {(ablation, seed): run_dir})``.
    """
    threads = threads_per_job(jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    plan = [(variant_name(flex, mode), flex, mode, ()) for flex, mode in VARIANTS]
    if ablations:
        plan += [(f"ablation-{name}", flex, "stbp", extra) for name, (flex, extra) in ABLATION_RUNS.items()]
    tasks, run_dirs, ablation_dirs = [], {}, {}
    # the main variants of every seed first (the claims need them), then the ablations
    for name, flex, mode, extra, seed in sorted(((*p, s) for s in seeds for p in plan),
                                                 key=lambda item: item[0].startswith("ablation-")):
        cfg = make_config(profile, mode=mode, flex=flex, seed=seed, overrides=(*overrides, *extra))  # validate early
        run_dir = Path(root) / name / f"seed{seed}"
        if name.startswith("ablation-"):
            ablation_dirs[(name.removeprefix("ablation-"), seed)] = run_dir
        else:
            run_dirs[(cfg.variant, seed)] = run_dir
        done = _epochs_done(run_dir)
        if done >= cfg.train.epochs:
            print(f"{run_dir}: already trained ({done} epochs)", flush=True)
            continue
        tasks.append((run_dir, _train_command(profile, flex, mode, seed, run_dir, data_dir, device,
                                              (*overrides, *extra), resume=(run_dir / "checkpoint.pt").exists())))
    print(f"training {len(tasks)} runs, {jobs} at a time ({threads} thread(s) each); each run prints a line per "
          "epoch into its train.log and here when it ends", flush=True)

    def launch(task: tuple[Path, list[str]]) -> tuple[Path, int]:
        run_dir, cmd = task
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        tail = [line for line in (run_dir / "train.log").read_text().strip().splitlines() if "epoch" in line][-1:] or [""]
        print(f"{run_dir}: {'done' if rc == 0 else f'FAILED (exit {rc})'} | {tail[0]}", flush=True)
        return run_dir, rc

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failed = [d for d, rc in pool.map(launch, tasks) if rc != 0]
    if failed:
        raise RuntimeError(f"training failed for {[str(d) for d in failed]}; see train.log in each directory.")
    return run_dirs, ablation_dirs


def summarise(run_dirs: dict[tuple[str, int], Path], wall: float) -> xr.Dataset:
    """Final validation and test accuracy, parameter count and training time of every run."""
    from training.runs import read_metrics

    variants = list(dict.fromkeys(v for v, _ in run_dirs))
    seeds = sorted({s for _, s in run_dirs})
    acc, val, ttime = (np.full((len(variants), len(seeds)), np.nan) for _ in range(3))
    params = np.zeros(len(variants), dtype=np.int64)
    for (variant, seed), run_dir in run_dirs.items():
        i, j = variants.index(variant), seeds.index(seed)
        metrics = read_metrics(run_dir)
        acc[i, j] = float(metrics.test_accuracy)
        val[i, j] = float(metrics.val_accuracy[-1])
        ttime[i, j] = float(metrics.train_time.sum())
        params[i] = int(metrics.attrs.get("n_parameters", 0))
    return xr.Dataset(
        {"test_accuracy": (("variant", "seed"), acc, {"long_name": "top-1 accuracy, full CIFAR-10 test split, "
                                                                   "evaluated once after training", "units": "1"}),
         "val_accuracy": (("variant", "seed"), val, {"long_name": "top-1 accuracy on the held-out validation split "
                                                                  "after the last epoch", "units": "1"}),
         "n_parameters": ("variant", params, {"long_name": "trainable parameters", "units": "1"}),
         "train_time": (("variant", "seed"), ttime, {"long_name": "wall time of the training steps (sum over "
                                                                 "epochs, without validation)", "units": "s"})},
        coords={"variant": variants, "seed": seeds},
        attrs={**provenance(), "training_wall_time_s": wall,
               "note": "training_wall_time_s: wall time of the whole parallel training phase, validation included"},
    )


def ablation_summary(ablation_dirs: dict[tuple[str, int], Path], main: xr.Dataset) -> xr.Dataset:
    """Test accuracy of every ablation and its paired difference to flex-stbp over the same seeds."""
    from analysis.claims import paired_interval
    from training.runs import read_metrics

    names = list(dict.fromkeys(n for n, _ in ablation_dirs))
    seeds = sorted({s for _, s in ablation_dirs})
    acc = np.full((len(names), len(seeds)), np.nan)
    for (name, seed), run_dir in ablation_dirs.items():
        acc[names.index(name), seeds.index(seed)] = float(read_metrics(run_dir).test_accuracy)
    ref = main.test_accuracy.sel(variant="flex-stbp").reindex(seed=seeds).values
    rows = [paired_interval(acc[i], ref, "higher") for i in range(len(names))]
    return xr.Dataset(
        {"test_accuracy": (("ablation", "seed"), acc, {"long_name": "top-1 accuracy, full test split", "units": "1"}),
         "difference": ("ablation", [r.mean for r in rows], {"long_name": "mean paired difference ablation - flex-stbp"}),
         "ci_low": ("ablation", [r.low for r in rows], {"long_name": "95 % Student-t interval, lower end"}),
         "ci_high": ("ablation", [r.high for r in rows], {"long_name": "95 % Student-t interval, upper end"}),
         "change": ("ablation", [" ".join(ABLATION_RUNS[n][1]) + ("" if ABLATION_RUNS[n][0] else " (vgg-stbp twin)")
                                 for n in names], {"long_name": "the single change against flex-stbp / vgg-stbp"})},
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


def write_claims(root: Path) -> str:
    """Compute ``claims.nc`` / ``claims.md`` from the combined results under ``root``; returns the table."""
    from analysis.claims import claims_dataset, markdown_table

    ds = claims_dataset(root)
    write_dataset(ds.assign_attrs(provenance()), root / CLAIMS)
    table = markdown_table(ds)
    (root / "claims.md").write_text(table + "\n")
    return table


def reproduce(profile: str, root: Path, *, seeds: Sequence[int] = (0,), jobs: int | None = None,
              data_dir: Path | None = None, device: str = "cpu", overrides: Sequence[str] = (),
              ablations: bool = False, stages: Sequence[str] = STAGES) -> None:
    root = Path(root)
    n_runs = len(VARIANTS) * len(seeds) + (len(ABLATION_RUNS) * len(seeds) if ablations else 0)
    jobs = jobs or min(n_runs, os.cpu_count() or 1)
    t0 = time.perf_counter()
    run_dirs, ablation_dirs = train_all(profile, root, seeds, jobs, data_dir, device, overrides, ablations)
    wall = time.perf_counter() - t0
    summary = summarise(run_dirs, wall)
    summary.attrs.update({"train_jobs": jobs, "train_threads_per_job": threads_per_job(jobs),
                          "note_threads": "each training process ran with OMP_NUM_THREADS=train_threads_per_job; "
                                          "the same seed reproduces its numbers with that thread count"})
    write_dataset(summary, root / SUMMARY)
    print(f"\ntraining phase: {wall:.0f} s wall ({jobs} parallel jobs)")
    print(f"{'variant':<14}{'params':>9}" + "".join(f"  seed{s} val / test  train s" for s in summary.seed.values))
    for v in summary.variant.values:
        row = summary.sel(variant=v)
        print(f"{v:<14}{int(row.n_parameters):>9}" + "".join(
            f"  {va:6.4f} / {a:6.4f}  {t:7.0f}" for va, a, t in zip(row.val_accuracy.values, row.test_accuracy.values,
                                                                    row.train_time.values)))
    if ablation_dirs:
        abl = ablation_summary(ablation_dirs, summary)
        write_dataset(abl, root / ABLATIONS)
        table = ablation_markdown(abl, summary)
        (root / "ablations.md").write_text(table + "\n")
        print(f"\nablations (stbp; test accuracy; {root / 'ablations.md'}):\n{table}", flush=True)
    first = {k: v for k, v in run_dirs.items() if k[1] == seeds[0]}
    for name in stages:
        module = importlib.import_module(name)
        module.run_stage(root, first if name in FIRST_SEED_ONLY else run_dirs, profile=profile, data_dir=data_dir,
                         device=device)
        if name == "analysis.pipeline":
            print(f"\nclaims, FLEX - VGG paired over seeds {list(seeds)} ({root / 'claims.md'}):\n"
                  f"{write_claims(root)}", flush=True)
