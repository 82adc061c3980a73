"""Cross-check of the project's attacks against a maintained library, on the images ``bioflexnet attack`` uses.

    python -m analysis.crosscheck RUN_DIR [--robustness robustness.nc] [--n-images 200] [--eps 1 2 4 8] \\
        [--out table.nc]

Per ε (in units of 1/255), on the first ``--n-images`` images of the class-balanced selection
(:func:`analysis.robustness.select_images`, the same images for every model), top-1 accuracy under:

* ``pgd10_last`` / ``pgd10_best``: 10-step PGD, α = ε/4, random start, last / best iterate (ours);
* ``apgd_ce50``: our APGD-CE, 50 iterations;
* ``apgd_ce50_torchattacks``: torchattacks' ``APGD`` (a port of AutoAttack's), 50 iterations, 1 restart,
  when torchattacks imports (install it with ``pip install --no-deps torchattacks``: it needs no torchvision);
* ``apgd_ce50_art``: IBM ART's ``AutoProjectedGradientDescent`` (cross-entropy, 50 iterations, 1 random init,
  first step 2ε; ART returns the last iterate) when ``--art`` is given;
* ``worst``: read from a ``robustness.nc`` written by ``bioflexnet attack`` for the same run (``--robustness``),
  at the same ε exactly.

Every attack gets the gradient path of :func:`analysis.attacks.gradient_model` (BPTT surrogate; the
stbp-mode copy for hybrid models). Only images classified correctly clean are attacked; the others count as
broken. Writes the table as an xarray Dataset (``--out``) and prints it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from analysis.apgd import apgd
from analysis.attacks import gradient_model, pgd_iterates
from analysis.robustness import accuracy_at, select_images
from training.data import load_split, to_float
from training.runs import load_model


def _library_apgd_torchattacks(model, x, y, eps, steps, seed):
    import torchattacks

    attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)
    return attack(x, y), f"torchattacks {torchattacks.__version__} APGD(loss='ce', steps={steps}, n_restarts=1)"


def _library_apgd_art(model, x, y, eps, steps, seed):
    import art
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(seed)  # ART draws its random start from numpy's global generator
    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=int(model.cfg.num_classes), clip_values=(0.0, 1.0), device_type="cpu")
    attack = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
                                          nb_random_init=1, batch_size=len(x), loss_type="cross_entropy",
                                          verbose=False)
    adv = attack.generate(x.cpu().numpy(), y=y.cpu().numpy())
    return (torch.from_numpy(adv).to(x.device),
            f"ART {art.__version__} AutoProjectedGradientDescent(cross_entropy, max_iter={steps}, nb_random_init=1, "
            "eps_step=2 eps)")


def crosscheck(run_dir: Path, *, n_images: int = 200, eps255=(1, 2, 4, 8), robustness: Path | None = None,
               use_art: bool = False, seed: int = 0) -> xr.Dataset:
    model, _ = load_model(run_dir)
    model.eval()
    grad_model, how = gradient_model(model)
    images, index = select_images(load_split("test"), n_images, seed)
    x, y = to_float(images.images), images.labels
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    xs, ys = x[ok], y[ok]
    columns = ["pgd10_last", "pgd10_best", "apgd_ce50"]
    libraries: dict[str, str] = {}
    try:
        import torchattacks  # noqa: F401
        columns.append("apgd_ce50_torchattacks")
    except ImportError:
        pass
    if use_art:
        columns.append("apgd_ce50_art")
    acc = np.full((len(columns), len(eps255)), np.nan)

    def score(adv):
        with torch.no_grad():
            return float((model(adv).argmax(1) == ys).sum()) / n_images

    for k, e in enumerate(eps255):
        eps = e / 255
        gen = torch.Generator().manual_seed(seed)
        it = pgd_iterates(grad_model, xs, ys, eps, steps=10, step_size=eps / 4, random_start=True, generator=gen)
        results = {"pgd10_last": it.last, "pgd10_best": it.best,
                   "apgd_ce50": apgd(grad_model, xs, ys, eps, steps=50, loss="ce",
                                     generator=torch.Generator().manual_seed(seed))}
        if "apgd_ce50_torchattacks" in columns:
            results["apgd_ce50_torchattacks"], libraries["torchattacks"] = _library_apgd_torchattacks(
                grad_model, xs, ys, eps, 50, seed)
        if use_art:
            results["apgd_ce50_art"], libraries["art"] = _library_apgd_art(grad_model, xs, ys, eps, 50, seed)
        for i, name in enumerate(columns):
            adv = results[name].detach()
            assert float((adv - xs).abs().max()) <= eps + 1e-5, f"{name} left the epsilon-ball"
            acc[i, k] = score(adv)
        print(f"  eps={e}/255: " + " ".join(f"{c}={acc[i, k]:.3f}" for i, c in enumerate(columns)), flush=True)
    ds = xr.Dataset({"accuracy": (("attack", "eps255"), acc, {"long_name": "top-1 accuracy under attack", "units": "1"})},
                    coords={"attack": columns, "eps255": ("eps255", list(eps255), {"units": "1/255"})},
                    attrs={"run_dir": str(run_dir), "n_images": n_images, "clean_accuracy": float(ok.float().mean()),
                           "gradient": how, "libraries": "; ".join(libraries.values()),
                           "image_index": index, "seed": seed, "torch_threads": torch.get_num_threads(),
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")})
    return with_worst(ds, robustness) if robustness is not None else ds


def with_worst(table: xr.Dataset, robustness: Path) -> xr.Dataset:
    """The table with a ``worst`` column read from ``bioflexnet attack``'s result on the same images, same ε."""
    rob = xr.open_dataset(robustness, engine="h5netcdf").load()
    index = table.attrs.get("image_index")
    if index is None:  # a table written before the index was stored: the same selection again
        index = select_images(load_split("test"), int(table.attrs["n_images"]), int(table.attrs["seed"]))[1]
    if not np.array_equal(rob.sample.values, np.asarray(index).ravel()):
        raise ValueError(f"{robustness} was computed on other images than the table; run bioflexnet attack with "
                         f"--n-images {table.attrs['n_images']} and the same --seed.")
    worst = [float(accuracy_at(rob, "worst", e / 255)) for e in table.eps255.values]
    attacks = ", ".join(str(a) for a in rob.attack.values if a in ("apgd_ce", "apgd_dlr", "pgd", "square", "transfer"))
    return table.assign(worst=("eps255", worst, {"long_name": "worst-case accuracy from bioflexnet attack",
                                                 "units": "1", "source": str(robustness), "worst_attacks": attacks,
                                                 "analysis_settings": rob.attrs.get("analysis_settings", "")}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--robustness", type=Path, default=None, help="robustness.nc of the same run and images")
    p.add_argument("--n-images", type=int, default=200)
    p.add_argument("--eps", type=int, nargs="+", default=[1, 2, 4, 8], help="epsilons in units of 1/255")
    p.add_argument("--art", action="store_true", help="also run ART's AutoProjectedGradientDescent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reuse", action="store_true",
                   help="take the attack columns from an existing --out table; only (re)read the worst case")
    args = p.parse_args(argv)
    if args.reuse and args.out is not None and args.out.is_file():
        ds = xr.open_dataset(args.out, engine="h5netcdf").load().drop_vars("worst", errors="ignore")
        ds = with_worst(ds, args.robustness) if args.robustness else ds
    else:
        ds = crosscheck(args.run_dir, n_images=args.n_images, eps255=tuple(args.eps), robustness=args.robustness,
                        use_art=args.art, seed=args.seed)
    print(f"{args.run_dir} (clean {ds.attrs['clean_accuracy']:.3f}, {ds.attrs['n_images']} images)")
    table = ds.accuracy.to_pandas().T
    if "worst" in ds:
        table = table.assign(worst=ds.worst.values)
    print(table.round(3).to_string())
    print(f"gradient: {ds.attrs['gradient']}; libraries: {ds.attrs['libraries'] or 'none'}")
    if args.out:
        tmp = args.out.with_suffix(".tmp.nc")
        ds.to_netcdf(tmp, engine="h5netcdf")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
