"""Which torch device a command runs on."""
from __future__ import annotations

from core.errors import CLIError


def torch_device(name: str) -> str:
    """``auto`` resolved; any other name checked against the devices this machine's torch can use."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto.") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CLIError(f"--device {name}: {why} (torch {torch.__version__}); use --device cpu or auto.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise CLIError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}.")
        return name
    if dev.type == "mps" and torch.backends.mps.is_available():
        return name
    raise CLIError(f"--device {name}: {dev.type} is not available to bioflexnet on this machine; use cpu, cuda, "
                   "cuda:N or auto.")
