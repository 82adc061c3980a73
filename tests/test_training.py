"""Training contracts on real CIFAR-10: beats chance, reloads, resumes, is deterministic, stops on NaN."""
import numpy as np
import pytest
import torch

from core.config import make_config
from training import trainer as trainer_mod
from training.evaluation import evaluate_run
from training.runs import RunDirError, load_checkpoint, load_model, read_metrics, save_checkpoint
from training.trainer import TrainingDiverged, lr_at, train_run

SMALL = ["train.train_subset=1024", "train.epochs=2"]


def test_lr_schedule_is_triangular():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.02


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cifar_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "flex-stbp"
    metrics = train_run(make_config("smoke", mode="stbp", flex=True), run_dir, data_dir=cifar_dir)
    return run_dir, metrics


def test_smoke_run_beats_chance_clearly(smoke_run):
    _, metrics = smoke_run
    assert float(metrics.val_accuracy[-1]) > 0.2  # chance is 0.1
    assert metrics.firing_rate.dims == ("epoch", "layer")
    assert np.all((metrics.conv_ratio.values > 0) & (metrics.conv_ratio.values < 1))


def test_save_reload_gives_the_same_accuracy(smoke_run, cifar_dir):
    run_dir, metrics = smoke_run
    ds = evaluate_run(run_dir, data_dir=cifar_dir)
    assert float(ds.test_accuracy) == pytest.approx(float(metrics.test_accuracy), abs=1e-12)
    assert (run_dir / "evaluation.nc").is_file() and "git_commit" in ds.attrs
    saved = read_metrics(run_dir)
    assert float(saved.val_accuracy[-1]) == float(metrics.val_accuracy[-1])


def test_checkpoint_keys_are_plain_module_names(smoke_run):
    state = load_checkpoint(smoke_run[0])
    assert all(not k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    assert state["config"]["profile"] == "smoke"


@pytest.mark.parametrize("mode, flex", [("ann", False), ("hybrid", True)])
def test_same_seed_gives_the_same_numbers(tmp_path, cifar_dir, mode, flex):
    cfg = make_config("smoke", mode=mode, flex=flex, overrides=SMALL[:1])
    a = train_run(cfg, tmp_path / "a", data_dir=cifar_dir)
    b = train_run(cfg, tmp_path / "b", data_dir=cifar_dir)
    assert float(a.val_loss[-1]) == float(b.val_loss[-1])
    sa, sb = load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, cifar_dir, monkeypatch):
    cfg = make_config("smoke", mode="stbp", flex=True, overrides=SMALL)
    full = train_run(cfg, tmp_path / "full", data_dir=cifar_dir)

    calls = {"n": 0}
    real_evaluate = trainer_mod.evaluate

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # during epoch 2, before its checkpoint
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "resumed", data_dir=cifar_dir)
    assert load_checkpoint(tmp_path / "resumed")["epoch"] == 1
    monkeypatch.setattr(trainer_mod, "evaluate", real_evaluate)
    resumed = train_run(cfg, tmp_path / "resumed", data_dir=cifar_dir, resume=True)
    np.testing.assert_array_equal(resumed.val_loss.values, full.val_loss.values)
    np.testing.assert_array_equal(resumed.train_loss.values, full.train_loss.values)


def test_resume_with_another_config_is_refused(tmp_path, cifar_dir):
    cfg = make_config("smoke", mode="ann", flex=False, overrides=["train.train_subset=512"])
    train_run(cfg, tmp_path / "r", data_dir=cifar_dir)
    other = make_config("smoke", mode="ann", flex=False, overrides=["train.train_subset=512", "train.lr=0.3"])
    with pytest.raises(RunDirError, match="train.lr"):
        train_run(other, tmp_path / "r", data_dir=cifar_dir, resume=True)
    with pytest.raises(RunDirError, match="already holds a run"):
        train_run(cfg, tmp_path / "r", data_dir=cifar_dir)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cifar_dir, poison_training_loss):
    cfg = make_config("smoke", mode="ann", flex=True, overrides=SMALL)
    poison_training_loss(16 + 3)  # epoch 2 (16 steps each), step 3
    with pytest.raises(TrainingDiverged, match="epoch 2, step 3"):
        train_run(cfg, tmp_path / "nan", data_dir=cifar_dir)
    assert load_checkpoint(tmp_path / "nan")["epoch"] == 1
    assert read_metrics(tmp_path / "nan").sizes["epoch"] == 1
    load_model(tmp_path / "nan")  # the kept checkpoint still loads


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, smoke_run):
    run_dir = tmp_path / "bad"
    run_dir.mkdir()
    with pytest.raises(RunDirError, match="no checkpoint.pt"):
        load_checkpoint(run_dir)
    good = (smoke_run[0] / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(RunDirError, match="corrupt or truncated"):
        load_checkpoint(run_dir)
    state = load_checkpoint(smoke_run[0])
    state["format"] = 99
    save_checkpoint(run_dir, {k: v for k, v in state.items() if k != "format"} | {"config": state["config"]})
    tampered = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    tampered["format"] = 99
    torch.save(tampered, run_dir / "checkpoint.pt")
    with pytest.raises(RunDirError, match="format 99"):
        load_checkpoint(run_dir)
