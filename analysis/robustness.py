"""Robustness sweeps: top-1 accuracy per attack and ε, AUC, per-sample worst case, a sanity check.

Definitions (also written into every result's attrs):

* **accuracy** ``[attack, level]``: top-1 accuracy of the model on the
  adversarial images of that attack at ``epsilon[attack, level]``.
* **AUC**: trapezoid rule of accuracy over ε, *not* normalised (accuracy × ε);
  ``auc_normalised`` divides by the ε range, i.e. the mean accuracy over
  the sweep, comparable between attacks with different ranges.
* **worst**: per image, correct only if it is correct clean *and* under every
  attack run at that ε (the PGD grid: white-box PGD, transfer, Square; ε = 0
  and any ε shared with another grid count those attacks too).
* **sanity check** (gradient masking, Carlini et al. 2019 §4): (1) the lowest
  accuracy any attack reaches at its largest ε must be ≤ chance + tol;
  (2) the iterative white-box attacks (PGD, SPGD) must not gain accuracy with
  ε by more than tol; (3) on the common grid, no black-box attack (transfer,
  Square) may beat white-box PGD by more than tol.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import xarray as xr

from analysis.attacks import fgsm, gradient_model, pgd, square
from analysis.settings import AttackSettings, settings_json
from training.config import Encoding
from training.data import Split, subset, to_float
from training.models import SpikingVGG

BLACK_BOX = ("transfer", "square")
COMMON_GRID = ("pgd", "transfer", "square")  # attacks on the PGD grid: these define the worst case


def select_images(split: Split, n: int, seed: int = 0) -> tuple[Split, np.ndarray]:
    """A fixed, class-balanced subset of ``n`` images (the same for every variant) and its test-split indices."""
    # data.subset indexes split.images with the kept positions; giving it the positions themselves returns them.
    positions = Split(torch.arange(len(split), device=split.labels.device), split.labels)
    index = subset(positions, n, seed).images
    return Split(split.images[index], split.labels[index]), index.cpu().numpy()


def _run_attack(name: str, x: torch.Tensor, y: torch.Tensor, eps: float, s: AttackSettings,
                grad_model: torch.nn.Module, target: torch.nn.Module, source: torch.nn.Module | None,
                gen: torch.Generator) -> torch.Tensor:
    step = s.step_ratio * eps
    if name == "fgsm":
        return fgsm(grad_model, x, y, eps)
    if name in ("pgd", "spgd"):
        return pgd(grad_model, x, y, eps, steps=s.pgd_steps, step_size=step, random_start=s.random_start, generator=gen)
    if name == "transfer":
        return pgd(source, x, y, eps, steps=s.pgd_steps, step_size=step, random_start=s.random_start, generator=gen)
    return square(target, x, y, eps, queries=s.square_queries, p_init=s.square_p_init, generator=gen)


def sweep(model: SpikingVGG, split: Split, settings: AttackSettings, *, twin: SpikingVGG | None = None,
          progress: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Run every attack at every ε of its grid on every image.

    Returns
    -------
    correct
        ``[attack, level, sample]`` bool: the model classifies the adversarial image correctly.
    clean
        ``[sample]`` bool: correct on the clean image.
    gradient
        How the white-box gradients were obtained.
    """
    if "transfer" in settings.attacks and twin is None:
        raise ValueError("the transfer attack needs the ANN twin model (twin=...); drop 'transfer' from the attacks "
                         "to run without it.")
    model.eval()
    grad_model, gradient = gradient_model(model, settings.gradient)
    stochastic = model.cfg.spiking and model.cfg.encoding is Encoding.POISSON
    source = gradient_model(twin.eval())[0] if twin is not None else None
    dev = split.images.device
    gens = {a: torch.Generator(device=dev).manual_seed(settings.seed * 1000 + i) for i, a in enumerate(settings.attacks)}
    n = len(split)
    correct = np.zeros((len(settings.attacks), settings.n_epsilons, n), dtype=bool)
    clean = np.zeros(n, dtype=bool)
    for start in range(0, n, settings.batch_size):
        sl = slice(start, start + settings.batch_size)
        x, y = to_float(split.images[sl]), split.labels[sl]
        with torch.no_grad():
            logits = model(x)
            # bitwise equal on the CPU; a tolerance leaves room for GPU kernels picked per instance.
            # Poisson-encoded models draw new input spikes on every call, so two calls cannot agree.
            if (grad_model is not model and not stochastic
                    and not torch.allclose(logits, grad_model(x), rtol=1e-4, atol=1e-5)):
                raise RuntimeError("the gradient model's forward pass differs from the attacked model's; "
                                   "its gradients would not belong to the attacked function.")
        clean[sl] = (logits.argmax(1) == y).cpu().numpy()
        for i, name in enumerate(settings.attacks):
            for k, eps in enumerate(settings.epsilons(name)):
                adv = _run_attack(name, x, y, float(eps), settings, grad_model, model, source, gens[name])
                with torch.no_grad():
                    correct[i, k, sl] = (model(adv).argmax(1) == y).cpu().numpy()
        if progress:
            print(f"  attacked {min(start + settings.batch_size, n)}/{n} images", flush=True)
    return correct, clean, gradient


