"""The analysis stage of ``bioflexnet reproduce``: every analysis on every run, then combined files.

For each run directory it writes ``robustness.nc``, ``sparsity.nc`` and
``landscape.nc`` (settings: the profile's preset, :func:`analysis.settings.settings_for`);
a result whose settings and analysed checkpoint (SHA-256) are unchanged is
reused, so an interrupted stage continues where it stopped. Then
``ROOT/robustness.nc``, ``ROOT/sparsity.nc`` and ``ROOT/landscape.nc`` hold all
runs along ``variant`` and ``seed`` (:func:`analysis.combine.combine_runs`).
The transfer attack of a run uses the run of the same flex flag in ``ann``
mode with the same seed; without one, that run skips the transfer attack.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from analysis.combine import combine_runs
from analysis.report import landscape_lines, robustness_lines, sparsity_lines
from analysis.runner import (LANDSCAPE, ROBUSTNESS, SPARSITY, attack_run, checkpoint_sha256, landscape_run,
                             sparsity_run)
from analysis.settings import AnalysisSettings, settings_for, settings_json
from training.data import load_split
from training.results import read_dataset, write_dataset


def twin_variant(variant: str) -> str:
    """``flex-stbp`` -> ``flex-ann``."""
    return variant.split("-")[0] + "-ann"


def _reusable(path: Path, settings, run_dir: Path, extra: dict[str, str]) -> xr.Dataset | None:
    """The existing result at ``path`` if it was computed with the same settings from the same checkpoint."""
    if not path.is_file():
        return None
    try:
        ds = read_dataset(path)
    except (OSError, ValueError):
        return None
    expected = {"analysis_settings": settings_json(settings), "checkpoint_sha256": checkpoint_sha256(run_dir), **extra}
    return ds if all(ds.attrs.get(k) == v for k, v in expected.items()) else None


def _result(path: Path, settings, run_dir: Path, compute: Callable[[], xr.Dataset],
            extra: dict[str, str] | None = None) -> xr.Dataset:
    ds = _reusable(path, settings, run_dir, extra or {})
    if ds is None:
        ds = compute()
        write_dataset(ds, path)
    else:
        print(f"  {path.name}: up to date, reused", flush=True)
    return ds


def run_stage(root: str | Path, run_dirs: dict[tuple[str, int], Path], *, profile: str, data_dir=None,
              device: str = "cpu", settings: AnalysisSettings | None = None) -> dict[str, xr.Dataset]:
    """Analyse every run of ``run_dirs`` (``{(variant, seed): run_dir}``) and write the combined results under ``root``."""
    root = Path(root)
    settings = settings or settings_for(profile)
    t0 = time.perf_counter()
    test = load_split("test", data_dir, device)
    train = load_split("train", data_dir, device)
    results: dict[str, list[xr.Dataset]] = {ROBUSTNESS: [], SPARSITY: [], LANDSCAPE: []}
    for (variant, seed), run_dir in run_dirs.items():
        run_dir = Path(run_dir)
        t1 = time.perf_counter()
        print(f"\nanalysing {variant} seed {seed} ({run_dir})", flush=True)
        attack = settings.attack
        twin = run_dirs.get((twin_variant(variant), seed))
        if twin is None and "transfer" in attack.attacks:
            print(f"  no {twin_variant(variant)} run with seed {seed}: the transfer attack is skipped", flush=True)
            attack = dataclasses.replace(attack, attacks=tuple(a for a in attack.attacks if a != "transfer"))
        extra = {"transfer_source": f"{Path(twin).resolve()} (sha256 {checkpoint_sha256(twin)})"} if twin else {}
        rob = _result(run_dir / ROBUSTNESS, attack, run_dir, extra=extra, compute=lambda: attack_run(
            run_dir, attack, device=device, twin_dir=twin, test=test))
        spa = _result(run_dir / SPARSITY, settings.sparsity, run_dir,
                      lambda: sparsity_run(run_dir, settings.sparsity, device=device, test=test))
        land = _result(run_dir / LANDSCAPE, settings.landscape, run_dir,
                       lambda: landscape_run(run_dir, settings.landscape, device=device, train=train))
        print("\n".join("  " + line for line in robustness_lines(rob) + sparsity_lines(spa) + landscape_lines(land)))
        print(f"  ({time.perf_counter() - t1:.0f} s)", flush=True)
        for name, ds in ((ROBUSTNESS, rob), (SPARSITY, spa), (LANDSCAPE, land)):
            results[name].append(ds)
    combined = {name: combine_runs(runs) for name, runs in results.items()}
    for name, ds in combined.items():
        write_dataset(ds, root / name)
    print(summary(combined[ROBUSTNESS], combined[SPARSITY], combined[LANDSCAPE]))
    print(f"analysis stage: {time.perf_counter() - t0:.0f} s wall; combined results in {root}/"
          f"{{{ROBUSTNESS},{SPARSITY},{LANDSCAPE}}}", flush=True)
    return combined


def summary(rob: xr.Dataset, spa: xr.Dataset, land: xr.Dataset) -> str:
    """One row per variant and seed: AUCs, worst case, sanity verdict, firing rate, energy, Hessian."""
    attacks = [a for a in ("fgsm", "pgd", "spgd") if a in rob.attack.values]
    head = (f"\n{'variant':<12} {'seed':>4} {'clean':>6} " + " ".join(f"{'AUC ' + a:>9}" for a in attacks) +
            f" {'worst@8/255':>11} {'rate':>7} {'energy uJ':>9} {'ANN uJ':>7} {'Hessian':>8}  sanity")
    rows = [head]
    for v in rob.variant.values:
        for s in rob.seed.values:
            r, p, lnd = rob.sel(variant=v, seed=s), spa.sel(variant=v, seed=s), land.sel(variant=v, seed=s)
            if bool(r.clean_accuracy.isnull()):
                continue
            worst = "-"
            if "worst" in rob.attack.values:
                w = r.sel(attack="worst")
                k = int(np.argmin(np.abs(w.epsilon.values - 8 / 255)))
                worst = f"{float(w.accuracy[k]):.3f}"
            rows.append(f"{v:<12} {int(s):>4} {float(r.clean_accuracy):6.3f} " +
                        " ".join(f"{float(r.auc.sel(attack=a)):9.4f}" for a in attacks) +
                        f" {worst:>11} {float(p.network_firing_rate):7.4f} {float(p.total_energy) / 1e6:9.3f} "
                        f"{float(p.ann_energy) / 1e6:7.3f} {float(lnd.hessian_top_eigenvalue):8.3g}  "
                        f"{r.sanity_verdict.item()}")
    return "\n".join(rows)
