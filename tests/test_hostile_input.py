"""Issue 13: careless or hostile input gives a one-line error (exit 2 for usage errors), never a traceback,
a lost result or an executed payload. One test (or more) per row of the issue's table, on tiny fixtures."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_cifar
from export_helpers import random_export

from bioflexnet.cli import main
from core.runlock import LOCK_FILE, RunLock
from training import data as cifar

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--profile", "smoke", "--mode", "stbp", "--set", "train.train_subset=0", "--set", "train.batch_size=40",
        "--set", "train.val_size=20"]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out


def _one_line_error(out, *fragments):
    """stderr is exactly one line, no traceback, holding every fragment."""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A fake CIFAR-10 (100 train / 30 test images) and one finished run trained on it (seconds)."""
    base = tmp_path_factory.mktemp("hostile")
    data = write_fake_cifar(base / "data")
    run = base / "run"
    assert main(["train", *TINY, "--out", str(run), "--data-dir", str(data)]) == 0
    return data, run


def _copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


# --- a crafted test_batch pickle, then `bioflexnet evaluate RUN` -----------------------------------------

class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_batch_pickle_never_runs(tiny, tmp_path, capsys):
    data_src, run = tiny
    data = tmp_path / "data"
    shutil.copytree(data_src, data)
    marker = tmp_path / "PWNED"
    crafted = data / "cifar-10-batches-py" / "test_batch"
    crafted.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    # the file really is a payload: plain pickle runs it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    rc, out = _run(capsys, "evaluate", run, "--data-dir", data)
    assert rc == 2 and not marker.exists()
    _one_line_error(out, str(crafted), "posix.system", "could run code")
    with pytest.raises(cifar.DataError):
        cifar.load_split("test", data, download=False)
    assert not marker.exists()


def test_batch_labels_are_checked(tmp_path):
    root = write_fake_cifar(tmp_path / "d")
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 17]}, f)
    with pytest.raises(cifar.DataError, match="class indices"):
        cifar.load_split("test", root, download=False)


# --- two writers on one --out; a stale lock ---------------------------------------------------------------

