"""The command line: one-line errors with exit code 2, and a working train/evaluate round trip."""
import json

import pytest

from bioflexnet.cli import main


def _run(capsys, *argv):
    rc = main(list(argv))
    return rc, capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--set", "model.time_steps=0"], "model.time_steps=0 must be >= 1"),
    (["--set", "model.width=0"], "must be > 0"),
    (["--set", "model.surrogate=magic"], "choose one of ['atan', 'sigmoid', 'rectangle']"),
])
def test_bad_values_exit_2_with_a_clear_message(capsys, tmp_path, argv, message):
    rc, out = _run(capsys, "train", "--profile", "smoke", "--out", str(tmp_path / "r"), *argv)
    assert rc == 2 and message in out.err
    assert not (tmp_path / "r").exists()  # nothing written


def test_unknown_choice_lists_valid_ones(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--mode", "snn", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "choose from" in capsys.readouterr().err


def test_evaluate_without_a_run(capsys, tmp_path):
    rc, out = _run(capsys, "evaluate", str(tmp_path))
    assert rc == 2 and "no checkpoint.pt" in out.err


def test_missing_data_is_one_clear_line(capsys, tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    rc, out = _run(capsys, "train", "--profile", "smoke", "--out", str(tmp_path / "r"),
                   "--data-dir", str(tmp_path / "empty"))
    assert rc == 2 and "could not be downloaded" in out.err


def test_train_then_evaluate(capsys, tmp_path, cifar_dir):
    run = tmp_path / "run"
    rc, _ = _run(capsys, "train", "--profile", "smoke", "--mode", "ann", "--no-flex", "--seed", "2",
                 "--out", str(run), "--data-dir", str(cifar_dir), "--set", "train.train_subset=512")
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["seed"] == 2 and cfg["model"]["flex"] is False and cfg["train"]["train_subset"] == 512
    rc, out = _run(capsys, "evaluate", str(run), "--data-dir", str(cifar_dir))
    assert rc == 0 and "test accuracy" in out.out and (run / "evaluation.nc").is_file()
    rc, out = _run(capsys, "train", "--out", str(run), "--resume", "--data-dir", str(cifar_dir))
    assert rc == 0 and "nothing to resume" in out.out
