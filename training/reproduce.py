"""``bioflexnet reproduce``: train every paper variant of a profile, then run the analyses.

Layout of the output root::

    ROOT/<variant>/seed<N>/      one run directory per variant and seed (train.log inside)
    ROOT/training_summary.nc     test accuracy and training wall time per variant and seed

Training runs as parallel ``bioflexnet train`` processes (the longest first),
each with its share of the CPU threads. Finished runs are skipped and
interrupted ones resumed, so re-running the command continues where it stopped.
After training, every stage in :data:`STAGES` (Brian2 simulation, analyses, figures) runs
on the run directories.
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

from training.config import make_config
from training.results import provenance, write_dataset

# (flex, mode), most expensive first so parallel workers finish together
VARIANTS: tuple[tuple[bool, str], ...] = (
    (True, "stbp"), (True, "hybrid"), (True, "ann"), (False, "stbp"), (False, "hybrid"), (False, "ann"),
)
# post-training stages: module with ``run_stage(root, run_dirs, profile, data_dir, device)``
STAGES: tuple[str, ...] = ("sim.pipeline", "analysis.pipeline", "analysis.notebooks")
SUMMARY = "training_summary.nc"


def variant_name(flex: bool, mode: str) -> str:
    return f"{'flex' if flex else 'vgg'}-{mode}"


def run_dir_for(root: Path, flex: bool, mode: str, seed: int) -> Path:
    return Path(root) / variant_name(flex, mode) / f"seed{seed}"


def _train_command(profile: str, flex: bool, mode: str, seed: int, run_dir: Path, data_dir: Path | None,
                   device: str, overrides: Sequence[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "training.cli", "train", "--profile", profile, "--mode", mode,
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
              overrides: Sequence[str]) -> dict[tuple[str, int], Path]:
    """Train (or finish) every variant for every seed; returns ``{(variant, seed): run_dir}``."""
    threads = threads_per_job(jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    tasks, run_dirs = [], {}
    for seed in seeds:
        for flex, mode in VARIANTS:
            cfg = make_config(profile, mode=mode, flex=flex, seed=seed, overrides=overrides)  # validate early
            run_dir = run_dir_for(root, flex, mode, seed)
            run_dirs[(cfg.variant, seed)] = run_dir
            done = _epochs_done(run_dir)
            if done >= cfg.train.epochs:
                print(f"{run_dir}: already trained ({done} epochs)", flush=True)
                continue
            tasks.append((run_dir, _train_command(profile, flex, mode, seed, run_dir, data_dir, device, overrides,
                                                  resume=(run_dir / "checkpoint.pt").exists())))

    def launch(task: tuple[Path, list[str]]) -> tuple[Path, int]:
        run_dir, cmd = task
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        tail = (run_dir / "train.log").read_text().strip().splitlines()[-1:] or [""]
        print(f"{run_dir}: {'done' if rc == 0 else f'FAILED (exit {rc})'} | {tail[0]}", flush=True)
        return run_dir, rc

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failed = [d for d, rc in pool.map(launch, tasks) if rc != 0]
    if failed:
        raise RuntimeError(f"training failed for {[str(d) for d in failed]}; see train.log in each directory.")
    return run_dirs


def summarise(run_dirs: dict[tuple[str, int], Path], wall: float) -> xr.Dataset:
    """Final test accuracy (the last epoch's full-test-split validation) and training time of every run."""
    from training.runs import read_metrics

    variants = list(dict.fromkeys(v for v, _ in run_dirs))
    seeds = sorted({s for _, s in run_dirs})
    acc = np.full((len(variants), len(seeds)), np.nan)
    ttime = np.full_like(acc, np.nan)
    for (variant, seed), run_dir in run_dirs.items():
        i, j = variants.index(variant), seeds.index(seed)
        metrics = read_metrics(run_dir)
        acc[i, j] = float(metrics.val_accuracy[-1])
        ttime[i, j] = float(metrics.train_time.sum())
    return xr.Dataset(
        {"test_accuracy": (("variant", "seed"), acc, {"long_name": "top-1 accuracy, full CIFAR-10 test split",
                                                     "units": "1"}),
         "train_time": (("variant", "seed"), ttime, {"long_name": "wall time of the training steps (sum over "
                                                                 "epochs, without validation)", "units": "s"})},
        coords={"variant": variants, "seed": seeds},
        attrs={**provenance(), "training_wall_time_s": wall,
               "note": "training_wall_time_s: wall time of the whole parallel training phase, validation included"},
    )


def reproduce(profile: str, root: Path, *, seeds: Sequence[int] = (0,), jobs: int | None = None,
              data_dir: Path | None = None, device: str = "cpu", overrides: Sequence[str] = ()) -> None:
    root = Path(root)
    jobs = jobs or min(len(VARIANTS) * len(seeds), os.cpu_count() or 1)
    t0 = time.perf_counter()
    run_dirs = train_all(profile, root, seeds, jobs, data_dir, device, overrides)
    wall = time.perf_counter() - t0
    summary = summarise(run_dirs, wall)
    summary.attrs.update({"train_jobs": jobs, "train_threads_per_job": threads_per_job(jobs),
                          "note_threads": "each training process ran with OMP_NUM_THREADS=train_threads_per_job; "
                                          "the same seed reproduces its numbers with that thread count"})
    write_dataset(summary, root / SUMMARY)
    print(f"\ntraining phase: {wall:.0f} s wall ({jobs} parallel jobs)")
    print(f"{'variant':<14}" + "".join(f"  seed{s} acc  train s" for s in summary.seed.values))
    for v in summary.variant.values:
        row = summary.sel(variant=v)
        print(f"{v:<14}" + "".join(f"  {a:9.4f}  {t:7.0f}" for a, t in zip(row.test_accuracy.values,
                                                                          row.train_time.values)))
    for name in STAGES:
        module = importlib.import_module(name)
        module.run_stage(root, run_dirs, profile=profile, data_dir=data_dir, device=device)
