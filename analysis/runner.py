"""Glue between run directories and the analysis functions: load, analyse, attach provenance.

Each ``*_run`` function loads a trained run, calls the plain analysis
function and returns its Dataset with provenance attrs (the run's config and
seed, the code version, the SHA-256 of the analysed checkpoint). Writing the
file is left to the caller (the CLI and the pipeline), always atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from analysis.landscape import landscape
from analysis.robustness import robustness
from analysis.settings import AttackSettings, LandscapeSettings, SparsitySettings
from analysis.sparsity import sparsity
from core.config import Mode, RunConfig
from core.results import file_sha256, provenance
from core.variants import RunLayout
from training.data import Split, load_split
from training.models import SpikingVGG
from training.runs import CHECKPOINT, RunDirError, load_model

ROBUSTNESS = "robustness.nc"
SPARSITY = "sparsity.nc"
LANDSCAPE = "landscape.nc"


def checkpoint_sha256(run_dir: str | os.PathLike) -> str:
    """SHA-256 of a run's checkpoint: names exactly which weights a result was computed from."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT}; train the run first (bioflexnet train --out {run_dir}).")
    return file_sha256(path)


def run_attrs(run_dir: Path, cfg: RunConfig) -> dict[str, str]:
    """Provenance of a result computed from ``run_dir``."""
    return {**provenance(cfg.to_dict(), cfg.seed), "variant": cfg.variant, "profile": cfg.profile,
            "run_dir": str(Path(run_dir).resolve()), "checkpoint_sha256": checkpoint_sha256(run_dir)}


def default_twin_dir(run_dir: str | os.PathLike, cfg: RunConfig) -> Path:
    """The ANN twin's conventional place: ``RUN_DIR/../../{flex|vgg}-ann/seed<N>`` (the layout of ``reproduce``)."""
    return RunLayout.of_run(run_dir).run_dir(cfg.variant.ann_twin, cfg.seed)


def load_twin(twin_dir: str | os.PathLike, cfg: RunConfig, device: str) -> SpikingVGG:
    """Load the ANN twin of a run and check that it is one (same architecture and flex flag, ann mode)."""
    twin_dir = Path(twin_dir)
    if not (twin_dir / CHECKPOINT).is_file():
        flex = "--flex" if cfg.model.flex else "--no-flex"
        raise RunDirError(f"the transfer attack needs the ANN twin of this {cfg.variant} run, but {twin_dir} holds "
                          f"no {CHECKPOINT}; train it (bioflexnet train --mode ann {flex} --seed {cfg.seed} "
                          f"--profile {cfg.profile} --out {twin_dir}), name it with --twin DIR, or leave 'transfer' "
                          "out of --attacks.")
    twin, tcfg = load_model(twin_dir, device)
    m, t = cfg.model, tcfg.model
    pairs = (("arch", m.arch.value, t.arch.value), ("width", m.width, t.width), ("flex", m.flex, t.flex),
             ("num_classes", m.num_classes, t.num_classes))
    problems = [f"{k} {b!r} (run: {a!r})" for k, a, b in pairs if a != b]
    if t.mode is not Mode.ANN:
        problems.append(f"mode {t.mode.value!r} (must be 'ann')")
    if problems:
        raise RunDirError(f"{twin_dir} is not the ANN twin of this {cfg.variant} run: it has " + ", ".join(problems) + ".")
    return twin


def attack_run(run_dir: str | os.PathLike, settings: AttackSettings, *, data_dir=None, device: str = "cpu",
               twin_dir: str | os.PathLike | None = None, test: Split | None = None, progress: bool = False) -> xr.Dataset:
    """Robustness Dataset of one run (the twin is needed only when 'transfer' is among the attacks)."""
    model, cfg = load_model(run_dir, device)
    twin = None
    attrs = run_attrs(Path(run_dir), cfg)
    if "transfer" in settings.attacks:
        twin_dir = Path(twin_dir) if twin_dir is not None else default_twin_dir(run_dir, cfg)
        twin = load_twin(twin_dir, cfg, device)
        attrs["transfer_source"] = f"{twin_dir.resolve()} (sha256 {checkpoint_sha256(twin_dir)})"
    test = test if test is not None else load_split("test", data_dir, device)
    return robustness(model, test, settings, twin=twin, attrs=attrs, progress=progress)


def sparsity_run(run_dir: str | os.PathLike, settings: SparsitySettings, *, data_dir=None, device: str = "cpu",
                 test: Split | None = None) -> xr.Dataset:
    model, cfg = load_model(run_dir, device)
    test = test if test is not None else load_split("test", data_dir, device)
    return sparsity(model, test, settings, attrs=run_attrs(Path(run_dir), cfg))


def landscape_run(run_dir: str | os.PathLike, settings: LandscapeSettings, *, data_dir=None, device: str = "cpu",
                  train: Split | None = None) -> xr.Dataset:
    model, cfg = load_model(run_dir, device)
    train = train if train is not None else load_split("train", data_dir, device)
    return landscape(model, train, settings, attrs=run_attrs(Path(run_dir), cfg))
