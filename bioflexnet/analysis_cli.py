"""``bioflexnet attack | sparsity | landscape RUN_DIR``: analyse one trained run, write a netCDF result.

Settings default to the preset of the run's own profile (``analysis.settings``);
every option overrides one field. Results go to ``RUN_DIR/<analysis>.nc``
(or ``--out``), written atomically: an interrupted command leaves no file.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from analysis.settings import ATTACKS, GRADIENTS, settings_for
from core.config import PROFILES
from core.validate import finite_float, int_in, positive_int, seed_int


def epsilon(text: str) -> float:
    """An ε given as a number or a fraction such as ``8/255``."""
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an epsilon; give a number or a fraction such as 8/255")
    return value  # its range is the settings' to check (analysis.settings), with the field's name


def _common(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("run_dir", type=Path, help="a trained run directory (holds checkpoint.pt)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="preset of the analysis settings (default: the run's own profile)")
    p.add_argument("--out", type=Path, default=None, help=f"result file (default RUN_DIR/{default_name})")
    p.add_argument("--seed", type=seed_int, default=None, help="seed of the image choice and random draws (default 0)")
    p.add_argument("--n-images", dest="n_images", type=positive_int, default=None, help="images analysed")
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=None)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--device", default="auto")


def _settings(args: argparse.Namespace, kind: str):
    """The run's (or --profile's) preset with every given option replaced, validated again."""
    from core.validate import output_file
    from training.runs import run_config

    if args.out is not None:
        output_file(args.out)  # before the analysis: a bad --out must not cost its run
    preset = getattr(settings_for(args.profile or run_config(args.run_dir).profile), kind)
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(preset)
               if getattr(args, f.name, None) is not None}
    return dataclasses.replace(preset, **changes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="robustness sweep: APGD-CE/DLR, PGD, Square, transfer, worst case; the paper's "
                                      "FGSM/PGD/SPGD",
                       description="Top-1 accuracy under attack per epsilon, per-sample worst case over APGD-CE, "
                                   "APGD-DLR, best-iterate PGD, Square and transfer (the robustness number, at 8/255 "
                                   "in worst_accuracy_8_255), the paper protocol's FGSM/last-iterate PGD/SPGD curves "
                                   "and AUCs, and a weak-attack / gradient-masking sanity check; writes robustness.nc.")
    _common(p, "robustness.nc")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=None, help="attacks to run (default: all)")
    p.add_argument("--n-epsilons", dest="n_epsilons", type=int_in(2), default=None, help="epsilon values per attack")
    p.add_argument("--fgsm-max", dest="fgsm_max", type=epsilon, default=None, help="largest FGSM epsilon (paper 0.64)")
    p.add_argument("--pgd-max", dest="pgd_max", type=epsilon, default=None,
                   help="largest epsilon of the common grid of every attack but FGSM and SPGD, and of the worst case "
                        "(paper 23/255, e.g. 8/255); the grid must hold 8/255")
    p.add_argument("--spgd-max", dest="spgd_max", type=epsilon, default=None, help="largest SPGD epsilon (paper 0.5)")
    p.add_argument("--pgd-steps", dest="pgd_steps", type=positive_int, default=None, help="PGD iterations (paper 20)")
    p.add_argument("--step-ratio", dest="step_ratio", type=finite_float(positive=True), default=None, help="PGD alpha / epsilon (paper 0.25)")
    p.add_argument("--random-start", dest="random_start", action=argparse.BooleanOptionalAction, default=None,
                   help="PGD from a uniform random point of the epsilon-ball (default on)")
    p.add_argument("--apgd-steps", dest="apgd_steps", type=positive_int, default=None, help="APGD iterations (paper 100)")
    p.add_argument("--eot-draws", dest="eot_draws", type=positive_int, default=None,
                   help="Poisson-encoded models: forward passes averaged per gradient (paper 10)")
    p.add_argument("--square-queries", dest="square_queries", type=positive_int, default=None, help="paper 5000")
    p.add_argument("--gradient", choices=GRADIENTS, default=None,
                   help="hybrid models: bptt = BPTT surrogate gradient of an stbp copy (default), native = the "
                        "training backward")
    p.add_argument("--twin", type=Path, default=None,
                   help="run directory of the ANN twin for the transfer attack (default ../../{vgg|flex}-ann/seedN)")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("sparsity", help="firing rates, spike rasters, synaptic operations, energy estimate",
                       description="Per-layer and per-step firing rates, rasters of sampled neurons, ACs/MACs per "
                                   "image and a 45 nm energy estimate; writes sparsity.nc.")
    _common(p, "sparsity.nc")
    p.add_argument("--raster-images", dest="raster_images", type=int_in(0), default=None)
    p.add_argument("--raster-neurons", dest="raster_neurons", type=positive_int, default=None, help="sampled neurons per layer")
    p.set_defaults(func=cmd_sparsity)

    p = sub.add_parser("landscape", help="loss surface along filter-normalised directions, top Hessian eigenvalue",
                       description="Loss on a grid x grid lattice along two filter-normalised random directions "
                                   "(Li et al. 2018) and the top Hessian eigenvalue; writes landscape.nc.")
    _common(p, "landscape.nc")
    p.add_argument("--grid", type=int, default=None, help="points per axis (>= 2)")
    p.add_argument("--span", type=finite_float(positive=True), default=None, help="the grid covers [-span, span] (default 1)")
    p.add_argument("--hessian-iterations", dest="hessian_iterations", type=int_in(0), default=None, help="0 skips it")
    p.add_argument("--hessian-tolerance", dest="hessian_tolerance", type=finite_float(positive=True), default=None)
    p.add_argument("--gradient", choices=GRADIENTS, default=None, help="hybrid models: as for attack")
    p.set_defaults(func=cmd_landscape)


def _write(ds, path: Path, lines: list[str]) -> None:
    from core.results import write_dataset

    write_dataset(ds, path)
    print("\n".join(lines + [f"written to {path}"]))


def cmd_attack(args: argparse.Namespace) -> None:
    from analysis.report import robustness_lines
    from analysis.runner import ROBUSTNESS, attack_run
    from training.devices import torch_device as _device

    settings = _settings(args, "attack")
    ds = attack_run(args.run_dir, settings, data_dir=args.data_dir, device=_device(args.device),
                    twin_dir=args.twin, progress=True)
    _write(ds, args.out or args.run_dir / ROBUSTNESS, robustness_lines(ds))


def cmd_sparsity(args: argparse.Namespace) -> None:
    from analysis.report import sparsity_lines
    from analysis.runner import SPARSITY, sparsity_run
    from training.devices import torch_device as _device

    ds = sparsity_run(args.run_dir, _settings(args, "sparsity"), data_dir=args.data_dir, device=_device(args.device))
    _write(ds, args.out or args.run_dir / SPARSITY, sparsity_lines(ds))


def cmd_landscape(args: argparse.Namespace) -> None:
    from analysis.report import landscape_lines
    from analysis.runner import LANDSCAPE, landscape_run
    from training.devices import torch_device as _device

    ds = landscape_run(args.run_dir, _settings(args, "landscape"), data_dir=args.data_dir, device=_device(args.device))
    _write(ds, args.out or args.run_dir / LANDSCAPE, landscape_lines(ds))
