"""``bioflexnet data``: locate CIFAR-10, prepare or download it if absent, verify every file.

In order: the data directory (``--data-dir``, ``$BIOFLEXNET_DATA_DIR`` or
``./data``) is checked; if ``cifar-10-batches-py/`` is incomplete it is
prepared with ``prepare_cifar10.py`` from the shared data folder where that
exists (this project's machines and CI), else the official archive is
downloaded (md5 checked); offline, the command says where to put the files.
Then every batch is loaded through the restricted unpickler (no data file can
run code), counted, and its md5 compared with the official release's.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

from training import data as cifar

# ../shared/data/cifar10/prepare_cifar10.py beside the source checkout (the Makefile's location), then the cwd's
SHARED_SCRIPT = Path("..") / "shared" / "data" / "cifar10" / "prepare_cifar10.py"
EXPECTED_IMAGES = {"train": 50_000, "test": 10_000}


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_prepare_script(explicit: Path | None = None) -> Path | None:
    """The CIFAR-10 preparation script of the shared data folder, if there is one."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    checkout = Path(__file__).resolve().parents[1]
    for base in (checkout, Path.cwd()):
        candidate = (base / SHARED_SCRIPT).resolve()
        if candidate.is_file():
            return candidate
    return None


def complete(root: Path) -> bool:
    folder = root / cifar.FOLDER
    return all((folder / n).is_file() for n in cifar.TRAIN_FILES + cifar.TEST_FILES)


def prepare(root: Path, script: Path) -> None:
    """Run the shared preparation script into ``root``; :class:`DataError` if it fails."""
    print(f"preparing CIFAR-10 in {root / cifar.FOLDER} with {script}", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise cifar.DataError(f"{script} failed (exit {proc.returncode}: {tail[0]}); {cifar._missing_message(root)}")


def verify(root: Path) -> list[str]:
    """Load both splits through the restricted unpickler and compare each file with the official md5."""
    folder = root / cifar.FOLDER
    lines = []
    for split, expected in EXPECTED_IMAGES.items():
        n = len(cifar.load_split(split, root, download=False))
        if n != expected:
            raise cifar.DataError(f"the {split} split in {folder} has {n} images, CIFAR-10 has {expected}; the files "
                                  "are incomplete: delete the folder and run `bioflexnet data` again.")
        lines.append(f"{split}: {n} images, every file loads")
    official = 0
    for name, want in cifar.OFFICIAL_MD5.items():
        path = folder / name
        if not path.is_file():
            lines.append(f"  {name}: absent (optional)" if name == "batches.meta" else f"  {name}: absent")
            continue
        got = md5(path)
        if got == want:
            official += 1
            lines.append(f"  {name}: md5 {got} matches the official release")
        else:
            lines.append(f"  {name}: md5 {got} is not the official {want} (prepared or re-encoded copy)")
    verdict = ("all files are the official release" if official == len(cifar.OFFICIAL_MD5) else
               f"{official} of {len(cifar.OFFICIAL_MD5)} files are the official release; numbers from the others "
               "can differ slightly from published ones")
    return lines + [verdict]


def cmd_data(args: argparse.Namespace) -> None:
    root = cifar.resolve_data_dir(args.data_dir)
    print(f"CIFAR-10 directory: {(root / cifar.FOLDER).resolve()}", flush=True)
    if not complete(root):
        script = None if args.no_prepare else find_prepare_script(args.prepare_script)
        if args.prepare_script is not None and script is None:
            raise cifar.DataError(f"--prepare-script {args.prepare_script} does not exist.")
        if script is not None:
            prepare(root, script)
        elif args.offline:
            raise cifar.DataError(f"{cifar._missing_message(root)} (--offline: no download was tried)")
        else:
            cifar._download(root)
    print("\n".join(verify(root)))
