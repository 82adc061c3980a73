"""Robustness sweeps: top-1 accuracy per attack and ε, AUC, per-sample worst case, a sanity check.

Definitions (also written into every result's attrs):

* **accuracy** ``[attack, level]``: top-1 accuracy of the model on the
  adversarial images of that attack at ``epsilon[attack, level]``. Attacks
  run on the images classified correctly clean; an image misclassified clean
  counts as broken at every ε > 0 (AutoAttack's convention). The attacks of
  the worst case also count an image as broken at ε when they broke it at a
  smaller ε of the grid (the L∞ balls are nested, so that image is a valid
  adversarial at ε), and do not attack it again.
* **worst** (the robustness claim, docs/model.md, "Attacks"): per image, correct only if
  it is correct clean *and* under every one of APGD-CE, APGD-DLR,
  best-iterate PGD, Square and transfer that was run (all on the common L∞
  grid, which holds 8/255 exactly: ``worst_accuracy_8_255``).
* **paper protocol**: the original authors' FGSM, last-iterate PGD
  (``pgd_last``) and SPGD curves and their AUCs, kept for comparison with the
  paper, not as the claim.
* **AUC**: trapezoid rule of accuracy over ε, *not* normalised (accuracy × ε);
  ``auc_normalised`` divides by the ε range, i.e. the mean accuracy over
  the sweep, comparable between attacks with different ranges.
* **sanity check** (weak or masked attacks, Carlini et al. 2019 §4): (1) the
  lowest accuracy any attack reaches at its largest ε must be ≤ chance + tol;
  (2) the iterative white-box attacks must not gain accuracy with ε by more
  than tol; (3) on the common grid, no black-box attack (transfer, Square) may
  beat the strongest white-box attack by more than tol; (4) within the family
  of iterative white-box L∞ attacks (last- and best-iterate PGD, APGD-CE,
  APGD-DLR) no attack may leave more than tol more images correct than
  another at the same ε, and a strong member (not last-iterate PGD alone) must
  have been run.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import xarray as xr

from analysis.apgd import apgd
from analysis.attacks import Iterates, fgsm, gradient_model, pgd_iterates, square
from analysis.settings import REFERENCE_EPSILON, AttackSettings, settings_json
from core.config import Encoding
from training.data import Split, subset, to_float
from training.models import SpikingVGG

BLACK_BOX = ("transfer", "square")
WORST_CASE = ("apgd_ce", "apgd_dlr", "pgd", "square", "transfer")  # the attacks the robustness claim combines
WHITE_BOX_FAMILY = ("pgd_last", "pgd", "apgd_ce", "apgd_dlr")  # iterative white-box L∞, same grid: compared
STRONG_WHITE_BOX = ("pgd", "apgd_ce", "apgd_dlr")
PAPER_PROTOCOL = ("fgsm", "pgd_last", "spgd")  # the original authors' curves and AUCs
# L∞ balls are nested: an adversarial image at ε is one at every larger ε, so these attacks count an image as
# broken at ε if they broke it at any ε' ≤ ε (and skip it there). The paper protocol keeps independent curves.
NESTED = ("pgd", "apgd_ce", "apgd_dlr", "square", "transfer")


def select_images(split: Split, n: int, seed: int = 0) -> tuple[Split, np.ndarray]:
    """A fixed, class-balanced subset of ``n`` images (the same for every variant) and its test-split indices."""
    # data.subset indexes split.images with the kept positions; giving it the positions themselves returns them.
    positions = Split(torch.arange(len(split), device=split.labels.device), split.labels)
    index = subset(positions, n, seed).images
    return Split(split.images[index], split.labels[index]), index.cpu().numpy()


def _run_attack(name: str, x: torch.Tensor, y: torch.Tensor, eps: float, s: AttackSettings, draws: int,
                grad_model: torch.nn.Module, target: torch.nn.Module, source: torch.nn.Module | None,
                gen: torch.Generator, pgd_runs: dict[float, Iterates]) -> torch.Tensor:
    step = s.step_ratio * eps
    if name == "fgsm":
        return fgsm(grad_model, x, y, eps, draws=draws)
    if name in ("pgd", "pgd_last"):
        # one PGD run gives both the best and the last iterate (the same random start)
        if eps not in pgd_runs:
            pgd_runs[eps] = pgd_iterates(grad_model, x, y, eps, steps=s.pgd_steps, step_size=step,
                                         random_start=s.random_start, generator=gen, draws=draws)
        return pgd_runs[eps].best if name == "pgd" else pgd_runs[eps].last
    if name == "spgd":  # the authors' protocol: the last iterate
        return pgd_iterates(grad_model, x, y, eps, steps=s.pgd_steps, step_size=step, random_start=s.random_start,
                            generator=gen, draws=draws).last
    if name in ("apgd_ce", "apgd_dlr"):
        return apgd(grad_model, x, y, eps, steps=s.apgd_steps, loss=name.split("_")[1], generator=gen, draws=draws)
    if name == "transfer":
        # the last iterate, as before: the best iterate on the source model need not transfer better
        return pgd_iterates(source, x, y, eps, steps=s.pgd_steps, step_size=step, random_start=s.random_start,
                            generator=gen).last
    return square(target, x, y, eps, queries=s.square_queries, p_init=s.square_p_init, generator=gen)


def eot_draws(model: SpikingVGG, settings: AttackSettings) -> int:
    """Forward passes averaged per gradient: ``settings.eot_draws`` for a random (Poisson) forward pass, else 1."""
    return settings.eot_draws if model.cfg.spiking and model.cfg.encoding is Encoding.POISSON else 1


def sweep(model: SpikingVGG, split: Split, settings: AttackSettings, *, twin: SpikingVGG | None = None,
          progress: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Run every attack at every ε of its grid on every image classified correctly clean.

    Returns
    -------
    correct
        ``[attack, level, sample]`` bool: the model classifies the adversarial image correctly (False for an
        image misclassified clean, at every ε > 0).
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
    draws = eot_draws(model, settings)
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
        ok = logits.argmax(1) == y
        clean[sl] = ok.cpu().numpy()
        keep = ok.nonzero().squeeze(1)
        rows = np.arange(n)[sl][ok.cpu().numpy()]
        if keep.numel() == 0:
            continue
        x, y = x[keep], y[keep]
        pgd_runs: dict[float, Iterates] = {}
        for i, name in enumerate(settings.attacks):
            alive = np.ones(len(rows), dtype=bool)  # not yet broken by this attack at a smaller ε
            for k, eps in enumerate(settings.epsilons(name)):
                if eps == 0:
                    correct[i, k, rows] = True
                    continue
                # a nested attack attacks only the images it has not broken at a smaller ε; pgd and pgd_last
                # share one run on every image (pgd_last needs them all)
                todo = alive if name in NESTED and name != "pgd" else np.ones(len(rows), dtype=bool)
                now = np.zeros(len(rows), dtype=bool)
                if todo.any():
                    sub = torch.from_numpy(np.flatnonzero(todo)).to(x.device)
                    xs, ys = (x, y) if todo.all() else (x[sub], y[sub])
                    runs = pgd_runs if todo.all() else {}
                    adv = _run_attack(name, xs, ys, float(eps), settings, draws, grad_model, model, source,
                                      gens[name], runs)
                    with torch.no_grad():
                        now[todo] = (model(adv).argmax(1) == ys).cpu().numpy()
                if name in NESTED:
                    now &= alive
                    alive = now
                correct[i, k, rows] = now
        if progress:
            print(f"  attacked {min(start + settings.batch_size, n)}/{n} images", flush=True)
    return correct, clean, gradient


def worst_case(correct: np.ndarray, clean: np.ndarray, settings: AttackSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample worst case over the :data:`WORST_CASE` attacks run: ``[level, sample]`` and their number."""
    worst = np.repeat(clean[None], settings.n_epsilons, axis=0)
    counted = 0
    for i, name in enumerate(settings.attacks):
        if name in WORST_CASE:
            worst &= correct[i]
            counted += 1
    return worst, np.full(settings.n_epsilons, counted, dtype=np.int64)


