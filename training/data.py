"""CIFAR-10: the standard ``cifar-10-batches-py`` files, held on the device as uint8.

The loader reads the layout of the official ``cifar-10-python.tar.gz``. If the
files are absent it downloads that archive (checksum verified) into the data
directory; offline it fails with a message that says where to put the files.
The whole split lives on the device as one ``[N, 3, 32, 32]`` uint8 tensor;
random crop (zero pad 4) and horizontal flip run batched on the device
(cifar10-airbench style). Normalisation happens inside the model.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from core.errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# md5 of each file of the official archive (as published with it; torchvision checks the same values)
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
# the only globals a CIFAR-10 batch pickle refers to: numpy's array reconstruction (numpy 1 and 2 module
# names) and, for files written by Python 2, the codec that turns its byte strings back into bytes
_BATCH_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class DataError(UserError, RuntimeError):
    """The dataset is missing, incomplete or unreadable."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file can never run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _BATCH_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds "
                                         "(refused: loading it could run code)")
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> object:
    """Unpickle a CIFAR-10 file with :class:`_BatchUnpickler` (latin1 strings, as the official files need)."""
    with open(path, "rb") as f:
        return _BatchUnpickler(f, encoding="latin1").load()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$BIOFLEXNET_DATA_DIR``, else ``./data``; refused if it exists and is not a directory."""
    source = "--data-dir" if data_dir is not None else \
        "BIOFLEXNET_DATA_DIR" if "BIOFLEXNET_DATA_DIR" in os.environ else "the default data directory"
    raw = str(data_dir) if data_dir is not None else os.environ.get("BIOFLEXNET_DATA_DIR", "data")
    root = Path(raw)
    if raw.strip() == "":  # Path("") would silently be the current folder
        raise DataError(f"{source} is empty; point it at the directory that holds (or will hold) {FOLDER}/.")
    if root.exists() and not root.is_dir():
        raise DataError(f"{source}={root} is a file, not a directory; point it at the directory that holds "
                        f"{FOLDER}/ (or will: `bioflexnet data --data-dir DIR` fills it).")
    if (root / FOLDER).exists() and not (root / FOLDER).is_dir():
        raise DataError(f"{root / FOLDER} is a file, not a directory; remove it and run `bioflexnet data`.")
    return root


def require_data(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory, once every CIFAR-10 file is there (downloaded if absent); raises DataError otherwise.

    For commands that must know the data is there before they touch any file of their own.
    """
    root = resolve_data_dir(data_dir)
    if not all((root / FOLDER / n).is_file() for n in (*TRAIN_FILES, *TEST_FILES)):
        _download(root)
    return root


class Split(NamedTuple):
    images: torch.Tensor  # [N, 3, 32, 32] uint8
    labels: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return self.labels.shape[0]


def default_data_dir() -> Path:
    """``$BIOFLEXNET_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get("BIOFLEXNET_DATA_DIR", "data"))


def load_split(split: str, data_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               download: bool = True) -> Split:
    """Load ``"train"`` (50,000 images) or ``"test"`` (10,000 images) onto ``device``."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not a CIFAR-10 split; use 'train' or 'test'.")
    root = resolve_data_dir(data_dir)
    folder = root / FOLDER
    names = TRAIN_FILES if split == "train" else TEST_FILES
    if not all((folder / n).is_file() for n in names):
        if not download:
            raise DataError(_missing_message(root))
        _download(root)
    images, labels = [], []
    for name in names:
        batch = _read_batch(folder / name)
        images.append(batch["data"])
        labels.extend(batch["labels"])
    data = np.concatenate(images).reshape(-1, 3, 32, 32)
    return Split(torch.from_numpy(data).to(device), torch.tensor(labels, dtype=torch.int64, device=device))


