"""End to end: `bioflexnet reproduce --profile smoke` trains six variants, simulates, analyses, plots."""
import pytest

from bioflexnet.cli import main
from core.results import read_dataset


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory, cifar_dir):
    root = tmp_path_factory.mktemp("reproduce") / "smoke"
    assert main(["reproduce", "--profile", "smoke", "--out", str(root), "--data-dir", str(cifar_dir)]) == 0
    return root


def test_every_variant_is_trained_and_beats_chance(smoke_root):
    summary = read_dataset(smoke_root / "training_summary.nc")
    assert sorted(summary.variant.values) == sorted(f"{f}-{m}" for f in ("vgg", "flex") for m in ("ann", "hybrid", "stbp"))
    assert (summary.test_accuracy > 0.15).all()


def test_analyses_and_simulation_are_combined(smoke_root):
    for name in ("robustness.nc", "sparsity.nc", "landscape.nc"):
        ds = read_dataset(smoke_root / name)
        assert ds.sizes["variant"] == 6 and "git_commit" in ds.attrs
    sim = read_dataset(smoke_root / "sim_summary.nc")
    assert float(sim.spike_agreement.min()) == 1.0  # exact mode equals PyTorch
    assert float(sim.class_agreement.sel(simulation="exact").min()) == 1.0


def test_every_figure_is_made(smoke_root):
    for name in ("fig3_training", "fig4_robustness", "fig5_sparsity", "fig6_landscape", "fidelity"):
        assert (smoke_root / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (smoke_root / "figures" / f"{name}.ipynb").is_file()


def test_a_second_run_reuses_finished_work(smoke_root, cifar_dir, capsys):
    before = (smoke_root / "flex-stbp" / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["reproduce", "--profile", "smoke", "--out", str(smoke_root), "--data-dir", str(cifar_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("already trained") == 6 and "up to date, reused" in out
    assert (smoke_root / "flex-stbp" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == before