def test_second_writer_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(tiny, tmp_path, capsys):
    data, _ = tiny
    out_dir = tmp_path / "shared"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from core.runlock import RunLock; "
         f"RunLock({str(out_dir)!r}, 'train seed 1').acquire(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, out = _run(capsys, "train", *TINY, "--seed", 2, "--out", out_dir, "--data-dir", data)
        assert rc == 2
        _one_line_error(out, f"pid {holder.pid}", "train seed 1", "choose another --out")
        assert not (out_dir / "checkpoint.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without cleaning up: its lock file is stale and is taken over
    assert json.loads((out_dir / LOCK_FILE).read_text())["pid"] == holder.pid
    rc, out = _run(capsys, "train", *TINY, "--seed", 2, "--out", out_dir, "--data-dir", data)
    assert rc == 0, out.err
    assert f"took over the stale lock of pid {holder.pid}" in out.out
    assert (out_dir / "checkpoint.pt").is_file() and not (out_dir / LOCK_FILE).exists()


def test_lock_is_exclusive_within_one_machine(tmp_path):
    with RunLock(tmp_path / "r", "first"):
        with pytest.raises(RuntimeError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "r", "second").acquire()
    with RunLock(tmp_path / "r", "third"):  # released: free again
        pass


# --- kill -9 while a checkpoint is being written ----------------------------------------------------------

def test_temp_file_of_an_interrupted_write_is_removed_on_the_next_start(tiny, tmp_path, capsys):
    data, run = tiny
    run = _copy_run(run, tmp_path)
    stale = run / ".checkpoint.k9x2ab_c.tmp.pt"  # atomic_path's name pattern, half written
    stale.write_bytes(b"PK\x03\x04 half a zip")
    keep = run / "notes.tmp.txt"  # not one of ours: left alone
    keep.write_text("mine")
    rc, out = _run(capsys, "train", "--out", run, "--resume", "--data-dir", data)
    assert rc == 0 and not stale.exists() and keep.exists()
    assert f"removed {stale.name}" in out.out


# --- bad --set values, bad devices ------------------------------------------------------------------------

@pytest.mark.parametrize("item, fragment", [
    ("model.width=Infinity", "model.width=inf must be a finite number"),
    ("train.lr=NaN", "train.lr=nan must be a finite number"),
    ("train.lr=Infinity", "train.lr=inf must be a finite number"),
    ("seed=99999999999999999999", "seed=99999999999999999999 is out of range"),
    ("train.epochs=1e30", "train.epochs=1e+30 must be an integer"),
    ("train.epochs=99999999999999999999", "is out of range"),
    ("model.width=1e6", "model.width=1000000.0 must be > 0 and <= 64"),
    ("model.width=1e-9", "and >= 0.0625 so that the first layers keep >= 4 of their 64 channels"),
    ("model.time_steps=100000000", "model.time_steps=100000000 must be >= 1 and <= 1000"),
    ("model.num_classes=5", "model.num_classes=5 is smaller than CIFAR-10's 10 classes"),
])
def test_bad_set_values_are_one_line(item, fragment, tmp_path, capsys):
    rc, out = _run(capsys, "train", "--profile", "smoke", "--out", tmp_path / "r", "--set", item,
                   "--data-dir", tmp_path / "no-data")
    assert rc == 2 and not (tmp_path / "r").exists()
    _one_line_error(out, fragment)


@pytest.mark.parametrize("device, fragment", [("tpu", "is not a device"), ("cuda", "--device cuda"),
                                              ("cuda:7", "--device cuda:7"), ("meta", "not available")])
def test_devices_that_do_not_exist_are_refused(device, fragment, tmp_path, capsys):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, out = _run(capsys, "train", "--profile", "smoke", "--out", tmp_path / "r", "--device", device)
    assert rc == 2 and not (tmp_path / "r").exists()
    _one_line_error(out, fragment)


# --- output paths that are files ---------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["", "sub"])
def test_train_out_that_is_a_file_fails_before_any_work(sub, tmp_path, capsys):
    f = tmp_path / "F"
    f.write_text("a file")
    target = f / sub if sub else f
    # no data there: had the data been loaded first, the error would be about the data
    rc, out = _run(capsys, "train", "--profile", "smoke", "--out", target, "--data-dir", tmp_path / "no-data")
    assert rc == 2 and f.read_text() == "a file"
    _one_line_error(out, f"--out {target}", "is a file")


def test_export_out_under_a_file_fails_before_exporting(tiny, tmp_path, capsys):
    _, run = tiny
    f = tmp_path / "F"
    f.write_text("a file")
    rc, out = _run(capsys, "export", run, "--out", f / "e.npz", "--data-dir", tmp_path / "no-data")
    assert rc == 2
    _one_line_error(out, "is a file, not a directory")


def test_sim_out_that_is_a_file_fails_before_simulating(tmp_path, capsys):
    random_export(tmp_path / "run" / "export.npz", n_images=1)
    f = tmp_path / "F"
    f.write_text("a file")
    t0 = time.perf_counter()
    rc, out = _run(capsys, "sim", tmp_path / "run", "--out", f)
    assert rc == 2 and time.perf_counter() - t0 < 20
    _one_line_error(out, f"--out {f} is a file")
    assert f.read_text() == "a file" and not (tmp_path / "run" / "sim").exists()


# --- bad integers: usage errors from argparse ----------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["reproduce", "--jobs", "-1"], "argument --jobs: -1 is out of range"),
    (["evaluate", "RUN", "--batch-size", "0"], "argument --batch-size: 0 is out of range"),
    (["train", "--out", "R", "--seed", "-3"], "argument --seed: -3 is out of range"),
    (["sim", "RUN", "--tau-m-ms", "inf"], "argument --tau-m-ms: 'inf' is not a finite number"),
])
def test_bad_integers_are_usage_errors(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "--help" in lines[0], lines


# --- malformed export headers --------------------------------------------------------------------------

def _tamper(path: Path, change) -> None:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(str(arrays.pop("header")))
    change(header)
    with open(path, "wb") as f:
        np.savez_compressed(f, header=np.array(json.dumps(header)), **arrays)


@pytest.mark.parametrize("change, fragment", [
    (lambda h: h["model"].update(beta="abc"), "model.beta='abc' must be a finite number in [0, 1]"),
    (lambda h: h["layers"][1].update(stride=0), "layers[1] (down1).stride=0 must be an integer in [1, 100000]"),
    (lambda h: h["model"].update(steps=2.0), "model.steps=2.0 must be an integer"),
    (lambda h: h["model"].update(theta=None), "model.theta=None must be a finite number > 0"),
    (lambda h: h["layers"][0].update(in_size="32x32"), "layers[0] (conv1).in_size='32x32'"),
    (lambda h: h["layers"][0].update(c_out=True), "layers[0] (conv1).c_out=True"),
    (lambda h: h.update(run=[]), "run=[] must be an object"),
])
def test_export_header_fields_are_checked_by_name(change, fragment, tmp_path, capsys):
    from core.export_format import ExportError, read_export

    path = tmp_path / "run" / "export.npz"
    random_export(path, n_images=1)
    _tamper(path, change)
    with pytest.raises(ExportError) as err:
        read_export(path)
    assert fragment in str(err.value)
    rc, out = _run(capsys, "sim", path.parent)
    assert rc == 2
    _one_line_error(out, fragment)


# --- a garbage metrics.nc under a reproduce root --------------------------------------------------------

def _garbage_root(tiny, tmp_path: Path) -> tuple[Path, Path]:
    _, run = tiny
    root = tmp_path / "root"
    run_dir = root / "flex-stbp" / "seed0"
    shutil.copytree(run, run_dir)
    (run_dir / "metrics.nc").write_bytes(b"\x89HDF\r\n garbage")
    return root, run_dir


def test_garbage_metrics_named_by_figures_and_reproduce(tiny, tmp_path, capsys):
    root, run_dir = _garbage_root(tiny, tmp_path)
    bad = run_dir / "metrics.nc"
    rc, out = _run(capsys, "figures", root, "--only", "fig3_training")
    assert rc == 2
    _one_line_error(out, str(bad), "is corrupt", f"bioflexnet train --out {run_dir} --resume")
    assert not (root / "figures" / "fig3_training.png").exists()

    # the reproduce pipeline: training is done; its summary step (`combine training`) reads metrics.nc
    rc, out = _run(capsys, "combine", "training", root, "--runs", "flex-stbp/seed0")
    assert rc == 2
    _one_line_error(out, str(bad), f"bioflexnet train --out {run_dir} --resume")
    assert not (root / "training_summary.nc").exists()


def test_the_named_command_regenerates_metrics(tiny, tmp_path, capsys):
    from core.results import read_dataset

    root, run_dir = _garbage_root(tiny, tmp_path)
    rc, out = _run(capsys, "train", "--out", run_dir, "--resume", "--data-dir", tiny[0])
    assert rc == 0 and "metrics.nc rewritten" in out.out
    assert int(read_dataset(run_dir / "metrics.nc").epoch[-1]) == 1
    # and the pipeline's summary step then completes, recording the thread count of the training
    rc, out = _run(capsys, "combine", "training", root, "--runs", "flex-stbp/seed0")
    assert rc == 0, out.err
    attrs = read_dataset(root / "training_summary.nc").attrs
    assert attrs["train_threads_per_job"] == str(read_dataset(run_dir / "metrics.nc").attrs["torch_num_threads"])


def test_unreadable_result_file_names_itself_and_its_command(tmp_path):
    from core.results import ResultFileError, read_dataset

    (tmp_path / "robustness.nc").write_text("not netcdf")
    with pytest.raises(ResultFileError, match="bioflexnet reproduce --out"):
        read_dataset(tmp_path / "robustness.nc")
    with pytest.raises(ResultFileError, match=r"does not exist; write it with: bioflexnet sim"):
        read_dataset(tmp_path / "run" / "sim" / "sim.nc")


# --- BIOFLEXNET_DATA_DIR pointing to a file -------------------------------------------------------------

def test_data_dir_that_is_a_file(tmp_path, capsys, monkeypatch):
    f = tmp_path / "F"
    f.write_text("x")
    monkeypatch.setenv("BIOFLEXNET_DATA_DIR", str(f))
    rc, out = _run(capsys, "train", "--profile", "smoke", "--out", tmp_path / "r")
    assert rc == 2 and not (tmp_path / "r").exists()
    _one_line_error(out, f"BIOFLEXNET_DATA_DIR={f} is a file")
    rc, out = _run(capsys, "data")
    assert rc == 2
    _one_line_error(out, "is a file, not a directory")


# --- `bioflexnet data`; the Makefile uses it ------------------------------------------------------------

def test_data_offline_without_shared_says_where_to_put_the_files(tmp_path, capsys):
    rc, out = _run(capsys, "data", "--data-dir", tmp_path / "empty", "--offline", "--no-prepare")
    assert rc == 2
    _one_line_error(out, "CIFAR-10 was not found", "Put the files of the official archive")


def test_data_prepares_with_the_shared_script_then_verifies(cifar_dir, tmp_path, capsys, monkeypatch):
    script = tmp_path / "prepare_cifar10.py"  # stands in for ../shared/...: links the real files in
    script.write_text("import os, sys\nos.makedirs(sys.argv[1], exist_ok=True)\n"
                      f"os.symlink({str(Path(cifar_dir).resolve() / 'cifar-10-batches-py')!r}, "
                      "os.path.join(sys.argv[1], 'cifar-10-batches-py'))\n")
    real_md5 = cifar_dir / "cifar-10-batches-py" / "test_batch"
    from training.datacmd import md5

    # pretend the test batch is the official one: the report must say so for that file only
    monkeypatch.setitem(cifar.OFFICIAL_MD5, "test_batch", md5(real_md5))
    rc, out = _run(capsys, "data", "--data-dir", tmp_path / "d", "--prepare-script", script)
    assert rc == 0, out.err
    assert "train: 50000 images" in out.out and "test: 10000 images" in out.out
    assert "test_batch: md5" in out.out and "matches the official release" in out.out
    assert out.out.count("matches the official release") == 1


def test_makefile_calls_bioflexnet_data_not_python_c():
    text = (ROOT / "Makefile").read_text()
    block = text[text.index("\ndata:"):].split("\n\n")[0]
    assert "bioflexnet data" in block and "python -c" not in block and "-c '" not in block


# --- truthful messages and help ---------------------------------------------------------------------------

def test_divergence_in_the_first_epoch_claims_no_checkpoint(tiny, tmp_path, capsys):
    data, _ = tiny
    run = tmp_path / "r"
    rc, out = _run(capsys, "train", "--profile", "smoke", "--out", run, "--data-dir", data, "--set",
                   "train.train_subset=0", "--set", "train.batch_size=10", "--set", "train.lr=1e30",
                   "--set", "train.warmup_epochs=0", "--set", "train.val_size=20")
    assert rc == 2 and not (run / "checkpoint.pt").exists()
    line = _one_line_error(out, "No epoch finished", "holds no checkpoint")
    assert "is intact" not in line


def test_resume_help_and_behaviour_use_the_checkpoint_config(tiny, tmp_path, capsys):
    data, run = tiny
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "config.json is used" not in text and "the config stored in that checkpoint" in text
    run = _copy_run(run, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["width"] = 3.0  # config.json is a copy for reading; resuming must not use it
    (run / "config.json").write_text(json.dumps(cfg))
    rc, out = _run(capsys, "train", "--out", run, "--resume", "--data-dir", data)
    assert rc == 0 and "nothing to resume" in out.out


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    rc, out = _run(capsys, "train", "--out", tmp_path / "r", "--resume")
    assert rc == 2
    _one_line_error(out, "no checkpoint.pt", "without --resume")


def test_readme_states_the_determinism_guarantee_exactly():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "The same seed, on the same machine with the same number of threads, gives the same numbers" in text
    assert "The same seed on the CPU gives the same numbers" not in text


def test_one_reproduce_per_root(tmp_path, capsys):
    root = tmp_path / "root"
    with RunLock(root, "bioflexnet reproduce (the first)"):
        rc, out = _run(capsys, "reproduce", "--profile", "smoke", "--out", root, "--data-dir", tmp_path / "no-data")
    assert rc == 2
    _one_line_error(out, f"pid {os.getpid()}", "bioflexnet reproduce (the first)")


# --- `train --continue`: what the reproduce workflow runs when it (re)starts a training ----------------

def test_continue_resumes_an_unfinished_run_and_restarts_a_changed_one(tiny, tmp_path, capsys):
    import torch

    data, run = tiny
    target = _copy_run(run, tmp_path)
    state = torch.load(target / "checkpoint.pt", weights_only=False)
    state.update(epoch=0, history=[], test=None)  # as if interrupted before its first epoch ended
    torch.save(state, target / "checkpoint.pt")
    rc, out = _run(capsys, "train", *TINY, "--out", target, "--data-dir", data, "--continue")
    assert rc == 0 and "continuing from epoch 0" in out.out
    assert not (target / "checkpoint.previous.pt").exists()
    # a changed config (what a new --set means): trained afresh, the old checkpoint kept beside it
    before = (target / "checkpoint.pt").read_bytes()
    rc, out = _run(capsys, "train", *TINY, "--set", "train.lr=0.05", "--out", target, "--data-dir", data,
                   "--continue")
    assert rc == 0 and "training afresh (its config differs)" in out.out
    assert (target / "checkpoint.previous.pt").read_bytes() == before
    assert torch.load(target / "checkpoint.pt", weights_only=False)["config"]["train"]["lr"] == 0.05


# --- issue 22: `train --continue` checks everything before it moves a file -----------------------------------

def test_continue_with_a_second_writer_moves_nothing(tiny, tmp_path, capsys):
    data, run = tiny
    target = _copy_run(run, tmp_path)
    before = (target / "checkpoint.pt").read_bytes()
    with RunLock(target, "the live run"):
        rc, out = _run(capsys, "train", *TINY, "--set", "train.lr=0.05", "--out", target, "--data-dir", data,
                       "--continue")
    assert rc == 2 and "training afresh" not in out.out
    _one_line_error(out, "the live run")
    assert (target / "checkpoint.pt").read_bytes() == before and not (target / "checkpoint.previous.pt").exists()


def test_continue_never_replaces_a_good_backup_with_a_corrupt_checkpoint(tiny, tmp_path, capsys):
    data, run = tiny
    target = _copy_run(run, tmp_path)
    good = (target / "checkpoint.pt").read_bytes()
    (target / "checkpoint.previous.pt").write_bytes(good)
    (target / "checkpoint.pt").write_bytes(good[:100])  # truncated
    # the data is missing: refused before any file is moved
    rc, out = _run(capsys, "train", *TINY, "--out", target, "--data-dir", tmp_path / "no-data", "--continue")
    assert rc == 2 and "training afresh" not in out.out
    assert (target / "checkpoint.pt").read_bytes() == good[:100]
    assert (target / "checkpoint.previous.pt").read_bytes() == good
    # with the data: trained afresh; the unreadable file is kept apart, the good backup untouched
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifar.urllib.request, "urlopen", _no_network)
        rc, out = _run(capsys, "train", *TINY, "--out", target, "--data-dir", data, "--continue")
    assert rc == 0 and "training afresh (it cannot be read)" in out.out and "checkpoint.unreadable.pt" in out.out
    assert (target / "checkpoint.previous.pt").read_bytes() == good
    assert (target / "checkpoint.unreadable.pt").read_bytes() == good[:100]
    assert (target / "checkpoint.pt").stat().st_size > 1000


def _no_network(*args, **kwargs):
    raise cifar.urllib.error.URLError("no network in this test")


def test_init_from_a_missing_run_fails_before_any_work(tmp_path, capsys):
    out_dir = tmp_path / "r"
    rc, out = _run(capsys, "train", *TINY, "--out", out_dir, "--init-from", tmp_path / "nope",
                   "--data-dir", tmp_path / "no-data")  # the data would fail later: the init-from is checked first
    assert rc == 2 and not out_dir.exists()
    _one_line_error(out, "train.init_from=", "does not exist")


def test_ctrl_c_before_the_first_checkpoint_does_not_advise_resume(tmp_path, capsys, monkeypatch):
    from training import trainer

    def interrupted(cfg, run_dir, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_run", interrupted)
    rc, out = _run(capsys, "train", *TINY, "--out", tmp_path / "r", "--data-dir", tmp_path)
    assert rc == 130 and "--resume" not in out.err and "no checkpoint to resume" in out.err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"x")
    rc, out = _run(capsys, "train", *TINY, "--out", tmp_path / "r", "--data-dir", tmp_path)
    assert rc == 130 and "--resume" in out.err


# --- issue 22: the data directory -----------------------------------------------------------------------------

def test_an_empty_data_variable_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIOFLEXNET_DATA_DIR", "")
    rc, out = _run(capsys, "train", *TINY, "--out", tmp_path / "r")
    assert rc == 2 and not (tmp_path / "r").exists()
    _one_line_error(out, "BIOFLEXNET_DATA_DIR is empty")


def test_a_failed_download_leaves_no_data_folder(tiny, tmp_path, capsys, monkeypatch):
    _, run = tiny
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BIOFLEXNET_DATA_DIR", raising=False)
    monkeypatch.setattr(cifar.urllib.request, "urlopen", _no_network)
    rc, out = _run(capsys, "evaluate", run)
    assert rc == 2 and not (tmp_path / "data").exists()
    _one_line_error(out, "download failed")


def test_reproduce_passes_the_data_dir_to_every_job_as_an_absolute_path(cifar_dir, tmp_path, capsys, monkeypatch):
    from bioflexnet import reproduce as rep

    seen = {}

    def fake_snakemake(cmd, env, pass_fds=()):
        seen.update(env=env, cmd=cmd)
        return 0

    monkeypatch.setattr(rep, "run_interruptible", fake_snakemake)
    (tmp_path / "data").symlink_to(Path(cifar_dir).resolve())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIOFLEXNET_DATA_DIR", "data")  # relative: the jobs run inside ROOT, elsewhere
    rc, _ = _run(capsys, "reproduce", "--profile", "smoke", "--out", "root", "--device", "cpu")
    assert rc == 0 and seen["env"]["BIOFLEXNET_DATA_DIR"] == str(tmp_path / "data")



# --- issue 22: more careless input, each refused in one line before any work ----------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["attack", "--seed", "99999999999999999999999"], "--seed: 99999999999999999999999 is out of range"),
    (["attack", "--pgd-max", "-1/255"], "pgd_max=-0.00392156862745098 is a perturbation bound in [0, 1]"),
    (["attack", "--fgsm-max", "nan"], "fgsm_max=nan is a perturbation bound in [0, 1]"),
    (["landscape", "--span", "inf"], "--span: 'inf' is not a finite number"),
    (["landscape", "--grid", "1"], "grid=1 must be >= 2"),
    (["sparsity", "--n-images", "0"], "--n-images: 0 is out of range"),
])
def test_analysis_options_are_checked_where_they_enter(argv, fragment, tiny, tmp_path, capsys):
    _, run = tiny
    out_file = tmp_path / "r.nc"
    try:
        rc = main([argv[0], str(run), *argv[1:], "--out", str(out_file)])
    except SystemExit as exc:  # argparse's usage error: one line, exit code 2, like every user error
        rc = exc.code
    assert rc == 2 and not out_file.exists()
    _one_line_error(capsys.readouterr(), fragment)