def worst_case(correct: np.ndarray, clean: np.ndarray, settings: AttackSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample worst case on the common (PGD) grid: ``[level, sample]`` and the number of attacks per level."""
    grid = settings.epsilons("worst")
    worst = np.repeat(clean[None], len(grid), axis=0)
    counted = np.zeros(len(grid), dtype=np.int64)
    for i, name in enumerate(settings.attacks):
        for j, eps in enumerate(settings.epsilons(name)):
            hit = np.flatnonzero(np.isclose(grid, eps, rtol=0, atol=1e-12))
            for k in hit:
                worst[k] &= correct[i, j]
                counted[k] += 1
    return worst, counted


def auc(accuracy: np.ndarray, eps: np.ndarray) -> float:
    """Trapezoid rule of accuracy over ε (not normalised)."""
    return float(np.sum((accuracy[1:] + accuracy[:-1]) / 2 * np.diff(eps)))


class Sanity(NamedTuple):
    passed: bool
    verdict: str
    min_accuracy_at_max_epsilon: float
    reaches_chance: bool
    monotone: bool
    whitebox_strongest: bool


def sanity_check(accuracy: dict[str, np.ndarray], chance: float, tol: float) -> Sanity:
    """Flag signs of gradient masking in per-attack accuracy curves (see the module docstring)."""
    reasons = []
    attacks = [a for a in accuracy if a != "worst"]
    at_max = {a: float(accuracy[a][-1]) for a in attacks}
    lowest = min(at_max.values())
    reaches = lowest <= chance + tol
    if not reaches:
        reasons.append(f"no attack brings accuracy near chance at its largest ε (lowest {lowest:.3f} by "
                       f"{min(at_max, key=at_max.get)}, chance {chance:.3f}); attacks may be failing")
    monotone = True
    for a in ("pgd", "spgd"):
        if a in accuracy and np.any(np.diff(accuracy[a]) > tol):
            monotone = False
            reasons.append(f"{a} accuracy rises with ε (by up to {np.diff(accuracy[a]).max():.3f})")
    strongest = True
    if "pgd" in accuracy:
        for a in BLACK_BOX:
            if a in accuracy:
                gap = float(np.max(accuracy["pgd"] - accuracy[a]))
                if gap > tol:
                    strongest = False
                    reasons.append(f"{a} beats white-box PGD by up to {gap:.3f}: the surrogate gradient misleads PGD")
    passed = reaches and monotone and strongest
    verdict = "pass" if passed else "FLAGGED: " + "; ".join(reasons)
    clean = max(float(curve[0]) for curve in accuracy.values())  # ε = 0: the clean accuracy
    if passed and clean <= chance + tol:
        verdict += " (uninformative: the clean accuracy is already at chance)"
    return Sanity(passed, verdict, lowest, reaches, monotone, strongest)


def robustness_dataset(correct: np.ndarray, clean: np.ndarray, settings: AttackSettings, *, image_index: np.ndarray,
                       labels: np.ndarray, num_classes: int, gradient: str, attrs: dict[str, str]) -> xr.Dataset:
    """Assemble the result Dataset (dims ``attack``, ``level``, ``sample``) from a sweep."""
    names = list(settings.attacks)
    if any(a in names for a in COMMON_GRID):
        worst, counted = worst_case(correct, clean, settings)
        correct = np.concatenate([correct, worst[None]])
        names.append("worst")
    else:
        counted = np.zeros(settings.n_epsilons, dtype=np.int64)
    eps = np.stack([settings.epsilons(a) for a in names])
    acc = correct.mean(axis=2)
    curves = dict(zip(names, acc))
    chance = 1.0 / num_classes
    sanity = sanity_check(curves, chance, settings.sanity_tolerance)
    span = eps[:, -1] - eps[:, 0]
    aucs = np.array([auc(acc[i], eps[i]) for i in range(len(names))])
    ds = xr.Dataset(
        {
            "accuracy": (("attack", "level"), acc, {"long_name": "top-1 accuracy under attack", "units": "1"}),
            "correct": (("attack", "level", "sample"), correct.astype(np.int8),
                        {"long_name": "adversarial image classified correctly (1) or not (0)", "units": "1"}),
            "clean_correct": ("sample", clean.astype(np.int8),
                              {"long_name": "clean image classified correctly", "units": "1"}),
            "clean_accuracy": ((), float(clean.mean()), {"long_name": "top-1 accuracy on the clean images", "units": "1"}),
            "auc": ("attack", aucs, {"long_name": "area under accuracy vs epsilon (trapezoid, not normalised)",
                                     "units": "1"}),
            "auc_normalised": ("attack", aucs / span, {"long_name": "AUC divided by the epsilon range (mean accuracy "
                                                                    "over the sweep)", "units": "1"}),
            "worst_attacks": ("level", counted, {"long_name": "attacks combined in the worst case at this level",
                                                 "units": "1"}),
            "sanity_pass": ((), np.int8(sanity.passed), {"long_name": "1 if the gradient-masking sanity check passed"}),
            "sanity_verdict": ((), sanity.verdict, {"long_name": "sanity check verdict and reasons"}),
            "sanity_min_accuracy": ((), sanity.min_accuracy_at_max_epsilon, {
                "long_name": "lowest accuracy of any attack at its largest epsilon", "units": "1"}),
            "sanity_reaches_chance": ((), np.int8(sanity.reaches_chance), {
                "long_name": "1 if some attack brings accuracy to <= chance + tol at its largest epsilon"}),
            "sanity_monotone": ((), np.int8(sanity.monotone), {
                "long_name": "1 if PGD/SPGD accuracy never rises with epsilon by more than tol"}),
            "sanity_whitebox_strongest": ((), np.int8(sanity.whitebox_strongest), {
                "long_name": "1 if no black-box attack beats white-box PGD by more than tol"}),
        },
        coords={
            "attack": ("attack", names, {"long_name": "attack"}),
            "level": ("level", np.arange(settings.n_epsilons), {"long_name": "index of epsilon in the sweep"}),
            "epsilon": (("attack", "level"), eps, {"long_name": "L-infinity perturbation bound in [0, 1] pixel space",
                                                   "units": "1"}),
            "sample": ("sample", image_index, {"long_name": "index of the image in the CIFAR-10 test split"}),
            "label": ("sample", labels, {"long_name": "true class"}),
        },
        attrs={**attrs, **describe(settings, gradient), "chance": chance},
    )
    return ds


def describe(settings: AttackSettings, gradient: str) -> dict[str, str]:
    """Human-readable attrs: how each number was obtained."""
    start = "uniform random start in the epsilon-ball" if settings.random_start else "no random start"
    return {
        "gradient": gradient,
        "attacks_space": "L-infinity, [0, 1] pixel space, adversarial images clipped to [0, 1]",
        "pgd": f"{settings.pgd_steps} sign-gradient steps of alpha = {settings.step_ratio} * epsilon, projection onto "
               f"the epsilon-ball, {start}; the last iterate is evaluated; loss: cross-entropy of the mean read-out",
        "spgd": "the same PGD over the stronger range [0, spgd_max]",
        "fgsm": "one sign-gradient step of size epsilon",
        "transfer": "PGD (same settings) computed on the ANN twin (same architecture and flex flag, ann mode, same "
                    "seed) and evaluated on this model",
        "square": f"Square attack (L-infinity, margin loss, AutoAttack p schedule, p_init={settings.square_p_init}), "
                  f"{settings.square_queries} queries per image, no gradients",
        "auc_definition": "trapezoid rule of accuracy over epsilon, not normalised; auc_normalised = auc / epsilon range",
        "worst_definition": "per image: correct clean and under every attack run at the same epsilon (PGD grid)",
        "sanity_definition": "pass if (1) the lowest accuracy of any attack at its largest epsilon <= chance + tol, "
                             "(2) PGD/SPGD accuracy never rises with epsilon by more than tol, (3) no black-box attack "
                             f"beats white-box PGD by more than tol; tol = {settings.sanity_tolerance}",
        "analysis_settings": settings_json(settings),
    }


def robustness(model: SpikingVGG, split: Split, settings: AttackSettings, *, twin: SpikingVGG | None = None,
               attrs: dict[str, str] | None = None, progress: bool = False) -> xr.Dataset:
    """Select the images, run the sweep and return the Dataset (see :func:`robustness_dataset`)."""
    images, index = select_images(split, settings.n_images, settings.seed)
    correct, clean, gradient = sweep(model, images, settings, twin=twin, progress=progress)
    extra = dict(attrs or {})
    if model.cfg.spiking and model.cfg.encoding is Encoding.POISSON:
        extra["encoding_note"] = ("Poisson encoding: every forward pass draws new input spikes; each gradient and "
                                  "each accuracy is one draw (no expectation over the draws), so treat with care")
    if twin is not None:
        extra.setdefault("transfer_source", f"ANN twin: {twin.cfg.arch.value}, width {twin.cfg.width}, "
                                            f"flex={twin.cfg.flex}, mode={twin.cfg.mode.value}")
    return robustness_dataset(correct, clean, settings, image_index=index, labels=images.labels.cpu().numpy(),
                              num_classes=model.cfg.num_classes, gradient=gradient, attrs=extra)
