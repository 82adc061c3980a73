"""Figure notebooks run under papermill on result files and write their figures."""
import json
from pathlib import Path

import nbformat
import pytest

from analysis.figures import collect_runs
from analysis.notebooks import NOTEBOOK_DIR, NOTEBOOKS, NotebookError, run_notebooks
from core.config import make_config
from core.results import write_dataset
from core.variants import Variant
from training.trainer import metrics_dataset


def _fake_metrics(root: Path) -> None:
    for variant in ("vgg-ann", "flex-ann", "flex-stbp"):
        v = Variant.parse(variant)
        cfg = make_config("smoke", mode=v.mode.value, flex=v.flex)
        for seed in (0, 1):
            history = [{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.2 * e + 0.01 * seed,
                        "val_loss": 1.9 / e, "val_accuracy": 0.25 * e, "lr": 0.1, "train_time": 1.0,
                        "eval_time": 0.5, "firing_rate": {"conv1": 0.1}, "conv_ratio": {"conv1": 0.5}}
                       for e in (1, 2, 3)]
            ds = metrics_dataset(history, ["conv1"], cfg, {"config": json.dumps(cfg.to_dict()), "seed": str(seed)})
            write_dataset(ds, root / variant / f"seed{seed}" / "metrics.nc")


def test_every_notebook_has_one_parameters_cell():
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "root =" in tagged[0].source and "out_dir =" in tagged[0].source
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed clean


def test_collect_runs_stacks_variants_and_seeds(tmp_path):
    _fake_metrics(tmp_path)
    ds = collect_runs(tmp_path, "metrics.nc")
    assert ds.val_accuracy.dims == ("variant", "seed", "epoch")
    assert sorted(ds.variant.values) == ["flex-ann", "flex-stbp", "vgg-ann"] and list(ds.seed.values) == [0, 1]
    with pytest.raises(FileNotFoundError, match="bioflexnet reproduce"):
        collect_runs(tmp_path, "robustness.nc")


def test_fig3_notebook_writes_its_figure(tmp_path):
    _fake_metrics(tmp_path)
    done = run_notebooks(tmp_path, only=["fig3_training"])
    assert done == [tmp_path / "figures" / "fig3_training.ipynb"]
    png = tmp_path / "figures" / "fig3_training.png"
    assert png.stat().st_size > 10_000
    assert not list((tmp_path / "figures").glob(".*tmp*"))


def test_missing_inputs_skip_the_notebook_unless_it_is_named(tmp_path, capsys):
    assert run_notebooks(tmp_path) == []  # all of them: each without inputs is skipped, saying so
    assert "skipping fig3_training" in capsys.readouterr().out
    with pytest.raises(NotebookError, match="notebook fig4_robustness needs robustness.nc"):
        run_notebooks(tmp_path, only=["fig4_robustness"])  # asked for by name (issue 22: exit 0, no figure)
