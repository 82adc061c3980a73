"""End to end: `bioflexnet reproduce --profile smoke` trains six variants, simulates, analyses, plots.

The smoke root is made the way a user's run often is (issue 22): interrupted by Ctrl-C during the first
training, run again and killed outright (SIGKILL to every process: a crash), and run again to completion.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bioflexnet.cli import main
from core.results import read_dataset

REPO = Path(__file__).resolve().parents[1]
VARIANTS = [f"{f}-{m}" for f in ("vgg", "flex") for m in ("ann", "hybrid", "stbp")]


def _start(root: Path, cifar_dir: Path, log: Path) -> subprocess.Popen:
    """`bioflexnet reproduce --profile smoke` as a user starts it: its own session, like a terminal's job."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "bioflexnet", "reproduce", "--profile", "smoke", "--out", str(root),
           "--data-dir", str(cifar_dir)]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_training(proc: subprocess.Popen, root: Path, timeout: float = 300) -> None:
    """Until a training job holds its run directory's lock (the data is loading or it trains), then 2 s more."""
    end = time.monotonic() + timeout
    while not any((root / v / "seed0" / ".bioflexnet.lock").exists() for v in VARIANTS):
        assert proc.poll() is None and time.monotonic() < end, "reproduce ended (or hung) before any training began"
        time.sleep(0.2)
    time.sleep(2)


def _session(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL to every process of the session (reproduce, Snakemake, the jobs): what a crash does."""
    for _ in range(50):
        pids = _session(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _locks(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".snakemake" / "locks").glob("*"))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, cifar_dir):
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to find every process of the run (Linux)")
    base = tmp_path_factory.mktemp("reproduce")
    root, record = base / "smoke", {}
    proc = _start(root, cifar_dir, base / "sigint.log")
    _wait_for_training(proc, root)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground job's process group
    record["sigint"] = (proc.wait(timeout=300), (base / "sigint.log").read_text(), _locks(root))
    proc = _start(root, cifar_dir, base / "sigkill.log")
    _wait_for_training(proc, root)
    _kill_session(proc.pid)
    record["sigkill"] = (proc.wait(timeout=60), (base / "sigkill.log").read_text(), _locks(root))
    proc = _start(root, cifar_dir, base / "rerun.log")
    record["rerun"] = (proc.wait(timeout=3600), (base / "rerun.log").read_text(), _locks(root))
    return root, record


@pytest.fixture(scope="module")
def smoke_root(interrupted):
    root, record = interrupted
    rc, out, _ = record["rerun"]
    assert rc == 0, out[-3000:]
    return root


def test_ctrl_c_stops_the_workflow_and_releases_snakemakes_lock(interrupted):
    rc, out, locks = interrupted[1]["sigint"]
    assert rc == 130 and locks == [], out[-3000:]
    assert "waiting for Snakemake to release its lock" in out and "run it again" in out
    assert "Traceback" not in out


def test_after_a_crash_the_same_command_clears_the_stale_lock_and_finishes(interrupted):
    root, record = interrupted
    rc, _, locks = record["sigkill"]
    assert rc == -signal.SIGKILL and locks  # what a crash leaves: Snakemake's lock files
    rc, out, locks = record["rerun"]
    assert rc == 0 and locks == [], out[-3000:]
    assert f"{root}: removed the Snakemake lock left by an interrupted run" in out
    assert "LockException" not in out


def test_every_variant_is_trained_and_beats_chance(smoke_root):
    summary = read_dataset(smoke_root / "training_summary.nc")
    assert sorted(summary.variant.values) == sorted(f"{f}-{m}" for f in ("vgg", "flex") for m in ("ann", "hybrid", "stbp"))
    assert (summary.test_accuracy > 0.15).all()


def test_analyses_and_simulation_are_combined(smoke_root):
    for name in ("robustness.nc", "sparsity.nc", "landscape.nc"):
        ds = read_dataset(smoke_root / name)
        assert ds.sizes["variant"] == 6 and "git_commit" in ds.attrs
    sim = read_dataset(smoke_root / "sim_summary.nc")
    assert float(sim.spike_agreement.min()) == 1.0  # exact mode equals PyTorch
    assert float(sim.class_agreement.sel(simulation="exact").min()) == 1.0


def test_every_figure_is_made(smoke_root):
    for name in ("fig3_training", "fig4_robustness", "fig5_sparsity", "fig6_landscape", "fidelity"):
        assert (smoke_root / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (smoke_root / "figures" / f"{name}.ipynb").is_file()


def test_a_second_run_reuses_finished_work(smoke_root, cifar_dir, capfd):
    before = (smoke_root / "flex-stbp" / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["reproduce", "--profile", "smoke", "--out", str(smoke_root), "--data-dir", str(cifar_dir)]) == 0
    out = "".join(capfd.readouterr())
    assert "Nothing to be done" in out and "rule train" not in out
    assert (smoke_root / "flex-stbp" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == before


def test_a_changed_parameter_reruns_what_depends_on_it(smoke_root, capfd):
    """--set changes every training's config: the dry run lists all six trainings again, and only them
    and what follows (nothing is run)."""
    assert main(["reproduce", "--profile", "smoke", "--out", str(smoke_root), "--dry-run",
                 "--set", "train.lr=0.05"]) == 0
    out = "".join(capfd.readouterr())  # snakemake logs to stderr
    assert "train                  6" in out.replace("\t", " ") or out.count("rule train:") == 6


def test_the_paper_dry_run_lists_every_job(tmp_path, capfd):
    root = tmp_path / "paper"
    assert main(["reproduce", "--profile", "paper", "--seeds", "0", "1", "2", "--out", str(root), "--dry-run"]) == 0
    out = "".join(capfd.readouterr())  # snakemake logs to stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["train"] == 18 and counts["analyse"] == 54 and counts["export"] == 2 and counts["figure"] == 6
    assert counts["simulate"] == 11 and counts["combine_claims"] == 1
    assert not root.exists()  # a dry run writes nothing


def test_the_slurm_profile_dry_run(tmp_path, capfd):
    assert main(["reproduce", "--profile", "paper", "--seeds", "0", "--out", str(tmp_path / "p"), "--dry-run",
                 "--cluster", "slurm"]) == 0
    out = "".join(capfd.readouterr())  # snakemake logs to stderr
    assert "profiles/slurm" in out and "rule train:" in out


def test_a_failed_combine_keeps_the_good_tables(smoke_root, cifar_dir, capfd):
    """A truncated run result: the combine step fails naming it with an absolute path, and the combined
    tables at ROOT are restored, not deleted (Snakemake deletes the outputs of a failed job)."""
    bad = smoke_root / "vgg-stbp" / "seed0" / "sparsity.nc"
    saved = smoke_root.parent / "sparsity.nc.good"
    shutil.copy2(bad, saved)
    tables = {n: (smoke_root / n).read_bytes() for n in ("robustness.nc", "sparsity.nc", "landscape.nc")}
    try:
        bad.write_bytes(saved.read_bytes()[:200])
        assert main(["reproduce", "--profile", "smoke", "--out", str(smoke_root), "--data-dir", str(cifar_dir)]) == 2
        out = "".join(capfd.readouterr())
        assert f"result file {bad} is corrupt" in out and f"bioflexnet sparsity {bad.parent}" in out
        assert {n: (smoke_root / n).read_bytes() for n in tables} == tables
    finally:
        shutil.copy2(saved, bad)
