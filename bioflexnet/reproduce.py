"""``bioflexnet reproduce``: the whole reproduction as a Snakemake workflow (``bioflexnet/workflow/Snakefile``).

Layout of the output root (:class:`core.variants.RunLayout`)::

    ROOT/<variant>/seed<N>/      one run directory per variant and seed (train.log and every job's log inside)
    ROOT/training_summary.nc     validation and test accuracy, parameters, training time per variant and seed
    ROOT/robustness.nc, ...      the analyses of every run on variant x seed
    ROOT/sim_summary.nc          Brian2 fidelity on variant x seed; ROOT/convergence.nc the convergence in dt
    ROOT/claims.nc, claims.md    the poster's claims: FLEX - VGG per mode, paired over seeds, 95 % intervals
    ROOT/ablation-<name>/seed<N> with --ablations: the ablation runs; ROOT/ablations.nc, .md their table
    ROOT/figures/                the executed notebooks and their figures
    ROOT/.snakemake/             Snakemake's bookkeeping (what ran with which parameters and code)

Snakemake runs the jobs (locally on the machine's cores by default, or on Slurm with ``--cluster slurm``),
skips what is up to date and re-runs what changed (inputs, parameters, code); an interrupted training
continues from its checkpoint. ``--dry-run`` lists the jobs and runs nothing.

Interruptions: Snakemake runs in its own process group. Ctrl-C or SIGTERM to ``reproduce`` is passed on
once, as SIGINT, to that group (Snakemake and its jobs), and ``reproduce`` waits until Snakemake has
stopped the jobs and released its lock, so that the same command resumes (a third signal kills the group
outright). A run killed outright (kill -9,
a crash) leaves Snakemake's lock behind: the next ``reproduce`` on the root, once it holds the root's own
lock (:class:`core.runlock.RunLock`, inherited by Snakemake, so held while any Snakemake of the root lives),
knows that lock is stale, says so and removes it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

from bioflexnet.plan import Plan
from core.errors import CLIError

WORKFLOW = Path(__file__).resolve().parent / "workflow"
SNAKEFILE = WORKFLOW / "Snakefile"
PROFILES = {"slurm": WORKFLOW / "profiles" / "slurm"}
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"


def brian_device(torch_device: str) -> str:
    """cuda_standalone where a GPU and brian2cuda are there, else the runtime device."""
    import importlib.util

    if str(torch_device).startswith("cuda") and importlib.util.find_spec("brian2cuda"):
        from sim.devices import gpu_available

        if gpu_available():
            return "cuda_standalone"
    return "runtime"


def snakemake_command(plan: Plan, root: Path, *, dry_run: bool = False, cluster: str | None = None,
                      cluster_profile: Path | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The ``snakemake`` command line that runs ``plan`` under ``root``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(root),
           "--config", f"plan={plan.to_json()}", "--rerun-incomplete",
           "--printshellcmds", "--show-failed-logs", "--quiet", "host"]
    if cluster_profile is not None or cluster is not None:
        profile = Path(cluster_profile) if cluster_profile is not None else PROFILES[cluster]
        if not (profile / "config.yaml").is_file():
            raise CLIError(f"--cluster-profile {profile}: no config.yaml there; copy {PROFILES['slurm']} and adapt "
                           "it to your cluster.")
        cmd += ["--workflow-profile", "none", "--profile", str(profile)]
    else:
        cmd += ["--cores", str(plan.cores)]
    cmd += ["--prioritize", *plan.costliest()]
    if dry_run:
        cmd += ["--dry-run"]
    return cmd + list(extra)


def stale_snakemake_locks(root: Path) -> list[Path]:
    """Snakemake's lock files under ``root`` (call it while holding the root's RunLock: then they are stale)."""
    locks = Path(root) / SNAKEMAKE_LOCKS
    return sorted(p for p in locks.iterdir() if p.is_file()) if locks.is_dir() else []


def unlock_stale(plan: Plan, root: Path, *, cluster: str | None = None, cluster_profile: Path | None = None,
                 env: dict[str, str] | None = None) -> str | None:
    """Remove the lock an interrupted Snakemake left under ``root`` (``snakemake --unlock``); say so, or ``None``.

    Only for a caller that holds ``root``'s :class:`core.runlock.RunLock`: every Snakemake that
    ``reproduce`` starts inherits that lock, so holding it means no Snakemake of this root is alive.
    """
    stale = stale_snakemake_locks(root)
    if not stale:
        return None
    cmd = snakemake_command(plan, root, cluster=cluster, cluster_profile=cluster_profile, extra=["--unlock"])
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0 or stale_snakemake_locks(root):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CLIError(f"{root}: could not remove the stale Snakemake lock of an interrupted run ({last}); "
                       f"remove {root / SNAKEMAKE_LOCKS} by hand and run the same command again.")
    return (f"{root}: removed the Snakemake lock left by an interrupted run (no process holds {root} any more); "
            "resuming where it stopped.")


def run_interruptible(cmd: Sequence[str], env: dict[str, str], pass_fds: Sequence[int] = ()) -> int:
    """Run ``cmd`` in its own process group; pass Ctrl-C / SIGTERM on to it once and wait for it to stop.

    Returns its exit status; raises KeyboardInterrupt after an interrupted run has stopped cleanly.
    The handlers are installed before the child starts: a signal this process ignored (SIGINT in a
    background job of a script) would otherwise be ignored by Snakemake and its jobs too, while a
    handled one is reset to the default in the child.
    """
    proc: subprocess.Popen | None = None
    received: list[int] = []

    def stop(sig: int = signal.SIGINT) -> None:
        try:
            os.killpg(proc.pid, sig)  # SIGINT is what Ctrl-C in a terminal sends: Snakemake stops its jobs
        except ProcessLookupError:
            pass

    def forward(signum, _frame):
        received.append(signum)
        if len(received) == 1:
            if proc is not None:
                stop()
            print(f"reproduce: {signal.Signals(signum).name} received; stopping the workflow and waiting for "
                  "Snakemake to release its lock (a third Ctrl-C kills it) ...", file=sys.stderr, flush=True)
        elif len(received) == 3 and proc is not None:  # the user insists: the next run clears the stale lock
            stop(signal.SIGKILL)

    main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        proc = subprocess.Popen(cmd, env=env, process_group=0, pass_fds=tuple(pass_fds))
        if received:  # a signal came while it started
            stop()
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt
    return rc


def reproduce(plan: Plan, root: str | os.PathLike, *, dry_run: bool = False, cluster: str | None = None,
              cluster_profile: Path | None = None, extra: Sequence[str] = (), data_dir: Path | None = None,
              pass_fds: Sequence[int] = ()) -> int:
    """Run (or with ``dry_run`` list) the reproduction; returns Snakemake's exit status.

    ``data_dir`` (absolute) reaches every job as ``BIOFLEXNET_DATA_DIR``, since the jobs run inside ``root``;
    ``pass_fds`` are inherited by Snakemake (the root's lock). A real run (not ``dry_run``) must hold
    ``root``'s :class:`core.runlock.RunLock`: it removes a Snakemake lock it finds as stale.
    """
    root = Path(root)
    cmd = snakemake_command(plan, root, dry_run=dry_run, cluster=cluster, cluster_profile=cluster_profile,
                            extra=extra)
    print(f"reproduce: profile {plan.profile}, seeds {list(plan.seeds)}, {len(plan.runs())} trainings"
          + (f" + {len(plan.ablation_runs())} ablation trainings" if plan.ablations else "")
          + f", then export, simulation, analyses, tables and figures under {root}"
          + (" (dry run: nothing is run)" if dry_run else ""), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if data_dir is not None:
        env["BIOFLEXNET_DATA_DIR"] = str(Path(data_dir).absolute())
    existed = root.exists()
    try:
        if not dry_run:
            note = unlock_stale(plan, root, cluster=cluster, cluster_profile=cluster_profile, env=env)
            if note:
                print(note, flush=True)
        return run_interruptible(cmd, env, pass_fds)
    finally:
        if dry_run and not existed and root.is_dir() and {p.name for p in root.iterdir()} <= {".snakemake"}:
            shutil.rmtree(root)  # a dry run leaves nothing behind
