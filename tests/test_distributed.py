"""Data-parallel training (torchrun, gloo on the CPU) equals one process with the same global batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import write_fake_cifar
from training.runs import load_checkpoint, read_metrics

TRAIN_ARGS = ["--profile", "smoke", "--mode", "stbp", "--flex", "--device", "cpu",
              "--set", "train.batch_size=20", "--set", "train.epochs=2", "--set", "train.eval_batch_size=16",
              "--set", "train.train_subset=60", "--set", "train.lr=0.02", "--set", "train.log_every=2",
              "--set", "model.plasticity_rate=0.05", "--set", "train.val_size=20"]
# A few steps at a moderate learning rate: the two runs differ by float rounding (sums over ranks in
# another order), which a spiking net amplifies step after step (one flipped spike); 6 steps stay within 1e-4.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out, data, nproc: int, extra=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIOFLEXNET_DATA_DIR": str(data)}
    cli = ["-m", "bioflexnet.cli", "train", *TRAIN_ARGS, "--out", str(out), "--data-dir", str(data), *extra]
    if nproc == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *cli]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    data = write_fake_cifar(tmp_path / "data", n_train_per_batch=24)  # subset of 60: 3 steps of 20 per epoch
    _train(tmp_path / "one", data, 1)
    out = _train(tmp_path / "two", data, 2)
    assert out.stdout.count("epoch 2/2") == 1  # rank 0 alone reports and writes

    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert set(one["model"]) == set(two["model"])  # plain module names, no DDP prefix
    for key, ref in one["model"].items():
        got = two["model"][key]
        if ref.dtype.is_floating_point:
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
        else:
            assert torch.equal(got, ref), key
    assert any(k.endswith("plastic_bias") and one["model"][k].abs().sum() > 0 for k in one["model"])
    m1, m2 = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(m2[name].values, m1[name].values, rtol=1e-4, atol=1e-5, err_msg=name)

    # --resume under torchrun: all epochs are done, so it reports that and changes nothing
    again = _train(tmp_path / "two", data, 2, ["--resume"])
    assert "nothing to resume" in again.stdout
    assert load_checkpoint(tmp_path / "two")["epoch"] == 2


@pytest.mark.parametrize("option", ["train.bf16=true", "train.channels_last=true"])
def test_speed_options_train(tmp_path, option):
    from core.config import make_config
    from training.trainer import train_run

    data = write_fake_cifar(tmp_path / "data")
    cfg = make_config("smoke", mode="stbp", flex=True,
                      overrides=["train.batch_size=20", "train.eval_batch_size=30", "train.val_size=20", option])
    metrics = train_run(cfg, tmp_path / "run", data_dir=data)
    assert np.isfinite(metrics.train_loss.values).all() and np.isfinite(metrics.val_loss.values).all()
