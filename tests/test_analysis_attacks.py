"""Attacks: ε = 0 is the identity, accuracy falls with ε, PGD/FGSM/APGD agree with IBM ART, the best PGD
iterate is never worse than the last, the transfer and Square attacks work, hybrid models are attacked
through an identical-forward BPTT copy, EOT averages gradients over draws."""
import numpy as np
import pytest
import torch

from analysis.apgd import apgd, checkpoints, dlr_loss
from analysis.attacks import fgsm, gradient_model, input_gradient, loss_gradient, margin, pgd, pgd_iterates, square
from analysis.robustness import select_images
from core.config import make_config
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
    # Bounds far from what smoke models do (issue 22: seeds 0 and 1 x 1 and 2 threads) and from what a
    # broken attack does. Clean: 0.27-0.33 (chance 0.1). Neither attack is monotone in eps on a spiking net
    # (a larger step can jump past the adversarial region): rises of up to 1 image (PGD) and 3 images (FGSM)
    # of 96 seen. At 8/255, PGD keeps 3-38 % of the clean accuracy and FGSM 14-46 %; a broken attack ~100 %.
    assert acc[0] > 0.15  # a trained model, above chance
    slack = 3 / N if attack == "pgd" else 6 / N
    assert all(b <= a + slack + 1e-6 for a, b in zip(acc, acc[1:])), acc
    assert acc[-1] <= (0.6 if attack == "pgd" else 0.75) * acc[0], acc


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
        # identical on the reference machine; the slack allows another BLAS, or a model with more
        # near-threshold membranes, to round a few surrogate gradients to 0 (0.2 % seen on a twin smoke model)
        assert differ < 0.005, f"{name} ({art.__version__}): {differ:.2%} of pixels differ from ART's"
        assert abs(accuracy(model, ours[name], y) - accuracy(model, ref, y)) <= 1 / N


