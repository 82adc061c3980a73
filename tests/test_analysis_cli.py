"""The attack / sparsity / landscape commands, their errors, the reproduce stage and the combine helper."""
import shutil

import numpy as np
import pytest
import xarray as xr

import analysis.robustness
from core.combine import combine_files, combine_runs
from bioflexnet.cli import main
from core.results import read_dataset, write_dataset

FAST = ["--n-images", "24", "--batch-size", "24"]
FAST_ATTACK = FAST + ["--n-epsilons", "2", "--pgd-max", "8/255", "--pgd-steps", "2", "--apgd-steps", "2",
                      "--square-queries", "5"]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


@pytest.fixture
def runs(analysis_runs, tmp_path):
    """Writable copies of the session's smoke runs, in the reproduce layout."""
    root = tmp_path / "runs"
    return {v: shutil.copytree(d, root / v / "seed0") for v, d in analysis_runs.items()}


def test_commands_write_their_results(capsys, runs, cifar_dir):
    run = runs["vgg-stbp"]
    rc, out = _run(capsys, "attack", run, "--data-dir", cifar_dir, *FAST_ATTACK)  # twin found at ../../vgg-ann/seed0
    assert rc == 0, out.err
    assert "sanity check:" in out.out and "worst-case accuracy at eps=8/255" in out.out
    assert (run / "robustness.nc").is_file()
    ds = read_dataset(run / "robustness.nc")
    assert ds.attrs["variant"] == "vgg-stbp" and "vgg-ann/seed0" in ds.attrs["transfer_source"]
    assert ds.attrs["checkpoint_sha256"] and ds.sizes["level"] == 2 and ds.sizes["sample"] == 24
    rc, out = _run(capsys, "sparsity", run, "--data-dir", cifar_dir, *FAST, "--raster-images", "2")
    assert rc == 0 and "energy estimate" in out.out and (run / "sparsity.nc").is_file()
    rc, out = _run(capsys, "landscape", run, "--data-dir", cifar_dir, *FAST, "--grid", "2", "--hessian-iterations", "2")
    assert rc == 0 and "top Hessian eigenvalue" in out.out
    assert read_dataset(run / "landscape.nc").sizes["alpha"] == 2


def test_out_option_keeps_read_only_runs_clean(capsys, analysis_runs, cifar_dir, tmp_path):
    run = analysis_runs["vgg-ann"]
    rc, _ = _run(capsys, "attack", run, "--data-dir", cifar_dir, *FAST_ATTACK, "--attacks", "fgsm", "pgd",
                 "--out", tmp_path / "r.nc")
    assert rc == 0 and (tmp_path / "r.nc").is_file() and not (run / "robustness.nc").exists()


