"""Issue 22, fast half: how `reproduce` stops on Ctrl-C / SIGTERM and finds a Snakemake lock that is stale.

(The slow half, a real smoke reproduce interrupted by SIGINT and by SIGKILL and run again to completion,
builds the smoke root of tests/test_reproduce.py.)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bioflexnet.cli import main
from bioflexnet.reproduce import run_interruptible
from core.runlock import LockHeld, RunLock

CHILD = textwrap.dedent("""
    import pathlib, signal, sys, time
    got = []
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGINT, lambda *a: got.append(1))
    pathlib.Path(sys.argv[1]).write_text("ready")
    while not got:
        time.sleep(0.01)
    time.sleep(1.0)  # stopping takes a while (Snakemake stops its jobs, then releases its lock)
    pathlib.Path(sys.argv[2]).write_text(f"{len(got)} {ignored}")
    sys.exit(130)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("background", [False, True])
def test_a_signal_is_passed_on_once_and_the_workflow_is_waited_for(sig, background, tmp_path):
    """``background``: started from a script's background job, where SIGINT is ignored: Snakemake must
    still not inherit the ignoring, or it would never stop."""
    ready, done = tmp_path / "ready", tmp_path / "done"

    def interrupt():
        while not ready.exists():
            time.sleep(0.01)
        for _ in range(2):  # an impatient user presses Ctrl-C twice
            os.kill(os.getpid(), sig)
            time.sleep(0.1)

    before = signal.signal(signal.SIGINT, signal.SIG_IGN if background else signal.default_int_handler)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_interruptible([sys.executable, "-c", CHILD, str(ready), str(done)], dict(os.environ))
        assert done.read_text() == "1 False"  # it finished stopping, got SIGINT exactly once, did not ignore it
        assert time.monotonic() - t0 >= 1.0
        assert signal.getsignal(signal.SIGINT) is (signal.SIG_IGN if background else signal.default_int_handler)
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_stale_snakemake_lock_is_removed_saying_so(tmp_path, cifar_dir, capfd):
    root = tmp_path / "root"
    locks = root / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text(f"{root}/vgg-ann/seed0/metrics.nc\n")
    (locks / "0.output.lock").write_text(f"{root}/training_summary.nc\n")
    # --snakemake --dry-run: the unlock is real, the workflow itself only lists its jobs
    assert main(["reproduce", "--profile", "smoke", "--out", str(root), "--data-dir", str(cifar_dir),
                 "--device", "cpu", "--snakemake", "--dry-run"]) == 0
    out = "".join(capfd.readouterr())
    assert f"{root}: removed the Snakemake lock left by an interrupted run" in out
    assert not list(locks.iterdir()) and "LockException" not in out


HOLDER = textwrap.dedent("""
    import os, subprocess, sys
    from core.runlock import RunLock
    lock = RunLock(sys.argv[1], "bioflexnet reproduce (killed)").acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[lock.fileno()],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(child.pid, flush=True)
    os._exit(0)  # as kill -9 would: no release, the child (Snakemake) lives on
""")


def test_the_root_stays_locked_while_a_snakemake_it_started_lives(tmp_path):
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", HOLDER, str(root)], env=env, capture_output=True, text=True,
                         check=True).stdout
    child = int(out.split()[0])
    try:
        with pytest.raises(LockHeld, match="a process that pid .* started"):
            RunLock(root).acquire()
    finally:
        os.kill(child, signal.SIGKILL)
    time.sleep(0.2)
    with RunLock(root) as lock:  # the holder is gone: the lock is stale and taken over
        assert lock.took_over is not None


def test_a_third_ctrl_c_kills_a_workflow_that_does_not_stop(tmp_path):
    ready = tmp_path / "ready"
    stubborn = ("import pathlib, signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "pathlib.Path(sys.argv[1]).write_text('ready'); time.sleep(60)")

    def insist():
        while not ready.exists():
            time.sleep(0.01)
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)

    threading.Thread(target=insist, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_interruptible([sys.executable, "-c", stubborn, str(ready)], dict(os.environ))
    assert time.monotonic() - t0 < 30
