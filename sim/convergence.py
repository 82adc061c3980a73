"""Convergence in dt: one table of ``sim.nc`` results, models x ticks per step (docs/model.md, "Time").

``python -m sim.convergence OUT.nc LABEL=SIM_DIR [LABEL=SIM_DIR ...]`` collects the ``sim.nc`` files
found under each ``SIM_DIR/k{K}/`` (written by ``bioflexnet sim RUN --mode biophysical --ticks K
--out SIM_DIR/k{K}``) into one xarray Dataset: class agreement with the float64 PyTorch reference of
the export (the network at its *trained* resolution), the same on the images the reference is
confident about (its top-two logit margin at least the median: the flips at finer dt are mostly among
the others, README "Fidelity"), Brian2 and PyTorch accuracy, and the per-layer ratio of Brian2's to
PyTorch's firing rate, with ``dt`` in ms and the trained ``K`` of each model. Torch-free.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr


def confident_agreement(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Class agreement on the images whose reference margin (top-1 minus top-2 logit) is at least the median."""
    top = np.sort(reference_logits, axis=1)
    margin = top[:, -1] - top[:, -2]
    confident = margin >= np.median(margin)
    return float(np.mean(logits[confident].argmax(1) == reference_logits[confident].argmax(1)))


def convergence_dataset(results: dict[str, dict[int, xr.Dataset]]) -> xr.Dataset:
    """``{model label: {K: sim.nc dataset}}`` -> Dataset over ``(model, ticks[, layer])``."""
    models = list(results)
    ks = sorted({k for r in results.values() for k in r})
    layers = list(dict.fromkeys(la for r in results.values() for ds in r.values() for la in ds.layer.values))
    shape = (len(models), len(ks))
    agree, confident, acc, ref_acc, step_ms = (np.full(shape, np.nan) for _ in range(5))
    ratio = np.full((*shape, len(layers)), np.nan)
    trained = np.zeros(len(models), dtype=np.int64)
    n_images = set()
    for i, m in enumerate(models):
        for k, ds in results[m].items():
            j = ks.index(k)
            agree[i, j] = float(ds.class_agreement)
            confident[i, j] = confident_agreement(ds.logits.values, ds.reference_logits.values)
            acc[i, j], ref_acc[i, j] = float(ds.accuracy), float(ds.reference_accuracy)
            step_ms[i, j] = float(ds.attrs.get("step_ms", np.nan))
            for la, r, ref in zip(ds.layer.values, ds.firing_rate.values, ds.reference_firing_rate.values):
                ratio[i, j, layers.index(la)] = r / ref if ref > 0 else np.nan
            trained[i] = int(ds.attrs.get("trained_ticks", trained[i] or 1))
            n_images.add(int(ds.attrs["n_images"]))
    dt = np.nanmean(step_ms, axis=0) / np.asarray(ks)
    from core.results import provenance

    return xr.Dataset(
        {"class_agreement": (("model", "ticks"), agree, {"long_name": "fraction of images classified as by the "
                                                                          "PyTorch reference at the trained K",
                                                              "units": "1"}),
         "class_agreement_confident": (("model", "ticks"), confident,
                                       {"long_name": "class agreement on the images whose reference top-two "
                                                     "logit margin is at least the median", "units": "1"}),
         "accuracy": (("model", "ticks"), acc, {"long_name": "Brian2 top-1 accuracy", "units": "1"}),
         "reference_accuracy": (("model", "ticks"), ref_acc,
                                {"long_name": "PyTorch top-1 accuracy (trained K) on the same images", "units": "1"}),
         "rate_ratio": (("model", "ticks", "layer"), ratio,
                        {"long_name": "Brian2 firing rate / PyTorch firing rate", "units": "1"}),
         "trained_ticks": (("model",), trained, {"long_name": "ticks per step the model was trained at", "units": "1"})},
        coords={"model": models, "ticks": ("ticks", ks, {"long_name": "ticks per step K", "units": "1"}),
                "dt_ms": ("ticks", dt, {"long_name": "simulation time step dt = step / K", "units": "ms"}),
                "layer": layers},
        attrs={**provenance(), "n_images": ",".join(str(n) for n in sorted(n_images))})


def collect(dirs: dict[str, Path]) -> dict[str, dict[int, xr.Dataset]]:
    """``SIM_DIR/k{K}/sim.nc`` of every label."""
    from core.results import read_dataset

    out: dict[str, dict[int, xr.Dataset]] = {}
    for label, folder in dirs.items():
        out[label] = {}
        for path in sorted(Path(folder).glob("k*/sim.nc")):
            ds = read_dataset(path)
            out[label][int(ds.attrs["ticks"])] = ds
        if not out[label]:
            raise FileNotFoundError(f"{folder} holds no k*/sim.nc; simulate with --out {folder}/k{{K}} first.")
    return out


def main(argv: list[str]) -> None:
    out, pairs = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    from core.results import write_dataset

    ds = convergence_dataset(collect({label: Path(folder) for label, folder in pairs}))
    write_dataset(ds, out)
    print(ds.class_agreement.to_pandas().round(3).to_string())
    print(f"written to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
