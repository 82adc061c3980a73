"""Run the figure notebooks with papermill (``bioflexnet figures``).

Each notebook in ``notebooks/`` has one cell tagged ``parameters`` (``root``:
the output root of ``bioflexnet reproduce``; ``out_dir``: where figures go)
followed by calls and plots. Executed copies and the figures land in
``ROOT/figures/``. A notebook whose input files are missing is skipped with a
message, so the figures of the finished stages are still made.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from training.results import atomic_path

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# name -> files under ROOT that the notebook reads (glob patterns)
NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "fig3_training": ("*/seed*/metrics.nc",),
    "fig4_robustness": ("robustness.nc",),
    "fig5_sparsity": ("sparsity.nc",),
    "fig6_landscape": ("landscape.nc",),
    "fidelity": ("sim_summary.nc",),
    "claims": ("claims.nc",),
}


def run_notebooks(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  only: Sequence[str] | None = None, parameters: dict[str, Any] | None = None) -> list[Path]:
    """Execute the figure notebooks for ``root``; returns the executed notebooks' paths."""
    import papermill

    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root / "figures"
    names = list(only) if only else list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; choose from {sorted(NOTEBOOKS)}.")
    if not NOTEBOOK_DIR.is_dir():
        raise FileNotFoundError(f"{NOTEBOOK_DIR} is missing: run from a source checkout of bioflexnet.")
    done = []
    for name in names:
        missing = [pat for pat in NOTEBOOKS[name] if not any(root.glob(pat))]
        if missing:
            print(f"figures: skipping {name}: no {', '.join(missing)} under {root}", flush=True)
            continue
        target = out_dir / f"{name}.ipynb"
        with atomic_path(target) as tmp:
            papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(tmp),
                                       parameters={"root": str(root.resolve()), "out_dir": str(out_dir.resolve()),
                                                   **(parameters or {})},
                                       kernel_name="python3", progress_bar=False, cwd=str(out_dir))
        print(f"figures: {name} -> {target}", flush=True)
        done.append(target)
    return done


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="regenerate the paper figures with papermill",
                       description="Execute the notebooks in notebooks/ on the results under ROOT.")
    p.add_argument("root", type=Path, help="output root of `bioflexnet reproduce` (e.g. runs/quick)")
    p.add_argument("--out", type=Path, default=None, help="figure directory (default ROOT/figures)")
    p.add_argument("--only", nargs="+", choices=sorted(NOTEBOOKS), default=None)
    p.set_defaults(func=lambda args: run_notebooks(args.root, args.out, args.only))


def run_stage(root: Path, run_dirs: dict, *, profile: str, data_dir: Path | None, device: str) -> None:
    """Last stage of ``bioflexnet reproduce``: every figure."""
    run_notebooks(root)
