"""The poster's claims as paired FLEX − VGG differences over seeds, with 95 % intervals (torch-free).

For each claim and mode, the difference ``flex-<mode> − vgg-<mode>`` is taken
per seed (the twins share the seed, the data order and the validation split:
a paired design), then summarised as its mean and a two-sided 95 % Student-t
interval ``mean ± t(0.975, n−1) · sd / sqrt(n)``. The verdict:

* ``holds``: the interval excludes 0 on the side the claim predicts;
* ``fails``: the interval excludes 0 on the other side;
* ``can't tell``: the interval contains 0, or fewer than 2 seeds.

Claims (direction in which FLEX is claimed to be better):

========================  =========================================================  ======
claim                     value per run                                              better
========================  =========================================================  ======
``accuracy``              test accuracy, full test split (``training_summary.nc``)    higher
``robust_auc``            AUC of the per-image worst case over the attacks           higher
``robust_acc_8``          worst-case accuracy at ε = 8/255 exactly                   higher
``spike_rate``            spikes per neuron per step (``sparsity.nc``; SNNs only)    lower
``energy``                estimated synaptic energy per image                        lower
``hessian``               top Hessian eigenvalue of the loss (``landscape.nc``)      lower
========================  =========================================================  ======
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import xarray as xr
from scipy import stats

from core.results import read_dataset
from core.variants import Variant

MODES = ("ann", "hybrid", "stbp")
EPS_8 = 8 / 255


class Claim(NamedTuple):
    name: str
    long_name: str
    units: str
    better: str  # "higher" or "lower"
    source: str  # result file under the reproduce root
    value: Callable[[xr.Dataset], xr.DataArray]  # [variant, seed]


def _worst(ds: xr.Dataset) -> xr.Dataset:
    if "worst" not in ds.attack.values:
        raise KeyError("robustness.nc has no 'worst' attack; run the analyses with the default attack list.")
    return ds.sel(attack="worst")


def _at_eps(ds: xr.Dataset, eps: float) -> xr.DataArray:
    """Worst-case accuracy at exactly ``eps`` (NaN where the grid lacks that point; no nearest neighbour)."""
    w = _worst(ds)
    hit = np.isclose(w.epsilon, eps, rtol=0, atol=1e-9)
    return w.accuracy.where(hit).max("level")  # NaN where no level hits


CLAIMS: tuple[Claim, ...] = (
    Claim("accuracy", "test accuracy", "1", "higher", "training_summary.nc", lambda ds: ds.test_accuracy),
    Claim("robust_auc", "AUC of the worst case over attacks", "1", "higher", "robustness.nc",
          lambda ds: _worst(ds).auc),
    Claim("robust_acc_8", "worst-case accuracy at eps = 8/255", "1", "higher", "robustness.nc",
          lambda ds: _at_eps(ds, EPS_8)),
    Claim("spike_rate", "spikes per neuron per step", "1/step", "lower", "sparsity.nc",
          lambda ds: ds.network_firing_rate),
    Claim("energy", "synaptic energy per image (45 nm estimate)", "pJ", "lower", "sparsity.nc",
          lambda ds: ds.total_energy),
    Claim("hessian", "top Hessian eigenvalue of the loss", "1", "lower", "landscape.nc",
          lambda ds: ds.hessian_top_eigenvalue),
)


class Paired(NamedTuple):
    n: int
    flex: float
    vgg: float
    mean: float
    low: float
    high: float
    verdict: str


def paired_interval(flex: np.ndarray, vgg: np.ndarray, better: str, level: float = 0.95) -> Paired:
    """Mean paired difference ``flex − vgg`` with a two-sided Student-t interval and the verdict."""
    flex, vgg = np.asarray(flex, float), np.asarray(vgg, float)
    ok = np.isfinite(flex) & np.isfinite(vgg)
    d = flex[ok] - vgg[ok]
    n = int(ok.sum())
    if n == 0:
        return Paired(0, np.nan, np.nan, np.nan, np.nan, np.nan, "no data")
    mean = float(d.mean())
    if n < 2:
        return Paired(n, float(flex[ok].mean()), float(vgg[ok].mean()), mean, np.nan, np.nan, "can't tell (1 seed)")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    low, high = mean - half, mean + half
    if low > 0:  # FLEX significantly larger
        verdict = "holds" if better == "higher" else "fails"
    elif high < 0:  # FLEX significantly smaller
        verdict = "holds" if better == "lower" else "fails"
    else:
        verdict = "can't tell"
    return Paired(n, float(flex[ok].mean()), float(vgg[ok].mean()), mean, low, high, verdict)


def claims_dataset(root: str | Path) -> xr.Dataset:
    """Every claim × mode from the combined results under a ``reproduce`` root (missing files give NaN rows)."""
    root = Path(root)
    cache: dict[str, xr.Dataset | None] = {}
    rows = {f: np.full((len(CLAIMS), len(MODES)), np.nan) for f in ("n_seeds", "flex", "vgg", "mean", "low", "high")}
    verdicts = np.full((len(CLAIMS), len(MODES)), "no data", dtype=object)
    for i, claim in enumerate(CLAIMS):
        if claim.name == "spike_rate":
            verdicts[i, MODES.index("ann")] = "n/a (ReLU)"
        if claim.source not in cache:
            path = root / claim.source
            cache[claim.source] = read_dataset(path) if path.is_file() else None
        ds = cache[claim.source]
        if ds is None:
            continue
        values = claim.value(ds)
        for j, mode in enumerate(MODES):
            if claim.name == "spike_rate" and mode == "ann":
                continue
            names = (Variant("flex", mode), Variant("vgg", mode))  # the twins
            if not all(n in values.variant.values for n in names):
                continue
            p = paired_interval(values.sel(variant=names[0]).values, values.sel(variant=names[1]).values, claim.better)
            for key, val in zip(("n_seeds", "flex", "vgg", "mean", "low", "high"), p[:6]):
                rows[key][i, j] = val
            verdicts[i, j] = p.verdict
    dims = ("claim", "mode")
    return xr.Dataset(
        {
            "n_seeds": (dims, rows["n_seeds"], {"long_name": "paired seeds", "units": "1"}),
            "flex_mean": (dims, rows["flex"], {"long_name": "FLEX mean over the paired seeds"}),
            "vgg_mean": (dims, rows["vgg"], {"long_name": "VGG twin mean over the paired seeds"}),
            "difference": (dims, rows["mean"], {"long_name": "mean paired difference FLEX - VGG"}),
            "ci_low": (dims, rows["low"], {"long_name": "lower end of the 95 % Student-t interval of the difference"}),
            "ci_high": (dims, rows["high"], {"long_name": "upper end of the 95 % Student-t interval of the difference"}),
            "verdict": (dims, verdicts.astype(str), {"long_name": "holds / fails / can't tell at 95 %"}),
        },
        coords={"claim": [c.name for c in CLAIMS], "mode": list(MODES),
                "claim_long_name": ("claim", [c.long_name for c in CLAIMS]),
                "units": ("claim", [c.units for c in CLAIMS]),
                "better": ("claim", [c.better for c in CLAIMS], {"long_name": "direction in which FLEX is claimed better"}),
                "source": ("claim", [c.source for c in CLAIMS])},
        attrs={"method": "paired FLEX - VGG difference per seed; mean and two-sided 95 % Student-t interval; "
                         "holds / fails when the interval excludes 0 on the claimed / other side",
               "root": str(root)},
    )


def markdown_table(ds: xr.Dataset) -> str:
    """The claims as a Markdown table (one row per claim and mode)."""
    lines = ["| claim | mode | seeds | FLEX | VGG | FLEX − VGG [95 % CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    for claim in ds.claim.values:
        for mode in ds.mode.values:
            r = ds.sel(claim=claim, mode=mode)
            if int(np.nan_to_num(r.n_seeds.item())) == 0:
                lines.append(f"| {r.claim_long_name.item()} | {mode} | 0 | – | – | – | {r.verdict.item()} |")
                continue
            ci = ("" if np.isnan(r.ci_low.item()) else f" [{_fmt(r.ci_low.item())}, {_fmt(r.ci_high.item())}]")
            lines.append(f"| {r.claim_long_name.item()} ({'↑' if r.better.item() == 'higher' else '↓'}) | {mode} | "
                         f"{int(r.n_seeds.item())} | {_fmt(r.flex_mean.item())} | {_fmt(r.vgg_mean.item())} | "
                         f"{_fmt(r.difference.item(), sign=True)}{ci} | {r.verdict.item()} |")
    return "\n".join(lines)


def _fmt(x: float, sign: bool = False) -> str:
    if not np.isfinite(x):
        return "–"
    text = f"{x:+.3g}" if sign else f"{x:.3g}"
    return text
