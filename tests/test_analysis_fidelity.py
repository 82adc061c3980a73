"""analysis.fidelity: the tick-model fidelity table of a trained run (issue 19)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import fidelity
from core.config import make_config
from core.results import read_dataset
from training.data import Split, load_split, to_float
from training.runs import load_model

N_IMAGES = 6


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke stbp model trained for a few steps on a tiny fake CIFAR-10."""
    from conftest import write_fake_cifar
    from training.trainer import train_run

    root = tmp_path_factory.mktemp("fidelity")
    data = write_fake_cifar(root / "data")
    overrides = ["train.val_size=10", "train.train_subset=64", "train.batch_size=16", "train.eval_batch_size=32"]
    cfg = make_config("smoke", mode="stbp", flex=True, overrides=overrides)
    train_run(cfg, root / "run", data_dir=data, progress=False)
    return root / "run", data


def _split(data) -> Split:
    test = load_split("test", data)
    return Split(test.images[:N_IMAGES], test.labels[:N_IMAGES])


def test_resolutions_hold_the_trained_k_its_multiples_16_and_the_reference():
    assert fidelity.resolutions(1) == [1, 2, 4, 16, 64]
    assert fidelity.resolutions(4) == [4, 8, 16, 64]
    assert fidelity.resolutions(8, reference=32) == [8, 16, 32]


def test_trained_resolution_agrees_with_itself_and_matches_the_model(smoke_run):
    run, data = smoke_run
    split = _split(data)
    ds = fidelity.measure_run(run, split, ticks=[1, 2], reference=2)
    assert ds.class_agreement.sel(substeps=1) == 1.0
    assert ds.reference_agreement.sel(substeps=2) == 1.0
    np.testing.assert_array_equal(ds.spike_agreement.sel(substeps=1).values, 1.0)
    for name in ("class_agreement", "reference_agreement", "accuracy", "spike_agreement", "firing_rate"):
        assert ds[name].attrs["units"] and ds[name].attrs["long_name"]
        assert ((ds[name] >= 0) & (ds[name] <= 1)).all()
    model, _ = load_model(run)
    with torch.no_grad():  # the numbers the module reports, computed directly
        images = to_float(split.images)
        k1, k2 = model.run(images), model.run(images, ticks=2)
    cls1, cls2 = k1.logits.argmax(1).numpy(), k2.logits.argmax(1).numpy()
    assert float(ds.class_agreement.sel(substeps=2)) == pytest.approx(np.mean(cls1 == cls2))
    assert float(ds.accuracy.sel(substeps=1)) == pytest.approx(np.mean(cls1 == split.labels.numpy()))
    same = [(a.output == b.output).float().mean().item() for a, b in zip(k1.layers, k2.layers)]
    np.testing.assert_allclose(ds.spike_agreement.sel(substeps=2).values, same)


def test_chunking_does_not_change_the_numbers(smoke_run):
    run, data = smoke_run
    split = _split(data)
    whole = fidelity.measure_run(run, split, ticks=[1, 2], reference=2)
    chunked = fidelity.measure_run(run, split, ticks=[1, 2], reference=2, tick_batch=4)  # one image per chunk at S=2
    for name in ("class_agreement", "accuracy", "spike_agreement", "firing_rate"):
        np.testing.assert_allclose(chunked[name].values, whole[name].values)


def test_margin_split_partitions_the_images():
    logits = np.array([[3.0, 0.0], [1.0, 0.9], [0.0, 2.0], [0.5, 0.4]])
    np.testing.assert_allclose(fidelity.margins(logits), [3.0, 0.1, 2.0, 0.1])


def test_missing_trained_k_or_reference_is_refused(smoke_run):
    run, data = smoke_run
    model, _ = load_model(run)
    with pytest.raises(fidelity.FidelityError, match="trained K"):
        fidelity.measure_model(model, _split(data), [2, 4], trained_ticks=1, reference=4)
    with pytest.raises(fidelity.FidelityError, match="reference"):
        fidelity.measure_model(model, _split(data), [1, 2], trained_ticks=1, reference=4)


@pytest.mark.parametrize("pair", ["novalue", "=dir", "label="])
def test_malformed_run_pairs_are_refused(pair):
    with pytest.raises(fidelity.FidelityError, match="LABEL=RUN_DIR"):
        fidelity.parse_runs([pair])


def test_cli_writes_a_table_and_merges_earlier_output(smoke_run, tmp_path, capsys):
    run, data = smoke_run
    common = ["--images", "3", "--reference", "2", "--data-dir", str(data)]
    fidelity.main([str(tmp_path / "a.nc"), f"a={run}", *common])
    fidelity.main([str(tmp_path / "b.nc"), f"b={run}", "--include", str(tmp_path / "a.nc"), *common])
    out = capsys.readouterr().out
    assert "| a | 2 | 1 | 1 | 1.000 |" in out and "| b | 2 | 1 | 2 |" in out
    ds = read_dataset(tmp_path / "b.nc")
    assert list(ds.config.values) == ["a", "b"]
    assert ds.class_agreement.dims == ("config", "substeps") and ds.spike_agreement.dims[-1] == "layer"
    assert ds.class_agreement.attrs["units"] == "1" and "ticks per step" in ds.substeps.attrs["long_name"]
    assert ds.attrs["n_images"] == 3 and list(ds.variant.values) == ["flex-stbp", "flex-stbp"]
    np.testing.assert_allclose(ds.class_agreement.sel(config="a").values, ds.class_agreement.sel(config="b").values)


def test_cli_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        fidelity.main(["--help"])
    assert exc.value.code == 0 and "LABEL=RUN_DIR" in capsys.readouterr().out


def test_figure_draws_one_line_per_configuration(smoke_run, tmp_path):
    from analysis.figures import plot_fidelity_levers

    run, data = smoke_run
    common = ["--images", "3", "--reference", "2", "--data-dir", str(data)]
    fidelity.main([str(tmp_path / "f.nc"), f"a={run}", f"b={run}", *common])
    fig = plot_fidelity_levers(read_dataset(tmp_path / "f.nc"))
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels == ["a (T=2, K=1)", "b (T=2, K=1)"]