def accuracy_at(ds: xr.Dataset, attack: str, epsilon: float = REFERENCE_EPSILON) -> xr.DataArray:
    """Accuracy of ``attack`` at the grid point ``epsilon`` exactly (any extra dims such as variant/seed kept).

    Raises ``KeyError`` if ``epsilon`` is not a point of that attack's grid (no nearest-neighbour guess).
    """
    row = ds.sel(attack=attack)
    eps = row.epsilon
    for dim in ("variant", "seed"):
        if dim in eps.dims:
            eps = eps.max(dim)  # the same grid in every run; NaN for missing runs is skipped
    hit = np.flatnonzero(np.isclose(eps.values, epsilon, rtol=0, atol=1e-9))
    if hit.size != 1:
        raise KeyError(f"epsilon={epsilon:.6g} is not a point of the {attack} grid {np.round(eps.values * 255, 3)}/255.")
    return row.accuracy.isel(level=int(hit[0]))


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
    family_consistent: bool


def _family_gaps(accuracy: dict[str, np.ndarray], eps: np.ndarray | None, tol: float) -> list[str]:
    """Reasons to flag: pairs of iterative white-box attacks whose accuracies differ by more than ``tol``."""
    present = [a for a in WHITE_BOX_FAMILY if a in accuracy]
    reasons = []
    if "pgd_last" in present and not any(a in present for a in STRONG_WHITE_BOX):
        reasons.append("only last-iterate PGD was run: it steps back out of adversarial points on spiking nets, "
                       "so add apgd_ce, apgd_dlr or pgd (best iterate) before trusting the numbers")
    if len(present) < 2:
        return reasons
    curves = np.stack([accuracy[a] for a in present])
    gap = curves.max(0) - curves.min(0)
    k = int(np.argmax(gap))
    if gap[k] > tol:
        weak, strong = present[int(np.argmax(curves[:, k]))], present[int(np.argmin(curves[:, k]))]
        at = f"eps={eps[k] * 255:.3g}/255" if eps is not None else f"level {k}"
        reasons.append(f"{weak} leaves {gap[k]:.3f} more of the images correct than {strong} at {at}: "
                       f"a weak (or masked) attack in the same family; trust the worst case, not {weak}")
    return reasons


