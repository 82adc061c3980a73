"""Attacks: ε = 0 is the identity, accuracy falls with ε, PGD/FGSM agree with IBM ART, the
transfer and Square attacks work, hybrid models are attacked through an identical-forward BPTT copy."""
import numpy as np
import pytest
import torch

from analysis.attacks import fgsm, gradient_model, input_gradient, margin, pgd, square
from analysis.robustness import select_images
from training.config import make_config
from training.data import load_split, to_float
from training.models import build_model
from training.runs import load_model

N = 96  # images per test: enough to see accuracy move, few enough for 2 CPU cores


@pytest.fixture(scope="module")
def batch(cifar_dir):
    images, _ = select_images(load_split("test", cifar_dir), N)
    return to_float(images.images), images.labels


@pytest.fixture(scope="module")
def snn(analysis_runs):
    return load_model(analysis_runs["vgg-stbp"])[0]


@pytest.fixture(scope="module")
def ann(analysis_runs):
    return load_model(analysis_runs["vgg-ann"])[0]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_zero_epsilon_changes_nothing(snn, batch):
    x, y = batch
    assert torch.equal(fgsm(snn, x, y, 0.0), x)
    assert torch.equal(pgd(snn, x, y, 0.0, steps=3, step_size=0.0, random_start=True), x)
    assert torch.equal(square(snn, x, y, 0.0, queries=5), x)


def test_snn_input_gradient_is_nonzero(snn, batch):
    """The surrogate gradient reaches the pixels (a zero gradient would make every white-box attack a no-op)."""
    x, y = batch
    g = input_gradient(snn, x[:16], y[:16])
    assert (g != 0).float().mean() > 0.5


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_accuracy_falls_monotonically_with_epsilon(snn, batch, attack):
    x, y = batch
    eps = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
    acc = []
    for e in eps:
        adv = (fgsm(snn, x, y, e) if attack == "fgsm" else
               pgd(snn, x, y, e, steps=5, step_size=e / 4, random_start=False))
        assert float((adv - x).abs().max()) <= e + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        acc.append(accuracy(snn, adv, y))
    assert acc[0] > 0.2  # a trained model, well above chance
    assert all(b <= a + 1 / N for a, b in zip(acc, acc[1:])), acc  # at most one image of noise
    assert acc[-1] < acc[0] - 0.15, acc


def test_ann_reaches_chance_at_large_epsilon(ann, batch):
    x, y = batch
    adv = pgd(ann, x, y, 0.5, steps=5, step_size=0.125, random_start=True, generator=torch.Generator().manual_seed(0))
    assert accuracy(ann, adv, y) <= 0.1


@pytest.mark.parametrize("which", ["vgg-ann", "vgg-stbp"])
def test_fgsm_and_pgd_agree_with_art(analysis_runs, batch, which):
    import art  # a test dependency (pyproject's test extra): a missing install fails, never skips
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    model = load_model(analysis_runs[which])[0]
    x, y = batch
    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    eps = 4 / 255
    ours = {"fgsm": fgsm(model, x, y, eps),
            "pgd": pgd(model, x, y, eps, steps=10, step_size=eps / 4, random_start=False)}
    theirs = {
        "fgsm": FastGradientMethod(clf, norm=np.inf, eps=eps, batch_size=N).generate(x.numpy(), y=y.numpy()),
        "pgd": ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=10,
                                               num_random_init=0, batch_size=N, verbose=False
                                               ).generate(x.numpy(), y=y.numpy()),
    }
    for name in ours:
        ref = torch.from_numpy(theirs[name])
        differ = ((ours[name] - ref).abs() > 1e-5).float().mean().item()
        # identical on the reference machine; the slack allows another BLAS to round a few gradients to 0
        assert differ < 0.001, f"{name} ({art.__version__}): {differ:.2%} of pixels differ from ART's"
        assert abs(accuracy(model, ours[name], y) - accuracy(model, ref, y)) <= 1 / N


def test_transfer_attack_from_the_ann_twin_hurts_the_snn(snn, ann, batch):
    x, y = batch
    eps = 8 / 255
    adv = pgd(ann, x, y, eps, steps=5, step_size=eps / 4, random_start=True, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert accuracy(snn, adv, y) < accuracy(snn, x, y) - 0.05


class NoBackward(torch.autograd.Function):
    """Identity whose backward raises: proves an attack never asks for a gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("the gradient-free attack asked for a gradient")


def test_square_attack_is_gradient_free_and_stays_in_the_ball(snn, batch):
    x, y = batch
    eps = 8 / 255

    def forward_only(z):
        return snn(NoBackward.apply(z.detach().requires_grad_(True)))

    adv = square(forward_only, x, y, eps, queries=30, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert accuracy(snn, adv, y) < accuracy(snn, x, y) - 0.05
    # more queries only ever accept lower margins, so they fool at least as many images on average
    longer = square(snn, x, y, eps, queries=60, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert margin(snn(longer), y).mean() <= margin(snn(adv), y).mean()


def test_hybrid_is_attacked_through_a_bptt_copy_with_the_same_forward(batch):
    torch.manual_seed(0)
    hybrid = build_model(make_config("smoke", mode="hybrid", flex=True).model).eval()
    copy, how = gradient_model(hybrid, "bptt")
    x, y = batch
    assert copy is not hybrid and copy.cfg.mode.value == "stbp" and "backprop through time" in how
    with torch.no_grad():
        assert torch.equal(hybrid(x), copy(x))
    native, how_native = gradient_model(hybrid, "native")
    assert native is hybrid and "detached" in how_native
    g_bptt, g_native = input_gradient(copy, x[:8], y[:8]), input_gradient(hybrid, x[:8], y[:8])
    assert g_bptt.abs().sum() > 0 and not torch.allclose(g_bptt, g_native)