def test_repeated_seeds_add_up(tmp_path, capsys, monkeypatch):
    from bioflexnet import reproduce as rep

    monkeypatch.setattr(rep, "run_interruptible", lambda cmd, env, pass_fds=(): 0)
    rc, out = _run(capsys, "reproduce", "--profile", "smoke", "--seeds", "0", "--seeds", "1", "--dry-run",
                   "--out", tmp_path / "r")
    assert rc == 0 and "seeds [0, 1]" in out.out


def test_figures_for_a_named_notebook_without_its_inputs_fail(tmp_path, capsys):
    rc, out = _run(capsys, "figures", tmp_path, "--only", "fig4_robustness")
    assert rc == 2 and not list(tmp_path.rglob("*.ipynb"))
    _one_line_error(out, "notebook fig4_robustness needs robustness.nc")


def test_out_through_a_dangling_symlink_fails_before_any_work(tiny, tmp_path, capsys):
    _, run = tiny
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    rc, out = _run(capsys, "train", *TINY, "--out", link, "--data-dir", tmp_path / "no-data")
    assert rc == 2
    _one_line_error(out, f"{link} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist")
    rc, out = _run(capsys, "attack", run, "--out", link / "x.nc", "--data-dir", tmp_path / "no-data")
    assert rc == 2  # before the attack runs, not after
    _one_line_error(out, "is a symbolic link", "which does not exist")