def _read_batch(path: Path) -> dict:
    try:
        batch = load_pickle(path)
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = list(batch["labels"])
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise DataError(f"{path} is not a readable CIFAR-10 batch file ({exc}); delete the folder "
                        f"{path.parent} and let bioflexnet download it again, or copy the files of the official "
                        f"archive {CIFAR10_URL} there.") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DataError(f"{path} has data of shape {data.shape} and {len(labels)} labels; "
                        "expected [N, 3072] uint8 pixels and N labels (the official layout).")
    codes = np.asarray(labels)
    if codes.size and (codes.dtype.kind not in "iu" or codes.min() < 0 or codes.max() >= len(CLASSES)):
        raise DataError(f"{path} has labels that are not class indices 0..{len(CLASSES) - 1} (dtype {codes.dtype}); "
                        "the file is corrupt: replace it with the official one (`bioflexnet data` says how).")
    return {"data": data, "labels": labels}


def _missing_message(root: Path) -> str:
    return (f"CIFAR-10 was not found in {root / FOLDER} and could not be downloaded. Put the files of the "
            f"official archive {CIFAR10_URL} (data_batch_1..5, test_batch, batches.meta) in that folder, or point "
            "--data-dir / BIOFLEXNET_DATA_DIR at a directory that holds cifar-10-batches-py/.")


def _download(root: Path) -> None:
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(root)
    except BaseException:
        if created:  # a failed download leaves no empty data folder behind
            shutil.rmtree(root, ignore_errors=True)
        raise


def _fetch(root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            print(f"downloading {CIFAR10_URL} ...", flush=True)
            with urllib.request.urlopen(CIFAR10_URL, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DataError(f"{_missing_message(root)} (download failed: {exc})") from exc
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        if md5 != CIFAR10_MD5:
            raise DataError(f"downloaded archive has md5 {md5}, expected {CIFAR10_MD5}; nothing was written. "
                            "Try again, or place the official files by hand.")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        target = root / FOLDER
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(tmp) / FOLDER, target)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 pixels in [0, 1]."""
    return images.float().div_(255.0)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 batch, on its device."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dev = images.device
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=dev)[None, :]  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_b = torch.arange(b, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    return padded[idx_b, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def batches(split: Split, batch_size: int, *, generator: torch.Generator | None = None,
            train: bool = False, augmented: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(pixels in [0, 1], labels)``; shuffled (and augmented, if ``augmented``) when ``train``.

    Evaluation (``train=False``) covers every example once, in order, the
    last batch possibly smaller.
    """
    n = len(split)
    if train:
        if generator is None:
            raise ValueError("training batches need a torch.Generator for reproducible shuffling.")
        order = torch.randperm(n, device=split.images.device, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):  # drop the ragged tail
            idx = order[start:start + batch_size]
            images = augment(split.images[idx], generator) if augmented else split.images[idx]
            yield to_float(images), split.labels[idx]
    else:
        for start in range(0, n, batch_size):
            yield to_float(split.images[start:start + batch_size]), split.labels[start:start + batch_size]


def balanced_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a fixed, class-balanced random selection of ``n`` of ``labels``."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    classes = labels.unique()
    quota = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    per_class = []
    for cls, q in zip(classes, quota):
        idx = (labels == cls).nonzero().flatten()
        per_class.append(idx[torch.randperm(len(idx), generator=g)[:q]])
    return torch.cat(per_class).sort().values


def subset(split: Split, n: int, seed: int) -> Split:
    """A fixed, class-balanced random subset of ``n`` examples (``n = 0``: the whole split)."""
    if n == 0 or n >= len(split):
        return split
    keep = balanced_indices(split.labels, n, seed).to(split.images.device)
    return Split(split.images[keep], split.labels[keep])


def hold_out(split: Split, n: int, seed: int) -> tuple[Split, Split]:
    """``(rest, held_out)``: a class-balanced set of ``n`` examples carved from ``split``, fixed by ``seed``.

    The validation split of a run is ``hold_out(train, val_size, data_seed)[1]``; the
    training examples come from ``rest`` only, so the two never overlap.
    """
    if not 0 < n < len(split):
        raise ValueError(f"cannot hold out {n} of {len(split)} examples; choose 0 < n < {len(split)}.")
    held = balanced_indices(split.labels, n, seed)
    mask = torch.ones(len(split), dtype=torch.bool)
    mask[held] = False
    rest = mask.nonzero().flatten()
    dev = split.images.device
    held, rest = held.to(dev), rest.to(dev)
    return Split(split.images[rest], split.labels[rest]), Split(split.images[held], split.labels[held])
