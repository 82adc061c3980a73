"""The analysis stage of ``bioflexnet reproduce``: every analysis on every run, then combined files.

For each run directory it writes ``robustness.nc``, ``sparsity.nc`` and
``landscape.nc`` (settings: the profile's preset, :func:`analysis.settings.settings_for`);
a result whose settings and analysed checkpoint (SHA-256) are unchanged is
reused, so an interrupted stage continues where it stopped. Then
``ROOT/robustness.nc``, ``ROOT/sparsity.nc`` and ``ROOT/landscape.nc`` hold all
runs along ``variant`` and ``seed`` (:func:`analysis.combine.combine_runs`).
The transfer attack of a run uses the run of the same flex flag in ``ann``
mode with the same seed; without one, that run skips the transfer attack.
On the CPU, runs are analysed in parallel threads (see :func:`run_stage`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import torch
import xarray as xr

from analysis.combine import combine_runs
from analysis.report import landscape_lines, robustness_lines, sparsity_lines
from analysis.runner import LANDSCAPE, ROBUSTNESS, SPARSITY, attack_run, checkpoint_sha256, landscape_run, sparsity_run
from analysis.settings import AnalysisSettings, settings_for, settings_json
from core.results import reusable_dataset, write_dataset
from training.data import Split, load_split


def twin_variant(variant: str) -> str:
    """``flex-stbp`` -> ``flex-ann``."""
    return variant.split("-")[0] + "-ann"


def _reusable(path: Path, settings, run_dir: Path, extra: dict[str, str]) -> xr.Dataset | None:
    """The existing result at ``path`` if it was computed with the same settings from the same checkpoint."""
    expected = {"analysis_settings": settings_json(settings), "checkpoint_sha256": checkpoint_sha256(run_dir), **extra}
    return reusable_dataset(path, expected)


def _result(path: Path, settings, run_dir: Path, compute: Callable[[], xr.Dataset], log: list[str],
            extra: dict[str, str] | None = None) -> xr.Dataset:
    ds = _reusable(path, settings, run_dir, extra or {})
    if ds is None:
        ds = compute()
        write_dataset(ds, path)
    else:
        log.append(f"  {path.name}: up to date, reused")
    return ds


def analyse_run(variant: str, seed: int, run_dir: Path, twin: Path | None, settings: AnalysisSettings, *,
                test: Split, train: Split, device: str) -> tuple[dict[str, xr.Dataset], list[str]]:
    """All three analyses of one run (each written to the run directory); returns them and a log."""
    t0 = time.perf_counter()
    log = [f"\n{variant} seed {seed} ({run_dir})"]
    attack = settings.attack
    if twin is None and "transfer" in attack.attacks:
        log.append(f"  no {twin_variant(variant)} run with seed {seed}: the transfer attack is skipped")
        attack = dataclasses.replace(attack, attacks=tuple(a for a in attack.attacks if a != "transfer"))
    extra = {"transfer_source": f"{Path(twin).resolve()} (sha256 {checkpoint_sha256(twin)})"} if twin else {}
    out = {
        ROBUSTNESS: _result(run_dir / ROBUSTNESS, attack, run_dir, log=log, extra=extra, compute=lambda: attack_run(
            run_dir, attack, device=device, twin_dir=twin, test=test)),
        SPARSITY: _result(run_dir / SPARSITY, settings.sparsity, run_dir, log=log, compute=lambda: sparsity_run(
            run_dir, settings.sparsity, device=device, test=test)),
        LANDSCAPE: _result(run_dir / LANDSCAPE, settings.landscape, run_dir, log=log, compute=lambda: landscape_run(
            run_dir, settings.landscape, device=device, train=train)),
    }
    lines = robustness_lines(out[ROBUSTNESS]) + sparsity_lines(out[SPARSITY]) + landscape_lines(out[LANDSCAPE])
    log += ["  " + line for line in lines] + [f"  ({time.perf_counter() - t0:.0f} s)"]
    return out, log


def run_stage(root: str | Path, run_dirs: dict[tuple[str, int], Path], *, profile: str, data_dir=None,
              device: str = "cpu", settings: AnalysisSettings | None = None,
              jobs: int | None = None) -> dict[str, xr.Dataset]:
    """Analyse every run of ``run_dirs`` (``{(variant, seed): run_dir}``) and write the combined results under ``root``.

    On the CPU the runs are analysed ``jobs`` at a time (default: one per core) in threads, each torch op
    single-threaded: the models are small, and OpenMP teams over two cores that other processes also use
    stall badly (a quick flex-stbp attack sweep took 194 s with 2 threads vs 25 s with 1 on a busy
    2-core machine). On a GPU the runs go one after the other.
    """
    root = Path(root)
    settings = settings or settings_for(profile)
    t0 = time.perf_counter()
    test = load_split("test", data_dir, device)
    train = load_split("train", data_dir, device)
    cpu = torch.device(device).type == "cpu"
    jobs = jobs or (min(len(run_dirs), os.cpu_count() or 1) if cpu else 1)
    threads = torch.get_num_threads()
    if cpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(analyse_run, variant, seed, Path(run_dir), run_dirs.get((twin_variant(variant), seed)),
                                   settings, test=test, train=train, device=device)
                       for (variant, seed), run_dir in run_dirs.items()]
            for future in as_completed(futures):
                print("\n".join(future.result()[1]), flush=True)
            done = [f.result()[0] for f in futures]  # in the order of run_dirs
    finally:
        torch.set_num_threads(threads)
    combined = {name: combine_runs([d[name] for d in done]) for name in (ROBUSTNESS, SPARSITY, LANDSCAPE)}
    for name, ds in combined.items():
        write_dataset(ds, root / name)
    print(summary(combined[ROBUSTNESS], combined[SPARSITY], combined[LANDSCAPE]))
    print(f"analysis stage: {time.perf_counter() - t0:.0f} s wall ({jobs} parallel jobs); combined results in "
          f"{root}/{{{ROBUSTNESS},{SPARSITY},{LANDSCAPE}}}", flush=True)
    return combined


def summary(rob: xr.Dataset, spa: xr.Dataset, land: xr.Dataset) -> str:
    """One row per variant and seed: AUCs, worst case, sanity verdict, firing rate, energy, Hessian."""
    attacks = [a for a in ("fgsm", "pgd_last", "spgd") if a in rob.attack.values]  # the paper protocol
    head = (f"\n{'variant':<12} {'seed':>4} {'clean':>6} " + " ".join(f"{'AUC ' + a:>12}" for a in attacks) +
            f" {'worst@8/255':>11} {'rate':>7} {'energy uJ':>9} {'ANN uJ':>7} {'Hessian':>8}  sanity")
    rows = [head]
    for v in rob.variant.values:
        for s in rob.seed.values:
            r, p, lnd = rob.sel(variant=v, seed=s), spa.sel(variant=v, seed=s), land.sel(variant=v, seed=s)
            if bool(r.clean_accuracy.isnull()):
                continue
            worst = "-"
            if "worst" in rob.attack.values:  # 8/255 is a point of every grid (AttackSettings checks it)
                worst = f"{float(r.worst_accuracy_8_255):.3f}"
            rows.append(f"{v:<12} {int(s):>4} {float(r.clean_accuracy):6.3f} " +
                        " ".join(f"{float(r.auc.sel(attack=a)):12.4f}" for a in attacks) +
                        f" {worst:>11} {float(p.network_firing_rate):7.4f} {float(p.total_energy) / 1e6:9.3f} "
                        f"{float(p.ann_energy) / 1e6:7.3f} {float(lnd.hessian_top_eigenvalue):8.3g}  "
                        f"{r.sanity_verdict.item()}")
    return "\n".join(rows)
