"""Robustness sweeps: the Dataset's contract, AUC, worst case, and a sanity check that can fail."""
import numpy as np
import pytest
import torch

from analysis.robustness import accuracy_at, auc, robustness, sanity_check, select_images
from analysis.settings import ATTACKS, AttackSettings, LandscapeSettings, settings_for
from core.config import ConfigError
from core.results import read_dataset, write_dataset
from training.data import load_split
from training.runs import load_model

SMALL = AttackSettings(n_images=48, batch_size=24, n_epsilons=3, pgd_max=16 / 255, pgd_steps=3, apgd_steps=4,
                       square_queries=10)


@pytest.fixture(scope="module")
def test_split(cifar_dir):
    return load_split("test", cifar_dir)


@pytest.fixture(scope="module")
def result(analysis_runs, test_split):
    model, _ = load_model(analysis_runs["vgg-stbp"])
    twin, _ = load_model(analysis_runs["vgg-ann"])
    return robustness(model, test_split, SMALL, twin=twin, attrs={"variant": "vgg-stbp", "seed": "0"})


def test_dataset_has_named_dims_units_and_definitions(result, tmp_path):
    ds = result
    assert list(ds.attack.values) == list(ATTACKS) + ["worst"]
    assert ds.accuracy.dims == ("attack", "level") and ds.correct.dims == ("attack", "level", "sample")
    assert ds.epsilon.dims == ("attack", "level") and ds.sizes["sample"] == 48
    for name in ("accuracy", "auc", "epsilon", "clean_accuracy"):
        assert ds[name].attrs["units"] and ds[name].attrs["long_name"]
    assert "backprop through time" in ds.attrs["gradient"] and "trapezoid" in ds.attrs["auc_definition"]
    np.testing.assert_allclose(ds.epsilon.sel(attack="fgsm"), [0, 0.32, 0.64])
    for a in ("square", "apgd_ce", "apgd_dlr", "pgd", "pgd_last", "worst"):
        assert list(ds.epsilon.sel(attack=a).values) == [0, 8 / 255, 16 / 255]  # 8/255 exactly, not a neighbour
    assert float(ds.worst_accuracy_8_255) == float(ds.accuracy.sel(attack="worst", level=1))
    assert float(accuracy_at(ds, "worst")) == float(ds.worst_accuracy_8_255) and int(ds.reference_level) == 1
    with pytest.raises(KeyError, match="not a point of the worst grid"):
        accuracy_at(ds, "worst", 4 / 255)
    assert int(ds.eot_draws) == 1 and "one forward pass" in ds.attrs["eot"]
    write_dataset(ds, tmp_path / "r.nc")
    back = read_dataset(tmp_path / "r.nc")
    assert back.sanity_verdict.item() == ds.sanity_verdict.item()
    np.testing.assert_array_equal(back.correct.values, ds.correct.values)


def test_epsilon_zero_is_the_clean_accuracy_and_accuracy_falls(result):
    ds = result
    assert np.all(ds.accuracy.isel(level=0).values == float(ds.clean_accuracy))
    assert np.all(ds.accuracy.sel(attack=["pgd", "spgd", "apgd_ce", "apgd_dlr", "worst"]).isel(level=-1)
                  < float(ds.clean_accuracy))
    # an image misclassified clean counts as broken at every ε > 0
    assert np.all(ds.correct.isel(level=slice(1, None)) <= ds.clean_correct)


def test_worst_case_is_per_sample_and_below_every_attack(result):
    ds = result
    worst = ds.correct.sel(attack="worst")
    combined = ds.clean_correct.copy()
    for a in ("apgd_ce", "apgd_dlr", "pgd", "transfer", "square"):
        assert np.all(worst <= ds.correct.sel(attack=a))
        combined = combined & ds.correct.sel(attack=a)
    np.testing.assert_array_equal(worst.values, combined.transpose(*worst.dims).values)  # exactly these five, not FGSM/SPGD/last-iterate PGD
    assert list(ds.worst_attacks.values) == [5, 5, 5]
    # the best iterate of a PGD run is never beaten by its last iterate, image by image
    assert np.all(ds.correct.sel(attack="pgd") <= ds.correct.sel(attack="pgd_last"))
    # nested L∞ balls: an image broken at a smaller ε stays broken for the worst-case attacks
    for a in ("apgd_ce", "apgd_dlr", "pgd", "transfer", "square", "worst"):
        assert np.all(np.diff(ds.correct.sel(attack=a).transpose("sample", "level").values.astype(int), axis=1) <= 0)


def test_auc_is_the_unnormalised_trapezoid(result):
    ds = result
    for a in ds.attack.values:
        row = ds.sel(attack=a)
        assert float(row.auc) == pytest.approx(np.trapezoid(row.accuracy.values, row.epsilon.values))
        assert float(row.auc_normalised) == pytest.approx(float(row.auc) / float(row.epsilon[-1]))
    assert auc(np.array([1.0, 0.0]), np.array([0.0, 0.5])) == pytest.approx(0.25)


def test_sanity_check_verdicts():
    falls = np.array([0.8, 0.4, 0.05])
    assert sanity_check({"pgd": falls, "square": falls + 0.1}, 0.1, 0.05).verdict == "pass"
    assert "uninformative" in sanity_check({"pgd": np.array([0.12, 0.1])}, 0.1, 0.05).verdict
    stuck = sanity_check({"pgd": np.array([0.8, 0.7, 0.7])}, 0.1, 0.05)
    assert not stuck.passed and not stuck.reaches_chance and "near chance" in stuck.verdict
    rising = sanity_check({"pgd": np.array([0.8, 0.1, 0.3])}, 0.1, 0.05)
    assert not rising.monotone and "rises" in rising.verdict
    masked = sanity_check({"pgd": np.array([0.8, 0.6, 0.5]), "square": np.array([0.8, 0.2, 0.0])}, 0.1, 0.05)
    assert not masked.whitebox_strongest and "square beats white-box pgd" in masked.verdict
    agree = {"pgd": falls, "pgd_last": falls + 0.02, "apgd_ce": falls - 0.02, "apgd_dlr": falls}
    assert sanity_check(agree, 0.1, 0.05).passed


