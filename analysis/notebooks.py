"""Run the figure notebooks with papermill (``bioflexnet figures``).

Each notebook in ``notebooks/`` has one cell tagged ``parameters`` (``root``:
the output root of ``bioflexnet reproduce``; ``out_dir``: where figures go)
followed by calls and plots. Executed copies and the figures land in
``ROOT/figures/``. A notebook whose input files are missing is skipped with a
message, so the figures of the finished stages are still made.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from core.errors import CLIError
from core.results import atomic_path

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
# files a notebook reads when they are there
OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {"fidelity": ("*/seed*/sim/exact_plasticity/sim.nc",)}


class NotebookError(CLIError):
    """A figure notebook failed; the message says which and why, in one line."""


def check_inputs(root: Path, name: str) -> None:
    """Read every result file notebook ``name`` reads, before it runs: a corrupt one raises
    :class:`core.results.ResultFileError` naming the file and the command that regenerates it."""
    from core.results import read_dataset

    for pattern in NOTEBOOKS[name] + OPTIONAL_INPUTS.get(name, ()):
        for path in sorted(root.glob(pattern)):
            read_dataset(path)


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
            if only:  # asked for by name: its absence is an error, not a skip
                raise NotebookError(f"notebook {name} needs {', '.join(missing)} under {root}, which has none; "
                                    "run `bioflexnet reproduce` for that root first (or give the root that holds them).")
            print(f"figures: skipping {name}: no {', '.join(missing)} under {root}", flush=True)
            continue
        check_inputs(root, name)
        target = out_dir / f"{name}.ipynb"
        with atomic_path(target) as tmp:
            try:
                papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(tmp),
                                           parameters={"root": str(root.resolve()), "out_dir": str(out_dir.resolve()),
                                                       **(parameters or {})},
                                           kernel_name="python3", progress_bar=False, cwd=str(out_dir))
            except papermill.PapermillExecutionError as exc:
                raise NotebookError(f"notebook {name} failed on the results under {root}: {exc.ename}: "
                                    f"{str(exc.evalue).splitlines()[0] if exc.evalue else ''}") from None
        print(f"figures: {name} -> {target}", flush=True)
        done.append(target)
    return done
