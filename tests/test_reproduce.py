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


def test_a_second_run_reuses_finished_work(smoke_root, cifar_dir, capfd):
    before = (smoke_root / "flex-stbp" / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["reproduce", "--profile", "smoke", "--out", str(smoke_root), "--data-dir", str(cifar_dir)]) == 0
    out = "".join(capfd.readouterr())
    assert "Nothing to be done" in out and "rule train" not in out
    assert (smoke_root / "flex-stbp" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == before


def test_a_changed_parameter_reruns_what_depends_on_it(smoke_root, capfd):
    """--set changes every training's config: the dry run lists all six trainings again, and only them
    and what follows (nothing is run)."""
    assert main(["reproduce", "--profile", "smoke", "--out", str(smoke_root), "--dry-run",
                 "--set", "train.lr=0.05"]) == 0
    out = "".join(capfd.readouterr())  # snakemake logs to stderr
    assert "train                  6" in out.replace("\t", " ") or out.count("rule train:") == 6


def test_the_paper_dry_run_lists_every_job(tmp_path, capfd):
    root = tmp_path / "paper"
    assert main(["reproduce", "--profile", "paper", "--seeds", "0", "1", "2", "--out", str(root), "--dry-run"]) == 0
    out = "".join(capfd.readouterr())  # snakemake logs to stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["train"] == 18 and counts["analyse"] == 54 and counts["export"] == 2 and counts["figure"] == 6
    assert counts["simulate"] == 11 and counts["combine_claims"] == 1
    assert not root.exists()  # a dry run writes nothing


def test_the_slurm_profile_dry_run(tmp_path, capfd):
    assert main(["reproduce", "--profile", "paper", "--seeds", "0", "--out", str(tmp_path / "p"), "--dry-run",
                 "--cluster", "slurm"]) == 0
    out = "".join(capfd.readouterr())  # snakemake logs to stderr
    assert "profiles/slurm" in out and "rule train:" in out