def sanity_check(accuracy: dict[str, np.ndarray], chance: float, tol: float,
                 epsilon: np.ndarray | None = None) -> Sanity:
    """Flag signs of weak attacks or gradient masking in per-attack accuracy curves (see the module docstring).

    ``epsilon`` (the common grid, optional) only makes the verdict name the ε of a family gap.
    """
    reasons = []
    attacks = [a for a in accuracy if a != "worst"]
    at_max = {a: float(accuracy[a][-1]) for a in attacks}
    lowest = min(at_max.values())
    reaches = lowest <= chance + tol
    if not reaches:
        reasons.append(f"no attack brings accuracy near chance at its largest ε (lowest {lowest:.3f} by "
                       f"{min(at_max, key=at_max.get)}, chance {chance:.3f}); attacks may be failing")
    monotone = True
    for a in ("pgd", "pgd_last", "spgd", "apgd_ce", "apgd_dlr"):
        if a in accuracy and np.any(np.diff(accuracy[a]) > tol):
            monotone = False
            reasons.append(f"{a} accuracy rises with ε (by up to {np.diff(accuracy[a]).max():.3f})")
    strongest = True
    white = [a for a in WHITE_BOX_FAMILY if a in accuracy]
    if white:
        best_white = np.min(np.stack([accuracy[a] for a in white]), axis=0)
        name = white[0] if len(white) == 1 else "strongest white-box attack"
        for a in BLACK_BOX:
            if a in accuracy:
                gap = float(np.max(best_white - accuracy[a]))
                if gap > tol:
                    strongest = False
                    reasons.append(f"{a} beats white-box {name} by up to {gap:.3f}: the surrogate gradient "
                                   "misleads the white-box attacks")
    family = _family_gaps(accuracy, epsilon, tol)
    reasons += family
    passed = reaches and monotone and strongest and not family
    verdict = "pass" if passed else "FLAGGED: " + "; ".join(reasons)
    clean = max(float(curve[0]) for curve in accuracy.values())  # ε = 0: the clean accuracy
    if passed and clean <= chance + tol:
        verdict += " (uninformative: the clean accuracy is already at chance)"
    return Sanity(passed, verdict, lowest, reaches, monotone, strongest, not family)