def test_a_name_too_long_for_the_file_system_fails_before_any_work(tmp_path, capsys):
    name = "a" * 300
    rc, out = _run(capsys, "train", *TINY, "--out", tmp_path / name, "--data-dir", tmp_path / "no-data")
    assert rc == 2
    _one_line_error(out, "is 300 bytes long, this file system allows")


def test_a_full_disk_is_named_as_such(tiny, tmp_path, capsys, monkeypatch):
    """/dev/full fails every write with ENOSPC; torch.save reports it only as 'file write failed', so a
    failure with (all but) no space left on the file system is called a full disk too."""
    import torch

    from core import results
    from core.results import DiskFull, atomic_path

    with pytest.raises(DiskFull, match=r"no space left on device while writing .*x\.bin"):
        with atomic_path(tmp_path / "x.bin"):
            with open("/dev/full", "wb") as f:
                f.write(b"0" * 65536)
    assert not list(tmp_path.iterdir())  # no temp file left
    data, run = tiny
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, **kw: real_save(obj, "/dev/full", **kw))
    monkeypatch.setattr(results.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    target = tmp_path / "r"
    rc, out = _run(capsys, "train", *TINY, "--out", target, "--data-dir", data)
    assert rc == 2 and not (target / "checkpoint.pt").exists()
    _one_line_error(out, "no space left on device while writing", str(target / "checkpoint.pt"))


def test_a_deeply_nested_export_header_is_refused_in_one_line(tmp_path, capsys):
    from core.export_format import ExportError, read_export

    path = tmp_path / "run" / "export.npz"
    random_export(path, n_images=1)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "header"}
    with open(path, "wb") as f:
        np.savez_compressed(f, header=np.array("[" * 100_000 + "]" * 100_000), **arrays)
    with pytest.raises(ExportError, match="nests too deeply"):
        read_export(path)
    rc, out = _run(capsys, "sim", path.parent, "--images", "1")
    assert rc == 2
    _one_line_error(out, "nests too deeply")


def test_reproduce_on_a_full_disk_says_so(cifar_dir, tmp_path, capsys, monkeypatch):
    """Snakemake itself failing for space (its bookkeeping under ROOT/.snakemake) is named, not blamed on a job."""
    from bioflexnet import reproduce as rep
    from core import results

    def full(cmd, env, pass_fds=()):
        monkeypatch.setattr(results.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
        return 1

    monkeypatch.setattr(rep, "run_interruptible", full)
    root = tmp_path / "root"
    rc, out = _run(capsys, "reproduce", "--profile", "smoke", "--out", root, "--data-dir", cifar_dir,
                   "--device", "cpu")
    assert rc == 2 and "job's log" not in out.err
    _one_line_error(out, f"no space left on device under {root}")
