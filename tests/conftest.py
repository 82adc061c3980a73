"""Shared fixtures: the CIFAR-10 directory and a tiny fake dataset in the standard layout."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

# the training seed of the shared test models (analysis_runs); tests must hold for any of them
TEST_MODEL_SEED = int(os.environ.get("BIOFLEXNET_TEST_SEED", "0"))


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """Directory holding the real ``cifar-10-batches-py`` (``make test`` and ``.ci/run`` prepare it)."""
    root = Path(os.environ.get("BIOFLEXNET_DATA_DIR", "data"))
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.fail(f"CIFAR-10 not found in {root}; run `make data` (or set BIOFLEXNET_DATA_DIR).")
    return root


def write_fake_cifar(root: Path, n_train_per_batch: int = 20, n_test: int = 30, seed: int = 0) -> Path:
    """Write a tiny dataset in the official layout (pickled dicts, uint8 [N, 3072])."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train_per_batch
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.fixture
def poison_training_loss(monkeypatch):
    """``arm(n)`` makes the n-th training loss (1-based) NaN; evaluation losses pass. Returns the call counter."""
    from training import trainer as trainer_mod

    real_ce = trainer_mod.F.cross_entropy
    calls = {"n": 0}

    def arm(at: int) -> dict:
        def poisoned(logits, target, **kw):
            loss = real_ce(logits, target, **kw)
            if "reduction" in kw:  # evaluation
                return loss
            calls["n"] += 1
            return loss * float("nan") if calls["n"] == at else loss

        monkeypatch.setattr(trainer_mod.F, "cross_entropy", poisoned)
        return calls

    return arm


@pytest.fixture
def fake_cifar(tmp_path: Path) -> Path:
    return write_fake_cifar(tmp_path / "data")


@pytest.fixture(scope="session")
def analysis_runs(tmp_path_factory, cifar_dir) -> dict[str, Path]:
    """Smoke runs for the analysis tests, trained once per session in the ``reproduce`` layout.

    ``{"vgg-stbp": ROOT/vgg-stbp/seed0, "vgg-ann": ROOT/vgg-ann/seed0}``; the ANN run is the
    other's twin for the transfer attack. Tests that write into a run directory copy it first.
    ``BIOFLEXNET_TEST_SEED=N`` trains them with seed N instead of 0 (the directories keep the name
    ``seed0``): the tests must pass for every seed and thread count, never by one model's luck.
    """
    from core.config import make_config
    from training.trainer import train_run

    root = tmp_path_factory.mktemp("analysis_runs")
    runs = {}
    for mode in ("stbp", "ann"):
        cfg = make_config("smoke", mode=mode, flex=False, seed=TEST_MODEL_SEED)
        runs[cfg.variant] = root / cfg.variant / "seed0"
        train_run(cfg, runs[cfg.variant], data_dir=cifar_dir, progress=False)
    return runs
