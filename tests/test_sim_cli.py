"""`bioflexnet export` + `bioflexnet sim` on a trained smoke run, and the reproduce workflow's simulation jobs."""
import shutil

import numpy as np
import pytest

from bioflexnet.cli import main
from core.results import read_dataset

pytestmark = pytest.mark.brian


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cifar_dir):
    """A flex-stbp smoke model trained on CIFAR-10 (seconds)."""
    run = tmp_path_factory.mktemp("smoke") / "flex-stbp"
    assert main(["train", "--profile", "smoke", "--mode", "stbp", "--flex", "--out", str(run),
                 "--data-dir", str(cifar_dir), "--device", "cpu"]) == 0
    return run


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def test_export_then_sim_reproduces_the_trained_smoke_model(smoke_run, cifar_dir, capsys, tmp_path):
    rc, out = _run(capsys, "export", smoke_run, "--images", 12, "--data-dir", cifar_dir)
    assert rc == 0 and "export.npz" in out.out
    rc, out = _run(capsys, "sim", smoke_run, "--out", tmp_path / "sim")  # all 12 exported images
    assert rc == 0, out.err
    ds = read_dataset(tmp_path / "sim" / "sim.nc")
    assert list(ds.layer.values) == ["conv1", "down1", "conv2", "down2", "conv3", "down3"]
    assert (ds.spike_agreement.values == 1.0).all(), ds.spike_agreement.values
    assert float(ds.class_agreement) == 1.0 and float(ds.class_agreement_model) == 1.0
    assert (ds.firing_rate.values > 0.01).all()  # a silent network would agree trivially
    assert "class agreement: 1.0000" in out.out and "conv3" in out.out


@pytest.mark.parametrize("argv, message", [
    (["--images", "500"], "holds 12 reference images"),
    (["--images", "4", "--mode", "biophysical", "--ticks", "0"], "ticks=0 must be >= 1"),
    (["--images", "4", "--ticks", "3"], "exact mode runs one tick per PyTorch step"),
])
def test_bad_sim_options_exit_2_without_writing(smoke_run, capsys, tmp_path, argv, message):
    if not (smoke_run / "export.npz").exists():
        assert main(["export", str(smoke_run), "--images", "12"]) == 0
    rc, out = _run(capsys, "sim", smoke_run, "--out", tmp_path / "o", *argv)
    assert rc == 2 and message in out.err
    assert not (tmp_path / "o" / "sim.nc").exists()


def test_sim_without_an_export_says_how_to_make_one(capsys, tmp_path):
    rc, out = _run(capsys, "sim", tmp_path)
    assert rc == 2 and "bioflexnet export RUN_DIR" in out.err


def test_export_of_a_missing_run_is_a_clear_error(capsys, tmp_path):
    rc, out = _run(capsys, "export", tmp_path / "nothing")
    assert rc == 2 and "does not exist" in out.err


def test_the_plans_simulations_and_their_summary(smoke_run, cifar_dir, tmp_path, capsys):
    """What the reproduce workflow runs for a flex-stbp run: every sim job of the plan, then `combine sim`."""
    from bioflexnet.plan import Plan

    root = tmp_path / "root"
    run = shutil.copytree(smoke_run, root / "flex-stbp" / "seed0", ignore=shutil.ignore_patterns("sim", "export.npz"))
    plan = Plan(profile="smoke", data_dir=str(cifar_dir))
    assert main(["export", str(run), "--images", str(plan.sim_plan.images), "--data-dir", str(cifar_dir)]) == 0
    jobs = plan.sim_jobs("flex-stbp", 0)
    assert list(jobs) == ["exact", "exact_plasticity", "biophysical_k1", "biophysical_k4", "biophysical_pulse_k4"]
    files = []
    for job, args in jobs.items():
        assert main(["sim", str(run), "--out", str(run / "sim" / job), *args]) == 0, job
        files.append(str(run / "sim" / job / "sim.nc"))
    capsys.readouterr()
    assert main(["combine", "sim", str(root), "--files", *files]) == 0
    assert "Brian2 fidelity" in capsys.readouterr().out
    summary = read_dataset(root / "sim_summary.nc")
    assert summary.class_agreement.dims == ("variant", "seed", "simulation")  # like every combined result
    assert list(summary.simulation.values) == list(jobs)
    assert float(summary.class_agreement.sel(variant="flex-stbp", seed=0, simulation="exact")) == 1.0
    assert (summary.spike_agreement.values == 1.0).all()
    plastic = read_dataset(run / "sim" / "exact_plasticity" / "sim.nc")
    assert plastic.attrs["plasticity"] == "True"
    bias = plastic["plastic_bias_conv1"].values
    assert not np.allclose(bias[-1, -1], bias[0, 0])  # the mask bias moved online
    assert read_dataset(run / "sim" / "biophysical_k4" / "sim.nc").attrs["synapse"] == "delta"
    assert read_dataset(run / "sim" / "biophysical_pulse_k4" / "sim.nc").attrs["synapse"] == "pulse"
    conv = read_dataset(root / "convergence.nc")
    assert conv.class_agreement.dims == ("variant", "seed", "ticks") and list(conv.ticks.values) == [1, 4]