def robustness_dataset(correct: np.ndarray, clean: np.ndarray, settings: AttackSettings, *, image_index: np.ndarray,
                       labels: np.ndarray, num_classes: int, gradient: str, attrs: dict[str, str],
                       draws: int = 1) -> xr.Dataset:
    """Assemble the result Dataset (dims ``attack``, ``level``, ``sample``) from a sweep."""
    names = list(settings.attacks)
    if any(a in names for a in WORST_CASE):
        worst, counted = worst_case(correct, clean, settings)
        correct = np.concatenate([correct, worst[None]])
        names.append("worst")
    else:
        counted = np.zeros(settings.n_epsilons, dtype=np.int64)
    eps = np.stack([settings.epsilons(a) for a in names])
    acc = correct.mean(axis=2)
    curves = dict(zip(names, acc))
    chance = 1.0 / num_classes
    grid = settings.epsilons("worst")
    sanity = sanity_check(curves, chance, settings.sanity_tolerance, grid)
    reference = int(np.flatnonzero(grid == REFERENCE_EPSILON)[0])
    worst_8 = float(curves["worst"][reference]) if "worst" in curves else float("nan")
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
            "worst_accuracy_8_255": ((), worst_8, {
                "long_name": "worst-case accuracy at epsilon = 8/255 (its own grid point; NaN without a worst case)",
                "units": "1", "epsilon": REFERENCE_EPSILON}),
            "reference_level": ((), np.int64(reference), {"long_name": "level index of epsilon = 8/255 on the "
                                                                       "common grid"}),
            "eot_draws": ((), np.int64(draws), {"long_name": "forward passes averaged per attack gradient "
                                                             "(expectation over transformation; 1: deterministic model)",
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
                "long_name": "1 if no black-box attack beats the strongest white-box attack by more than tol"}),
            "sanity_family_consistent": ((), np.int8(sanity.family_consistent), {
                "long_name": "1 if the iterative white-box attacks (pgd_last, pgd, apgd_ce, apgd_dlr) agree within tol "
                             "at every epsilon and not only last-iterate PGD was run"}),
        },
        coords={
            "attack": ("attack", names, {"long_name": "attack"}),
            "level": ("level", np.arange(settings.n_epsilons), {"long_name": "index of epsilon in the sweep"}),
            "epsilon": (("attack", "level"), eps, {"long_name": "L-infinity perturbation bound in [0, 1] pixel space",
                                                   "units": "1"}),
            "sample": ("sample", image_index, {"long_name": "index of the image in the CIFAR-10 test split"}),
            "label": ("sample", labels, {"long_name": "true class"}),
        },
        attrs={**attrs, **describe(settings, gradient, draws), "chance": chance},
    )
    return ds