def test_sanity_check_flags_last_iterate_pgd():
    """The issue-10 signature: last-iterate PGD leaves 2-4x more images correct than APGD on a spiking net."""
    eps = np.array([0, 1, 2, 4, 8]) / 255
    pgd_last = np.array([0.33, 0.240, 0.220, 0.145, 0.075])  # flex-stbp, smoke, issue 10
    apgd = np.array([0.33, 0.105, 0.060, 0.035, 0.015])
    gap = sanity_check({"pgd_last": pgd_last, "apgd_ce": apgd}, 0.1, 0.05, eps)
    assert not gap.passed and not gap.family_consistent
    assert "pgd_last leaves 0.160 more of the images correct than apgd_ce at eps=2/255" in gap.verdict
    alone = sanity_check({"pgd_last": pgd_last}, 0.1, 0.05, eps)  # a model evaluated with last-iterate PGD alone
    assert not alone.passed and not alone.family_consistent and "only last-iterate PGD" in alone.verdict
    assert sanity_check({"pgd_last": pgd_last, "pgd": apgd}, 0.1, 0.05, eps).verdict.count("pgd_last leaves") == 1


def test_sanity_check_flags_a_run_with_last_iterate_pgd_alone(analysis_runs, test_split):
    model, _ = load_model(analysis_runs["vgg-stbp"])
    settings = AttackSettings(attacks=("fgsm", "pgd_last", "spgd"), n_images=24, batch_size=24, n_epsilons=3,
                              pgd_max=16 / 255, pgd_steps=3)
    ds = robustness(model, test_split, settings)  # the authors' protocol alone
    assert int(ds.sanity_pass) == 0 and int(ds.sanity_family_consistent) == 0
    assert "only last-iterate PGD was run" in ds.sanity_verdict.item()
    assert "worst" not in ds.attack.values and np.isnan(float(ds.worst_accuracy_8_255))


class GradientMasked(torch.nn.Module):
    """A trained model behind 8-bit input quantisation: the pixel gradient is exactly zero (Carlini's textbook
    case of obfuscated gradients). The function barely changes, but every white-box attack is disarmed."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


def test_sanity_check_flags_a_gradient_masked_model(analysis_runs, test_split):
    model, _ = load_model(analysis_runs["vgg-ann"])
    settings = AttackSettings(attacks=("fgsm", "pgd", "square"), n_images=48, batch_size=48, n_epsilons=3,
                              pgd_max=16 / 255, pgd_steps=3, square_queries=20, random_start=False)
    ds = robustness(GradientMasked(model), test_split, settings)
    assert np.all(ds.accuracy.sel(attack="pgd").values == float(ds.clean_accuracy))  # the attack is disarmed
    assert int(ds.sanity_pass) == 0 and ds.sanity_verdict.item().startswith("FLAGGED")
    assert int(ds.sanity_whitebox_strongest) == 0


def test_selected_images_are_fixed_and_class_balanced(test_split):
    a, ia = select_images(test_split, 50)
    b, ib = select_images(test_split, 50)
    np.testing.assert_array_equal(ia, ib)
    assert np.bincount(a.labels.numpy(), minlength=10).tolist() == [5] * 10
    assert torch.equal(a.images, test_split.images[torch.from_numpy(ia)])


@pytest.mark.parametrize("kwargs, message", [
    ({"attacks": ("fgsm", "cw")}, "unknown attack(s) ['cw']; valid ones are ['fgsm', 'pgd', 'pgd_last', 'spgd', "
                                  "'apgd_ce', 'apgd_dlr', 'transfer', 'square']"),
    ({"pgd_max": 23 / 255, "n_epsilons": 23}, "gives an epsilon grid without 8/255"),
    ({"apgd_steps": 0}, "apgd_steps=0 must be >= 1"),
    ({"eot_draws": 0}, "eot_draws=0 must be >= 1"),
    ({"pgd_max": 1.5}, "pgd_max=1.5 is a perturbation bound in [0, 1]"),
    ({"fgsm_max": -0.1}, "fgsm_max=-0.1 is a perturbation bound in [0, 1]"),
    ({"n_epsilons": 1}, "n_epsilons=1 must be >= 2"),
    ({"gradient": "exact"}, "choose one of ['bptt', 'native']"),
])
def test_bad_attack_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError) as exc:
        AttackSettings(**kwargs)
    assert message in str(exc.value)


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_preset_holds_8_255_on_its_grid(profile):
    s = settings_for(profile).attack
    assert 8 / 255 in list(s.epsilons("worst")) and s.apgd_steps >= 1
    if profile == "paper":
        assert s.apgd_steps == 100 and s.square_queries == 5000 and list(s.epsilons("pgd") * 255) == pytest.approx(
            list(range(24)))


def test_grid_smaller_than_two_is_an_error():
    with pytest.raises(ConfigError, match=r"grid=1 must be >= 2"):
        LandscapeSettings(grid=1)


def test_transfer_without_a_twin_is_refused(analysis_runs, test_split):
    model, _ = load_model(analysis_runs["vgg-stbp"])
    with pytest.raises(ValueError, match="needs the ANN twin"):
        robustness(model, test_split, SMALL)
