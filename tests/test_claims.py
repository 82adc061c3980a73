"""The claims summary: paired FLEX − VGG intervals over seeds and their verdicts."""
import numpy as np
import pytest
import xarray as xr
from scipy import stats

from analysis.claims import EPS_8, claims_dataset, markdown_table, paired_interval
from core.results import write_dataset


def test_paired_interval_is_the_student_t_interval_of_the_differences():
    flex, vgg = np.array([0.61, 0.64, 0.60, 0.66]), np.array([0.58, 0.60, 0.59, 0.61])
    p = paired_interval(flex, vgg, "higher")
    d = flex - vgg
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert p.n == 4 and p.mean == pytest.approx(d.mean())
    assert (p.low, p.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert p.verdict == "holds"  # every seed favours FLEX and the interval excludes 0
    assert paired_interval(flex, vgg, "lower").verdict == "fails"
    # unpaired noise larger than the effect: the interval covers 0
    assert paired_interval(np.array([0.6, 0.5, 0.7]), np.array([0.62, 0.61, 0.6]), "higher").verdict == "can't tell"
    assert paired_interval(np.array([0.6]), np.array([0.5]), "higher").verdict.startswith("can't tell")
    # a seed missing on one side is dropped from the pairing
    assert paired_interval(np.array([0.6, np.nan, 0.7]), np.array([0.5, 0.5, 0.6]), "higher").n == 2


def _fake_root(tmp_path, seeds=(0, 1, 2)):
    variants = [f"{f}-{m}" for m in ("ann", "hybrid", "stbp") for f in ("vgg", "flex")]
    rng = np.random.default_rng(0)
    shape = (len(variants), len(seeds))
    flex_bonus = np.array([[0.05 if v.startswith("flex") else 0.0] for v in variants])
    coords = {"variant": variants, "seed": list(seeds)}
    write_dataset(xr.Dataset({"test_accuracy": (("variant", "seed"), 0.6 + flex_bonus + rng.normal(0, 0.005, shape))},
                             coords=coords), tmp_path / "training_summary.nc")
    eps = np.array([0.0, 2 / 255, EPS_8])
    acc = np.broadcast_to(np.array([0.6, 0.3, 0.1]), (*shape, 2, 3)).copy()
    write_dataset(xr.Dataset({"accuracy": (("variant", "seed", "attack", "level"), acc),
                              "auc": (("variant", "seed", "attack"), acc.mean(-1))},
                             coords={**coords, "attack": ["pgd", "worst"],
                                     "epsilon": (("variant", "seed", "attack", "level"),
                                                 np.broadcast_to(eps, acc.shape).copy())}),
                  tmp_path / "robustness.nc")
    return tmp_path


def test_claims_dataset_reads_the_combined_results(tmp_path):
    ds = claims_dataset(_fake_root(tmp_path))
    acc = ds.sel(claim="accuracy")
    assert list(acc.verdict.values) == ["holds"] * 3 and (acc.n_seeds == 3).all()
    assert float(acc.difference.sel(mode="stbp")) == pytest.approx(0.05, abs=0.02)
    r8 = ds.sel(claim="robust_acc_8")
    np.testing.assert_allclose(r8.vgg_mean, 0.1)  # the 8/255 grid point itself
    assert list(r8.verdict.values) == ["can't tell"] * 3  # identical: a zero-width interval around 0
    # missing result files give "no data", never a made-up number
    assert (ds.sel(claim="hessian").verdict == "no data").all()
    assert ds.sel(claim="spike_rate", mode="ann").verdict.item() == "n/a (ReLU)"
    table = markdown_table(ds)
    assert "| test accuracy (↑) | stbp | 3 |" in table and "holds" in table


def test_robust_accuracy_at_8_is_nan_without_that_grid_point(tmp_path):
    root = _fake_root(tmp_path)
    rob = xr.open_dataset(root / "robustness.nc").load()
    rob["epsilon"] = rob.epsilon * 0.9
    write_dataset(rob, root / "robustness.nc")
    assert (claims_dataset(root).sel(claim="robust_acc_8").verdict == "no data").all()
