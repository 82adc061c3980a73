"""The training step does not read the device; a non-finite loss is still caught at its exact step."""
from __future__ import annotations

import pytest

from core.config import make_config
from training.runs import CHECKPOINT
from training.trainer import TrainingDiverged, train_run


def test_nan_in_the_first_epoch_names_the_step_and_says_no_checkpoint_exists(tmp_path, fake_cifar,
                                                                             poison_training_loss):
    cfg = make_config("smoke", mode="ann", flex=True,
                      overrides=["train.batch_size=20", "train.eval_batch_size=30", "train.log_every=3",
                                 "train.val_size=20"])
    calls = poison_training_loss(2)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 2 .*holds no checkpoint"):
        train_run(cfg, tmp_path / "nan", data_dir=fake_cifar)
    assert calls["n"] == 3  # read once per log interval: the step after the NaN ran before the check
    assert not (tmp_path / "nan" / CHECKPOINT).exists()
