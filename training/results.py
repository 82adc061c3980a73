"""Result files: provenance and atomic writes (torch-free, shared by every package).

Every file is written to a temporary name in the target directory and moved
into place with ``os.replace``, so an interrupted run leaves either the old
file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import xarray as xr

NETCDF_ENGINE = "h5netcdf"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: names exactly which weights or export a result was computed from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real extension last: writers such as savefig and papermill look at it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def git_commit() -> str:
    """Commit of the source tree this package runs from (``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def provenance(config: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, str]:
    """Flat string attrs saying what produced a result (netCDF attrs must be scalars)."""
    attrs = {
        "bioflexnet_version": _version("bioflexnet"),
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "torch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        "brian2_version": _version("brian2"),
        "xarray_version": _version("xarray"),
        "host": platform.node(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if config is not None:
        attrs["config"] = json.dumps(config, sort_keys=True)
    if seed is not None:
        attrs["seed"] = str(seed)
    return attrs


def write_dataset(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write an xarray Dataset to netCDF (h5netcdf) atomically."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine=NETCDF_ENGINE)


def read_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Open a result file fully into memory (so the file is not held open)."""
    with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
        return ds.load()


def reusable_dataset(path: str | os.PathLike, attrs: dict[str, str]) -> xr.Dataset | None:
    """The result at ``path`` if it exists, reads, and carries exactly these ``attrs``; else ``None``.

    A stage that keys its results by what they were computed from (a checkpoint's
    hash, the settings) uses this to skip work that is already done.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        ds = read_dataset(path)
    except (OSError, ValueError):  # unreadable or half-known: compute it again
        return None
    return ds if all(ds.attrs.get(k) == v for k, v in attrs.items()) else None
