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
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from bioflexnet.plan import Plan
from core.errors import CLIError

WORKFLOW = Path(__file__).resolve().parent / "workflow"
SNAKEFILE = WORKFLOW / "Snakefile"
PROFILES = {"slurm": WORKFLOW / "profiles" / "slurm"}


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


def reproduce(plan: Plan, root: str | os.PathLike, *, dry_run: bool = False, cluster: str | None = None,
              cluster_profile: Path | None = None, extra: Sequence[str] = ()) -> int:
    """Run (or with ``dry_run`` list) the reproduction; returns Snakemake's exit status."""
    root = Path(root)
    cmd = snakemake_command(plan, root, dry_run=dry_run, cluster=cluster, cluster_profile=cluster_profile,
                            extra=extra)
    print(f"reproduce: profile {plan.profile}, seeds {list(plan.seeds)}, {len(plan.runs())} trainings"
          + (f" + {len(plan.ablation_runs())} ablation trainings" if plan.ablations else "")
          + f", then export, simulation, analyses, tables and figures under {root}"
          + (" (dry run: nothing is run)" if dry_run else ""), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    existed = root.exists()
    try:
        return subprocess.run(cmd, env=env).returncode
    finally:
        if dry_run and not existed and root.is_dir() and {p.name for p in root.iterdir()} <= {".snakemake"}:
            shutil.rmtree(root)  # a dry run leaves nothing behind
