"""Result files: provenance and atomic writes (torch-free, shared by every package).

Every file is written to a temporary name in the target directory and moved
into place with ``os.replace``, so an interrupted run leaves either the old
file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import xarray as xr

from core.errors import UserError

NETCDF_ENGINE = "h5netcdf"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: names exactly which weights or export a result was computed from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOW_SPACE = 1 << 20  # bytes: a write that failed with less than this free on its file system failed for space


class DiskFull(UserError, OSError):
    """A result could not be written because its file system is full (or the user's quota is spent)."""


def no_space(directory: str | os.PathLike) -> bool:
    """Whether the file system of ``directory`` (or of its nearest existing parent) is all but full."""
    directory = Path(directory).absolute()
    while not directory.exists() and directory.parent != directory:
        directory = directory.parent
    return _free_bytes(directory) < LOW_SPACE


def _free_bytes(directory: Path) -> float:
    try:
        return float(shutil.disk_usage(directory).free)
    except OSError:
        return math.inf


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
    except Exception as exc:
        free = _free_bytes(path.parent)  # before the partial file is removed and frees its space again
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < LOW_SPACE:
            # torch.save and netCDF writers report a full disk as "file write failed" or an HDF5 error
            raise DiskFull(f"no space left on device while writing {path} ({free / 1e6:.1f} MB free there; "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); nothing was "
                           "written and earlier results are intact: free some space and run the same command "
                           "again.") from exc
        raise
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
        # the same seed gives the same numbers only with the same thread count (float sums are reordered)
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    if "torch" in sys.modules:  # never import torch here: sim/ uses this module without it
        attrs["torch_num_threads"] = str(sys.modules["torch"].get_num_threads())
    if config is not None:
        attrs["config"] = json.dumps(config, sort_keys=True)
    if seed is not None:
        attrs["seed"] = str(seed)
    return attrs


def write_dataset(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write an xarray Dataset to netCDF (h5netcdf) atomically."""
    ds = ds.copy()
    for obj in (ds, *ds.variables.values()):  # a str subclass (core.variants.Variant) as the plain str netCDF takes
        obj.attrs = {k: str(v) if isinstance(v, str) else v for k, v in obj.attrs.items()}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine=NETCDF_ENGINE)


class ResultFileError(UserError, ValueError):
    """A result file is missing or unreadable; the message names it and the command that writes it again."""


# file name -> (command that writes it again, for a run directory / for a reproduce root)
_REGENERATE = {
    "metrics.nc": "bioflexnet train --out {run} --resume (rewrites it from checkpoint.pt)",
    "evaluation.nc": "bioflexnet evaluate {run}",
    "robustness.nc": "bioflexnet attack {run}",
    "sparsity.nc": "bioflexnet sparsity {run}",
    "landscape.nc": "bioflexnet landscape {run}",
    "sim.nc": "bioflexnet sim {run}",
}
_ROOT_FILES = ("training_summary.nc", "sim_summary.nc", "robustness.nc", "sparsity.nc", "landscape.nc")


def regenerate_hint(path: str | os.PathLike) -> str:
    """The command that writes ``path`` again (best guess from its name and place)."""
    path = Path(path)
    run = path.parent
    if path.name == "sim.nc":  # RUN/sim/sim.nc or RUN/sim/<setting>/sim.nc
        run = next((p for p in path.parents if (p / "checkpoint.pt").is_file() or (p / "export.npz").is_file()),
                   path.parent.parent)
        if path.parent == run / "sim":
            return f"bioflexnet sim {run}"
        return (f"bioflexnet reproduce on the root that holds {run} (it redoes unreadable simulations), or "
                f"bioflexnet sim {run} --out {path.parent} with that setting's options")
    if path.name in _ROOT_FILES and not (run / "checkpoint.pt").is_file():
        return f"delete it and run `bioflexnet reproduce --out {run}` again (finished stages are reused)"
    if path.name in _REGENERATE:
        return _REGENERATE[path.name].format(run=run)
    return "the bioflexnet command that wrote it"


def read_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Open a result file fully into memory (so the file is not held open).

    A missing or unreadable file raises :class:`ResultFileError` naming the file and the command that
    regenerates it (not the netCDF library's traceback).
    """
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"result file {path} does not exist; write it with: {regenerate_hint(path)}.")
    try:
        with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
            return ds.load()
    except Exception as exc:  # noqa: BLE001 - h5py, netCDF and xarray raise many types for one cause: a bad file
        raise ResultFileError(f"result file {path} is corrupt or not a netCDF result ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); regenerate it with: "
                              f"{regenerate_hint(path)}.") from exc


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
