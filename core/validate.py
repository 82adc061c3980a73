"""Checks of values where they enter: command-line options and output paths (torch-free).

Every check runs before any work starts, so a bad value costs a one-line
error, not a traceback after minutes of training or simulation. The
``argparse`` types here make argparse itself report the option, the value and
the rule (exit code 2, like every usage error).
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from core.errors import UserError

# integer options end up in numpy / torch int64 arithmetic (seeds are multiplied by epoch offsets)
SEED_MAX = 2**32 - 1
INT_MAX = 2**31 - 1


class PathError(UserError, ValueError):
    """An output path cannot be a directory, or an input path is the wrong kind of file."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_in(low: int, high: int = INT_MAX):
    """argparse type: an integer in ``[low, high]``."""
    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give an integer in [{low}, {high}]")
        return value

    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


positive_int = int_in(1)
seed_int = int_in(0, SEED_MAX)


def finite_float(low: float = -math.inf, *, positive: bool = False):
    """argparse type: a finite number ``>= low`` (``> 0`` if ``positive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be > 0")
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = "finite number"
    return parse


def output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` if it is a writable directory or can become one; else :class:`PathError`.

    Nothing is created: the caller makes the directory when it writes.
    """
    path = Path(path)
    _check_name_lengths(path, option)  # first: a too long name makes even exists() raise
    if path.exists() and not path.is_dir():
        raise PathError(f"{option} {path} is a file, not a directory; choose a directory (it is created if "
                        "missing) or remove the file.")
    ancestor = path
    while not ancestor.exists():
        if ancestor.is_symlink():  # exists() follows links: this one points nowhere, and mkdir would fail on it
            raise PathError(f"{option} {path} cannot be created: {ancestor} is a symbolic link to "
                            f"{os.readlink(ancestor)}, which does not exist; create its target or choose another "
                            "path.")
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise PathError(f"{option} {path} cannot be created: {ancestor} is a file, not a directory; choose "
                        "another path.")
    if ancestor.exists() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise PathError(f"{option} {path} cannot be written: no write permission in {ancestor}; choose another "
                        "path.")
    return path


def _check_name_lengths(path: Path, option: str) -> None:
    """Every name in ``path`` fits the file system's limit (usually 255 bytes)."""
    try:
        limit = os.pathconf(".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the file system does not say
        limit = 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise PathError(f"{option} {path}: the name {part[:20]}... is {len(os.fsencode(part))} bytes long, this "
                            f"file system allows {limit}; choose a shorter name.")


def output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` if it can be written as a file: not a directory, and its folder can be a directory."""
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{option} {path} is a directory; give a file name (e.g. {path / 'result.nc'}).")
    output_dir(path.parent, f"{option} {path}: its folder")
    return path


def renamed(new: str) -> type[argparse.Action]:
    """An argparse action for an old option name: stores into the new option's field and says the new name."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            import sys

            print(f"note: {option_string} is now called {new}; it does the same.", file=sys.stderr)
            setattr(namespace, self.dest, values)

    return Renamed
