"""One writer per run directory: a lock file with the owner's pid, and clean-up of interrupted writes.

``RUNDIR/.bioflexnet.lock`` holds the pid, host and command of the process
that writes the directory. The kernel lock (``flock``) on that file is the
truth: it is released when the owner exits, however it exits, so a lock file
left by a killed process is *stale*: the next writer finds the ``flock`` free,
says whose lock it takes over, and writes its own pid. A second writer while
the owner lives gets :class:`LockHeld`, naming the holder.

Atomic writes (:func:`core.results.atomic_path`) go through temporary
files ``.<stem>.<random>.tmp<suffix>``; a process killed mid-write leaves one
behind. :func:`remove_stale_temps` deletes them; the lock's owner calls it on
start, when no other process can be writing there. Torch-free.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from core.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: fall back to the pid check alone
    fcntl = None

LOCK_FILE = ".bioflexnet.lock"
# atomic_path's temporary names: "." + stem + "." + mkstemp's 8 random characters + ".tmp" + suffix
TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


class LockHeld(UserError, RuntimeError):
    """Another live process writes this run directory."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_owner(path: Path) -> dict:
    """The owner record of a lock file (empty if unreadable)."""
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "an unknown process"
    return (f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')}: "
            f"{owner.get('command', '?')})")


class RunLock:
    """Hold ``RUN_DIR/.bioflexnet.lock`` while writing ``RUN_DIR`` (a context manager).

    ``purpose`` goes into the lock file and into the holder's description.
    """

    def __init__(self, run_dir: str | os.PathLike, purpose: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.purpose = purpose or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self._fd: int | None = None
        self._created = False
        self.took_over: dict | None = None  # the stale owner record replaced, if any

    def acquire(self) -> "RunLock":
        self._created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    raise LockHeld(self._held_message())
                # the previous owner may have removed the file between our open and our lock: retry on the new one
                if not self.path.exists() or os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            break
        previous = read_owner(self.path)
        if previous and previous.get("pid") != os.getpid():
            self.took_over = previous
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.purpose,
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError:  # a file system without flock: decide by the recorded pid
                pass
        owner = read_owner(self.path)
        same_host = owner.get("host") in (None, socket.gethostname())
        return not (owner and same_host and owner.get("pid") != os.getpid() and pid_alive(int(owner.get("pid", 0))))

    def _held_message(self) -> str:
        owner = read_owner(self.path)
        pid = owner.get("pid")
        if isinstance(pid, int) and owner.get("host") in (None, socket.gethostname()) and not pid_alive(pid):
            # the recorded owner is gone, yet the kernel lock is held: by a process it started (Snakemake)
            return (f"{self.run_dir} is still being written by a process that {_describe(owner)} started (that pid "
                    f"is gone, the lock is held: `fuser {self.path}` names the holder); wait for it to finish "
                    f"(or stop it), or choose another --out. (Lock file: {self.path}.)")
        return (f"{self.run_dir} is being written by {_describe(owner)}; wait for it to finish "
                f"(or stop it), or choose another --out. (Lock file: {self.path}.)")

    def fileno(self) -> int:
        """The lock file's descriptor: a child process that inherits it holds the lock as long as it lives."""
        if self._fd is None:
            raise RuntimeError("the lock is not held")
        return self._fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if read_owner(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)  # still ours: remove it before letting go
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None
        if self._created:  # made only for the lock and nothing was written: leave no empty directory behind
            try:
                self.run_dir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Temporary files of interrupted atomic writes directly in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and TEMP_PATTERN.match(p.name))


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temps` of ``directory`` (call it only while holding its lock); returns them."""
    removed = []
    for path in stale_temps(directory):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def describe_takeover(lock: RunLock) -> str | None:
    """A line saying whose stale lock was taken over, or ``None``."""
    if lock.took_over is None:
        return None
    return f"{lock.run_dir}: took over the stale lock of {_describe(lock.took_over)}, which is no longer running."
