"""Run directories: checkpoint, ``config.json`` and provenance, written atomically.

A run directory holds::

    config.json      the run's RunConfig (validated on load)
    checkpoint.pt    model + optimiser state, epochs done, metric history, config, provenance
    metrics.nc       per-epoch metrics (xarray), rewritten after every epoch
    provenance.json  who/what/when produced the run

The checkpoint's state-dict keys are the plain module names (never a compile
or DataParallel prefix). Anything that does not look like a run of this
version is refused with an error saying what is wrong.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from core.config import ConfigError, RunConfig, config_from_dict
from core.errors import UserError
from core.results import atomic_path, read_dataset, write_json
from training.models import SpikingVGG, build_model

CHECKPOINT_FORMAT = 1
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.nc"
PROVENANCE = "provenance.json"


class RunDirError(UserError, RuntimeError):
    """A run directory is missing, incomplete, corrupt or from another version."""


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (must hold ``config``, ``model``, ``epoch``) as the run's checkpoint."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(Path(run_dir) / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def load_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a run's checkpoint; raise :class:`RunDirError` with a remedy otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; train one with `bioflexnet train --out {run_dir}`.")
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT}; it is not a finished or started training run "
                          f"(train with `bioflexnet train --out {run_dir}`, or --resume an interrupted one).")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, ...: all mean "corrupt"
        raise RunDirError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                          "retrain the run, or restore the file from a backup.") from exc
    if not isinstance(state, dict) or "format" not in state:
        raise RunDirError(f"{path} is not a bioflexnet checkpoint (no format field).")
    if state["format"] != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path} has checkpoint format {state['format']!r}, this version reads format "
                          f"{CHECKPOINT_FORMAT}; use the bioflexnet version that wrote it or retrain.")
    missing = {"config", "model", "epoch"} - set(state)
    if missing:
        raise RunDirError(f"{path} lacks {sorted(missing)}; the file is incomplete, retrain the run.")
    return state


def run_config(state_or_dir: dict[str, Any] | str | os.PathLike) -> RunConfig:
    """The validated config of a checkpoint dict or a run directory."""
    state = state_or_dir if isinstance(state_or_dir, dict) else load_checkpoint(state_or_dir)
    try:
        return config_from_dict(state["config"])
    except ConfigError as exc:
        raise RunDirError(f"the run's config is not valid for this version: {exc}") from exc


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SpikingVGG, RunConfig]:
    """Rebuild the trained model of a run directory, in eval mode."""
    state = load_checkpoint(run_dir)
    cfg = run_config(state)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RunDirError(f"the weights in {run_dir} do not fit the model its config describes: {exc}") from exc
    return model.to(device).eval(), cfg


def init_state(source: str | os.PathLike, model_cfg, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of ``source`` for ``train.init_from``, checked to fit a model of ``model_cfg``."""
    source = Path(source)
    try:
        state = load_checkpoint(source, map_location=map_location)
    except RunDirError as exc:
        raise RunDirError(f"train.init_from={source}: {exc}") from None
    saved = run_config(state).model
    same = {"ticks", "plasticity_rate", "refractory"}  # what a fine-tune may change, the weights keeping their meaning
    diff = {k: (getattr(saved, k), getattr(model_cfg, k)) for k in saved.__dataclass_fields__
            if k not in same and getattr(saved, k) != getattr(model_cfg, k)}
    if diff:
        raise RunDirError(f"train.init_from={source}: that run's model differs from this one in "
                          + ", ".join(f"model.{k} ({a!r} there, {b!r} here)" for k, (a, b) in diff.items())
                          + "; fine-tune with the same architecture and neuron model.")
    return state


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    write_json(cfg.to_dict(), Path(run_dir) / CONFIG)


def read_metrics(run_dir: str | os.PathLike):
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {METRICS}; the run has not finished an epoch yet.")
    return read_dataset(path)