@pytest.mark.parametrize("argv, message", [
    (["attack", "{empty}"], "no checkpoint.pt"),
    (["sparsity", "{empty}"], "no checkpoint.pt"),
    (["attack", "{run}", "--pgd-max", "1.5"], "pgd_max=1.5 is a perturbation bound in [0, 1]"),
    (["attack", "{run}", "--fgsm-max", "-0.2"], "fgsm_max=-0.2 is a perturbation bound in [0, 1]"),
    (["landscape", "{run}", "--grid", "1"], "grid=1 must be >= 2"),
    (["attack", "{run}", "--twin", "{empty}"], "holds no checkpoint.pt"),
    (["attack", "{run}", "--twin", "{run}"], "is not the ANN twin"),
])
def test_bad_input_is_one_clear_line(capsys, runs, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", run=runs["vgg-stbp"]) for a in argv]
    rc, out = _run(capsys, *argv)
    assert rc == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err


def test_unknown_attack_lists_the_valid_ones(capsys, runs):
    with pytest.raises(SystemExit) as exc:
        main(["attack", str(runs["vgg-stbp"]), "--attacks", "cw"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'cw'" in err and all(f"'{a}'" in err for a in ("fgsm", "pgd", "spgd", "transfer", "square"))


def test_interrupted_sweep_leaves_no_file(capsys, runs, cifar_dir, monkeypatch):
    run = runs["vgg-stbp"]
    calls = {"n": 0}
    real_pgd = analysis.robustness.pgd_iterates

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_pgd(*args, **kwargs)

    monkeypatch.setattr(analysis.robustness, "pgd_iterates", interrupted)
    rc, _ = _run(capsys, "attack", run, "--data-dir", cifar_dir, *FAST_ATTACK)
    assert rc == 130 and calls["n"] == 2
    assert not (run / "robustness.nc").exists() and not list(run.glob(".*.tmp"))


def test_combined_results_on_variant_and_seed(capsys, runs, cifar_dir):
    """The reproduce workflow's analysis jobs on two runs (the ANN twin is the transfer source), then
    `combine analyses`: every result stacked on variant x seed, the per-run attrs kept as variables."""
    root = runs["vgg-stbp"].parent.parent
    for variant in ("vgg-stbp", "vgg-ann"):
        run = runs[variant]
        assert _run(capsys, "attack", run, "--data-dir", cifar_dir, "--twin", runs["vgg-ann"], *FAST_ATTACK)[0] == 0
        assert _run(capsys, "sparsity", run, "--data-dir", cifar_dir, *FAST, "--raster-images", "1")[0] == 0
        assert _run(capsys, "landscape", run, "--data-dir", cifar_dir, *FAST, "--grid", "2",
                    "--hessian-iterations", "2")[0] == 0
    rc, out = _run(capsys, "combine", "analyses", root, "--runs", "vgg-stbp/seed0", "vgg-ann/seed0")
    assert rc == 0 and "sanity" in out.out
    for name in ("robustness.nc", "sparsity.nc", "landscape.nc"):
        ds = read_dataset(root / name)
        assert ds.sizes["variant"] == 2 and ds.sizes["seed"] == 1
        assert list(ds.variant.values) == ["vgg-stbp", "vgg-ann"]
    rob = read_dataset(root / "robustness.nc")
    assert "transfer" in rob.attack.values and rob.sanity_verdict.dims == ("variant", "seed")
    assert "run_gradient" in rob and "exact gradient" in rob.run_gradient.sel(variant="vgg-ann", seed=0).item()


def _toy(variant: str, seed: int, layers: list[str], value: float) -> xr.Dataset:
    return xr.Dataset({"rate": ("layer", np.full(len(layers), value))}, coords={"layer": layers},
                      attrs={"variant": variant, "seed": seed, "profile": "quick", "created": f"{variant}{seed}"})


def test_combine_runs_stacks_variants_and_seeds():
    flex, vgg = ["conv1", "down1", "conv2", "classifier"], ["conv1", "conv2", "classifier"]
    ds = combine_runs([_toy("vgg-stbp", 0, vgg, 1.0), _toy("flex-stbp", 0, flex, 2.0), _toy("flex-stbp", 1, flex, 3.0)])
    assert ds.rate.dims == ("variant", "seed", "layer") and list(ds.seed.values) == [0, 1]
    assert list(ds.layer.values) == flex  # network order, not alphabetical
    assert list(ds.variant.values) == ["vgg-stbp", "flex-stbp"]
    assert np.isnan(float(ds.rate.sel(variant="vgg-stbp", seed=0, layer="down1")))  # no such layer in a VGG
    assert np.isnan(float(ds.rate.sel(variant="vgg-stbp", seed=1, layer="conv1")))  # no such run
    assert float(ds.rate.sel(variant="flex-stbp", seed=1, layer="conv2")) == 3.0
    assert ds.attrs == {"profile": "quick"}  # shared attrs stay; per-run ones become variables
    assert ds.run_created.sel(variant="flex-stbp", seed=1).item() == "flex-stbp1"
    with pytest.raises(ValueError, match="duplicate"):
        combine_runs([_toy("a", 0, vgg, 1.0), _toy("a", 0, vgg, 1.0)])


def test_combined_files_keep_missing_integer_entries_as_nan(tmp_path):
    """A count stored as an integer, missing in one run, is NaN in the combined file (not -2**63)."""
    flex, vgg = ["conv1", "down1", "classifier"], ["conv1", "classifier"]
    paths = []
    for variant, layers in (("flex-stbp", flex), ("vgg-stbp", vgg)):
        ds = _toy(variant, 0, layers, 1.0)
        ds["neurons"] = ("layer", np.arange(1, len(layers) + 1, dtype=np.int64))
        write_dataset(ds, tmp_path / f"{variant}.nc")
        paths.append(tmp_path / f"{variant}.nc")
    write_dataset(combine_files(paths), tmp_path / "all.nc")
    neurons = read_dataset(tmp_path / "all.nc").neurons
    assert np.isnan(float(neurons.sel(variant="vgg-stbp", seed=0, layer="down1")))
    assert float(neurons.sel(variant="flex-stbp", seed=0, layer="down1")) == 2.0