def describe(settings: AttackSettings, gradient: str, draws: int = 1) -> dict[str, str]:
    """Human-readable attrs: how each number was obtained."""
    start = "uniform random start in the epsilon-ball" if settings.random_start else "no random start"
    pgd = (f"{settings.pgd_steps} sign-gradient steps of alpha = {settings.step_ratio} * epsilon, projection onto the "
           f"epsilon-ball, {start}; loss: cross-entropy of the mean read-out")
    return {
        "gradient": gradient,
        "eot": (f"every gradient averaged over {draws} forward passes (Poisson input encoding: expectation over "
                "transformation)" if draws > 1 else "one forward pass per gradient (deterministic model)"),
        "attacks_space": "L-infinity, [0, 1] pixel space, adversarial images clipped to [0, 1]",
        "attacked_images": "attacks run on the images classified correctly clean; an image misclassified clean "
                           "counts as broken at every epsilon > 0 (AutoAttack's convention); apgd_ce, apgd_dlr, pgd, "
                           "square and transfer also count an image broken at a smaller epsilon of the grid as broken "
                           "(nested L-infinity balls) and do not attack it again",
        "pgd": pgd + "; the best iterate per image is evaluated (lowest margin over the start and every step: "
                     "broken if any iterate broke it)",
        "pgd_last": "the same PGD run as pgd, its last iterate evaluated (the original authors' protocol)",
        "spgd": "last-iterate PGD over the stronger range [0, spgd_max] (the original authors' protocol)",
        "fgsm": "one sign-gradient step of size epsilon",
        "apgd_ce": (f"APGD (Croce & Hein 2020, AutoAttack schedule: step 2 epsilon halved at checkpoints, momentum "
                    f"0.75, best point kept), {settings.apgd_steps} iterations, cross-entropy loss, random start"),
        "apgd_dlr": f"APGD as apgd_ce with the difference-of-logits-ratio loss, {settings.apgd_steps} iterations",
        "transfer": "last-iterate PGD (same settings) computed on the ANN twin (same architecture and flex flag, ann "
                    "mode, same seed) and evaluated on this model",
        "square": f"Square attack (L-infinity, margin loss, AutoAttack p schedule, p_init={settings.square_p_init}), "
                  f"{settings.square_queries} queries per image, no gradients",
        "paper_protocol": "fgsm, pgd_last, spgd: the original authors' curves and AUCs, for comparison with the paper; "
                          "not the robustness claim",
        "auc_definition": "trapezoid rule of accuracy over epsilon, not normalised; auc_normalised = auc / epsilon range",
        "worst_definition": "per image: correct clean and under every one of apgd_ce, apgd_dlr, pgd (best iterate), "
                            "square and transfer that was run, at the same epsilon (common grid); the robustness claim",
        "sanity_definition": "pass if (1) the lowest accuracy of any attack at its largest epsilon <= chance + tol, "
                             "(2) no iterative white-box attack's accuracy rises with epsilon by more than tol, (3) no "
                             "black-box attack beats the strongest white-box attack by more than tol, (4) pgd_last, "
                             "pgd, apgd_ce and apgd_dlr agree within tol at every epsilon and not only pgd_last was "
                             f"run; tol = {settings.sanity_tolerance}",
        "analysis_settings": settings_json(settings),
    }


def robustness(model: SpikingVGG, split: Split, settings: AttackSettings, *, twin: SpikingVGG | None = None,
               attrs: dict[str, str] | None = None, progress: bool = False) -> xr.Dataset:
    """Select the images, run the sweep and return the Dataset (see :func:`robustness_dataset`)."""
    images, index = select_images(split, settings.n_images, settings.seed)
    correct, clean, gradient = sweep(model, images, settings, twin=twin, progress=progress)
    extra = dict(attrs or {})
    draws = eot_draws(model, settings)
    if draws > 1:
        extra["encoding_note"] = (f"Poisson encoding: every forward pass draws new input spikes; each attack gradient "
                                  f"averages {draws} draws (EOT), each accuracy is one draw")
    if twin is not None:
        extra.setdefault("transfer_source", f"ANN twin: {twin.cfg.arch.value}, width {twin.cfg.width}, "
                                            f"flex={twin.cfg.flex}, mode={twin.cfg.mode.value}")
    return robustness_dataset(correct, clean, settings, image_index=index, labels=images.labels.cpu().numpy(),
                              num_classes=model.cfg.num_classes, gradient=gradient, attrs=extra, draws=draws)
