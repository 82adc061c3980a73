"""The training step does not read the device; a non-finite loss is still caught at its exact step."""
from __future__ import annotations

import pytest

from core.config import make_config
from training import trainer as trainer_mod
from training.runs import CHECKPOINT
from training.trainer import TrainingDiverged, train_run


def test_nan_in_the_first_epoch_names_the_step_and_says_no_checkpoint_exists(tmp_path, fake_cifar, monkeypatch):
    cfg = make_config("smoke", mode="ann", flex=True,
                      overrides=["train.batch_size=20", "train.eval_batch_size=30", "train.log_every=3",
                                 "train.val_size=20"])
    real_ce = trainer_mod.F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target, **kw):
        loss = real_ce(logits, target, **kw)
        if "reduction" in kw:  # evaluation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(trainer_mod.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 2 .*holds no checkpoint"):
        train_run(cfg, tmp_path / "nan", data_dir=fake_cifar)
    assert calls["n"] == 3  # read once per log interval: the step after the NaN ran before the check
    assert not (tmp_path / "nan" / CHECKPOINT).exists()
