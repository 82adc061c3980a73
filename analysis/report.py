"""One-screen text summaries of result Datasets (printed by the CLI and the pipeline)."""
from __future__ import annotations

import numpy as np
import xarray as xr


def robustness_lines(ds: xr.Dataset) -> list[str]:
    """AUC per attack, accuracy at the largest ε, the worst case at 8/255 and the sanity verdict of one run."""
    lines = [f"clean accuracy {float(ds.clean_accuracy):.3f} on {ds.sizes['sample']} images; "
             f"gradient: {ds.attrs['gradient']}",
             f"{'attack':<9} {'eps max':>8} {'acc@max':>8} {'AUC':>8} {'AUC/range':>9}"]
    for a in ds.attack.values:
        row = ds.sel(attack=a)
        lines.append(f"{a:<9} {float(row.epsilon[-1]):8.4f} {float(row.accuracy[-1]):8.3f} {float(row.auc):8.4f} "
                     f"{float(row.auc_normalised):9.3f}")
    if "worst" in ds.attack.values:
        k = int(ds.reference_level)
        lines.append(f"worst-case accuracy at eps=8/255: {float(ds.worst_accuracy_8_255):.3f} "
                     f"(over {int(ds.worst_attacks[k])} attacks; the robustness number)")
    if "eot_draws" in ds and int(ds.eot_draws) > 1:
        lines.append(f"EOT: every gradient averaged over {int(ds.eot_draws)} forward passes (Poisson encoding)")
    lines.append(f"sanity check: {ds.sanity_verdict.item()}")
    return lines


def sparsity_lines(ds: xr.Dataset) -> list[str]:
    lines = [f"{'layer':<11} {'rate/step':>9} {'ACs':>12} {'MACs':>12} {'ANN MACs':>12} {'conv ratio':>10}"]
    for name in ds.layer.values:
        row = ds.sel(layer=name)
        lines.append(f"{name:<11} {float(row.mean_firing_rate):9.4f} {float(row.acs.sum()):12.4g} "
                     f"{float(row.macs.sum()):12.4g} {float(row.ann_macs.sum()):12.4g} "
                     f"{float(row.conv_ratio.mean()):10.3f}")
    lines.append(f"network firing rate {float(ds.network_firing_rate):.4f} spikes/neuron/step; energy estimate "
                 f"{float(ds.total_energy) / 1e6:.3f} uJ/image vs {float(ds.ann_energy) / 1e6:.3f} uJ for the ANN "
                 "(ESTIMATE: 45 nm, 0.9 pJ/AC, 4.6 pJ/MAC, synaptic ops only)")
    return lines


def landscape_lines(ds: xr.Dataset) -> list[str]:
    c = int(np.argmin(np.abs(ds.alpha.values)))  # the trained weights, if the grid holds 0 (odd grid sizes)
    return [f"loss at a=b={float(ds.alpha[c]):.3g}: {float(ds.loss[c, c]):.4f}, range over the {ds.sizes['alpha']}x"
            f"{ds.sizes['beta']} grid [{float(ds.loss.min()):.3f}, {float(ds.loss.max()):.3f}]",
            f"top Hessian eigenvalue {float(ds.hessian_top_eigenvalue):.4g} ({int(ds.hessian_iterations)} power "
            f"iterations, asymmetry {float(ds.hessian_asymmetry):.2g}); gradient: {ds.attrs['gradient']}"]


def results_table(rob: xr.Dataset, spa: xr.Dataset, land: xr.Dataset) -> str:
    """One row per variant and seed: AUCs, worst case, sanity verdict, firing rate, energy, Hessian."""
    attacks = [a for a in ("fgsm", "pgd_last", "spgd") if a in rob.attack.values]  # the paper protocol
    head = (f"\n{'variant':<12} {'seed':>4} {'clean':>6} " + " ".join(f"{'AUC ' + a:>12}" for a in attacks) +
            f" {'worst@8/255':>11} {'rate':>7} {'energy uJ':>9} {'ANN uJ':>7} {'Hessian':>8}  sanity")
    rows = [head]
    for v in rob.variant.values:
        for s in rob.seed.values:
            r, p, lnd = rob.sel(variant=v, seed=s), spa.sel(variant=v, seed=s), land.sel(variant=v, seed=s)
            if bool(r.clean_accuracy.isnull()):
                continue
            worst = "-"
            if "worst" in rob.attack.values:  # 8/255 is a point of every grid (AttackSettings checks it)
                worst = f"{float(r.worst_accuracy_8_255):.3f}"
            rows.append(f"{v:<12} {int(s):>4} {float(r.clean_accuracy):6.3f} " +
                        " ".join(f"{float(r.auc.sel(attack=a)):12.4f}" for a in attacks) +
                        f" {worst:>11} {float(p.network_firing_rate):7.4f} {float(p.total_energy) / 1e6:9.3f} "
                        f"{float(p.ann_energy) / 1e6:7.3f} {float(lnd.hessian_top_eigenvalue):8.3g}  "
                        f"{r.sanity_verdict.item()}")
    return "\n".join(rows)