def test_transfer_attack_is_crafted_on_the_ann_twin_and_evaluated_on_the_snn(snn, ann, cifar_dir):
    """What the transfer attack guarantees, not how much a 5-step transfer hurts one pair of smoke models
    (0.302 -> 0.292 on one machine of issue 22's kind: how well a perturbation transfers is a finding).

    The perturbation is PGD's last iterate on the ANN twin with the sweep's seed, inside the ε-ball; it
    raises the loss of the twin it was computed on; and the sweep scores exactly these images on the SNN.
    """
    from analysis.robustness import sweep
    from analysis.settings import AttackSettings

    split, _ = select_images(load_split("test", cifar_dir), N)
    x, y = to_float(split.images), split.labels
    eps = 8 / 255
    settings = AttackSettings(attacks=("transfer",), n_images=N, batch_size=N, n_epsilons=2, pgd_max=eps,
                              pgd_steps=5, seed=0)
    correct, clean, _ = sweep(snn, split, settings, twin=ann)

    keep = torch.from_numpy(np.flatnonzero(clean))
    adv = pgd_iterates(gradient_model(ann)[0], x[keep], y[keep], eps, steps=5, step_size=eps / 4,
                       random_start=True, generator=torch.Generator().manual_seed(0)).last
    assert float((adv - x[keep]).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert float((adv - x[keep]).abs().max()) > eps / 2  # a perturbation, not the identity
    with torch.no_grad():  # it climbs its source's loss (PGD's own contract, whatever the model's accuracy)
        loss = [torch.nn.functional.cross_entropy(ann(z), y[keep]).item() for z in (x[keep], adv)]
        assert loss[1] > loss[0], loss
        on_snn = (snn(adv).argmax(1) == y[keep]).numpy()
    assert clean.sum() > 0 and np.array_equal(correct[0, 1, clean], on_snn)  # the SNN is scored on them
    assert correct[0, 0, clean].all()  # ε = 0: every clean-correct image stays correct


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


def test_best_iterate_is_never_worse_than_the_last(snn, batch):
    x, y = batch
    eps = 4 / 255
    it = pgd_iterates(snn, x, y, eps, steps=5, step_size=eps / 4, random_start=True,
                      generator=torch.Generator().manual_seed(0))
    last = pgd(snn, x, y, eps, steps=5, step_size=eps / 4, random_start=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(it.last, last)  # pgd is the last iterate of the same run
    for adv in it:
        assert float((adv - x).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        broken_last, broken_best = snn(it.last).argmax(1) != y, snn(it.best).argmax(1) != y
        assert torch.all(broken_best >= broken_last)  # image by image
        assert torch.all(margin(snn(it.best), y) <= margin(snn(it.last), y) + 1e-6)


def test_apgd_checkpoints_follow_autoattack():
    # AutoAttack, n_iter = 100: first window 22, then shorter by 3 down to 6 (p_j = 0, .22, .41, .57, ...)
    assert checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert checkpoints(5) == [0, 1, 2, 3, 4] and checkpoints(1) == [0]


def test_dlr_loss_is_scale_invariant_and_signed():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -1.0]])
    y = torch.tensor([0, 0])
    # correct: -(3 - 1) / (3 - 0); wrong: -(0 - 2) / (2 - 0)
    torch.testing.assert_close(dlr_loss(logits, y), torch.tensor([-2 / 3, 1.0]))
    torch.testing.assert_close(dlr_loss(7.5 * logits + 2.0, y), dlr_loss(logits, y))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(logits[:, :2], y)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_stays_in_the_ball_and_beats_last_iterate_pgd(snn, batch, loss):
    x, y = batch
    eps = 2 / 255
    assert torch.equal(apgd(snn, x, y, 0.0, steps=3, loss=loss), x)
    adv = apgd(snn, x, y, eps, steps=20, loss=loss, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    last = pgd(snn, x, y, eps, steps=10, step_size=eps / 4, random_start=True,
               generator=torch.Generator().manual_seed(0))
    assert accuracy(snn, adv, y) <= accuracy(snn, last, y) + 1 / N  # ours 3-10 images stronger (issue 22)
    # it attacks: 2/255 keeps 14-54 % of a smoke model's clean accuracy (seeds 0, 1 x 1, 2 threads)
    assert accuracy(snn, adv, y) <= 0.75 * accuracy(snn, x, y)


@pytest.mark.parametrize("which", ["vgg-ann", "vgg-stbp"])
def test_apgd_agrees_with_art(analysis_runs, batch, which):
    """Same model, ε and budget as IBM ART's AutoProjectedGradientDescent (cross-entropy, one random start).

    ART evaluates its last iterate and ours keeps the best point, so ours may only be stronger; the two are
    the same algorithm, so they must land close."""
    import art
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    model = load_model(analysis_runs[which])[0]
    x, y = batch
    eps, steps = 4 / 255, 20
    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    np.random.seed(0)
    theirs = torch.from_numpy(AutoProjectedGradientDescent(
        clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps, nb_random_init=1, batch_size=N,
        loss_type="cross_entropy", verbose=False).generate(x.numpy(), y=y.numpy()))
    ours = apgd(model, x, y, eps, steps=steps, loss="ce", generator=torch.Generator().manual_seed(0))
    assert float((theirs - x).abs().max()) <= eps + 1e-5
    a_ours, a_theirs, a_clean = accuracy(model, ours, y), accuracy(model, theirs, y), accuracy(model, x, y)
    assert a_theirs < a_clean - 0.1, f"ART {art.__version__} did not attack: {a_theirs} vs clean {a_clean}"
    assert a_ours <= a_theirs + 2 / N, f"ours {a_ours:.3f} vs ART {art.__version__} {a_theirs:.3f}"
    assert a_ours >= a_theirs - 0.1, f"ours {a_ours:.3f} far below ART {a_theirs:.3f}: check the projection"


class Noisy(torch.nn.Module):
    """A random forward pass (like Poisson encoding): logits of the input times fresh noise."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(12, 10)

    def forward(self, x):
        return self.head((x * torch.rand_like(x)).flatten(1))


def test_eot_averages_the_gradient_over_draws():
    torch.manual_seed(0)
    model, x, y = Noisy(), torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    single = [loss_gradient(model, x, y)[0] for _ in range(5)]
    torch.manual_seed(1)
    averaged = loss_gradient(model, x, y, draws=5)[0]
    torch.testing.assert_close(averaged, torch.stack(single).mean(0))
    assert not torch.allclose(single[0], single[1])  # the draws do differ
    with pytest.raises(ValueError, match="draws=0 must be >= 1"):
        loss_gradient(model, x, y, draws=0)


def test_poisson_model_reports_its_eot_draws(cifar_dir):
    from analysis.robustness import robustness
    from analysis.settings import AttackSettings

    torch.manual_seed(0)
    model = build_model(make_config("smoke", mode="stbp", flex=False,
                                    overrides=["model.encoding=poisson"]).model).eval()
    settings = AttackSettings(attacks=("pgd", "apgd_ce"), n_images=10, batch_size=10, n_epsilons=2,
                              pgd_max=8 / 255, pgd_steps=1, apgd_steps=1, eot_draws=3)
    ds = robustness(model, load_split("test", cifar_dir), settings)
    assert int(ds.eot_draws) == 3 and "3 forward passes" in ds.attrs["eot"] and "EOT" in ds.attrs["encoding_note"]
