"""What a reproduction runs: the runs, their ``bioflexnet`` commands and the files they make (torch-free).

A :class:`Plan` is made from the options of ``bioflexnet reproduce`` and handed to the Snakefile
(``bioflexnet/workflow/Snakefile``) as Snakemake's ``config["plan"]``; the Snakefile turns it into rules.
Every job is one ``bioflexnet`` command, so each result file traces to the command that wrote it
(Snakemake prints it, and ``--dry-run`` lists them all):

========================  ===================================================================
job (rule)                command, per run ``<variant>/seed<N>`` (or ``ablation-<name>/seed<N>``)
========================  ===================================================================
``train``                 ``bioflexnet train ... --continue``            -> ``metrics.nc``, ``checkpoint.pt``
``export``                ``bioflexnet export RUN --images N``           -> ``export.npz`` (first seed, stbp)
``simulate``              ``bioflexnet sim RUN --out RUN/sim/<job> ...`` -> ``sim/<job>/sim.nc``
``robustness`` ...        ``bioflexnet attack | sparsity | landscape``   -> ``<analysis>.nc``
``combine_*``             ``bioflexnet combine KIND ROOT``               -> the ``ROOT/*.nc`` tables
``figure``                ``bioflexnet figures ROOT --only NAME``        -> ``figures/<NAME>.ipynb``
========================  ===================================================================
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from core.config import PROFILES, make_config
from core.variants import ABLATIONS, PAPER_VARIANTS, SIM_VARIANTS, RunLayout, Variant

SOURCE_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = SOURCE_ROOT / "notebooks"


class SimPlan(NamedTuple):
    images: int  # reference images exported and simulated at the trained resolution
    bio_images: int  # images per biophysical run
    ticks: tuple[int, ...]  # biophysical dt = step / K for each K (delta synapses)
    pulse_ticks: int  # the K of the one biophysical run with pulse synapses


# quick and paper: 200 images per Brian2 run, so a class agreement near 0.95 has a standard error of ~0.015
SIM_PLANS = {"smoke": SimPlan(8, 4, (1, 4), 4), "quick": SimPlan(200, 200, (1, 4, 16), 4),
             "paper": SimPlan(200, 200, (1, 4, 16), 4)}

# notebook -> the combined files it reads (and, for the training figure, every run's metrics.nc)
NOTEBOOK_INPUTS: dict[str, tuple[str, ...]] = {
    "fig3_training": (), "fig4_robustness": ("robustness.nc",), "fig5_sparsity": ("sparsity.nc",),
    "fig6_landscape": ("landscape.nc",), "fidelity": ("sim_summary.nc",), "claims": ("claims.nc",),
}


def code_version(*paths: str) -> str:
    """SHA-256 (16 hex digits) of the Python code under ``paths`` (packages or files, relative to the source
    root): a job whose code changed is run again (Snakemake's ``params`` trigger). The code is hashed as
    its syntax tree without docstrings, so comments, docstrings and layout do not re-run anything."""
    h = hashlib.sha256()
    for rel in paths:
        target = SOURCE_ROOT / rel
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for f in files:
            h.update(str(f.relative_to(SOURCE_ROOT)).encode())
            h.update(_code_only(f.read_text()).encode())
    return h.hexdigest()[:16]


def _code_only(source: str) -> str:
    """The syntax tree of ``source`` without docstrings, as text."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """CPU threads each training process gets (OMP_NUM_THREADS): numbers depend on it, so it is recorded."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, jobs))


@dataclass(frozen=True)
class Plan:
    """The options of one reproduction (see the module docstring)."""

    profile: str = "quick"
    seeds: tuple[int, ...] = (0,)
    ablations: bool = False
    overrides: tuple[str, ...] = ()
    device: str = "cpu"  # torch device of training and analyses
    brian_device: str = "runtime"  # Brian2 device of the simulations
    data_dir: str | None = None
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "overrides", tuple(str(o) for o in self.overrides))
        object.__setattr__(self, "cores", int(self.cores))
        # values that went through Snakemake's --config come back as YAML scalars
        object.__setattr__(self, "data_dir", None if self.data_dir in (None, "", "null", "None") else str(self.data_dir))
        object.__setattr__(self, "ablations", self.ablations in (True, "True", "true"))
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r} is not one of {sorted(PROFILES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {list(self.seeds)}: give at least one seed, each once")
        for name, seed in self.all_runs():
            self.config(name, seed)  # every run's config validated before anything starts

    # --- passing the plan to Snakemake -------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**d)

    # --- the runs ----------------------------------------------------------------------------------------
    def runs(self) -> list[tuple[Variant, int]]:
        """The six paper variants for every seed (seed-major: the claims need all variants of a seed)."""
        return [(v, s) for s in self.seeds for v in PAPER_VARIANTS]

    def ablation_runs(self) -> list[tuple[str, int]]:
        return [(f"ablation-{a}", s) for s in self.seeds for a in ABLATIONS] if self.ablations else []

    def all_runs(self) -> list[tuple[str, int]]:
        return [*self.runs(), *self.ablation_runs()]

    def sim_runs(self) -> list[tuple[Variant, int]]:
        """Simulated in Brian2: the stbp twins of the first seed (the fidelity checks need no more)."""
        return [(v, self.seeds[0]) for v in SIM_VARIANTS]

    def _variant_and_overrides(self, name: str) -> tuple[Variant, tuple[str, ...]]:
        if name.startswith("ablation-"):
            ablation = ABLATIONS[name.removeprefix("ablation-")]
            return ablation.base, (*self.overrides, *ablation.overrides)
        return Variant.parse(name), self.overrides

    def config(self, name: str, seed: int):
        variant, overrides = self._variant_and_overrides(name)
        return make_config(self.profile, mode=variant.mode.value, flex=variant.flex, seed=seed,
                           overrides=(*variant.model_overrides(), *overrides))

    @property
    def train_threads(self) -> int:
        return threads_per_job(min(len(self.all_runs()), self.cores), self.cores)

    # --- the commands ------------------------------------------------------------------------------------
    def data_args(self) -> list[str]:
        return ["--data-dir", self.data_dir] if self.data_dir else []

    def train_args(self, name: str, seed: int) -> list[str]:
        variant, overrides = self._variant_and_overrides(name)
        args = ["--profile", self.profile, "--seed", str(seed), *variant.train_options()]
        for item in overrides:
            args += ["--set", item]
        return args + ["--device", self.device, *self.data_args()]

    @property
    def sim_plan(self) -> SimPlan:
        return SIM_PLANS.get(self.profile, SIM_PLANS["quick"])

    def sim_jobs(self, name: str, seed: int) -> dict[str, list[str]]:
        """``{job: bioflexnet sim options}`` of one run; ``exact`` is the trained dynamics (a network trained
        at K > 1 ticks per step: the biophysical mode at its K, the sim command's default)."""
        cfg, plan = self.config(name, seed), self.sim_plan
        common = ["--device", self.brian_device, "--images", str(plan.images)]
        jobs = {"exact": [*common]}
        if cfg.model.flex:  # mask trajectories under online plasticity (fidelity figure)
            jobs["exact_plasticity"] = [*common, "--plasticity", "--no-spikes"]
        if 0.0 < cfg.model.beta < 1.0:
            bio = ["--device", self.brian_device, "--images", str(plan.bio_images), "--mode", "biophysical",
                   "--no-spikes"]
            for k in sorted(set(plan.ticks) | {cfg.model.ticks}):
                jobs[f"biophysical_k{k}"] = [*bio, "--ticks", str(k)]
            k = plan.pulse_ticks
            jobs[f"biophysical_pulse_k{k}"] = [*bio, "--ticks", str(k), "--synapse", "pulse"]
        return jobs

    def analysis_args(self, name: str, seed: int) -> list[str]:
        return ["--device", self.device, *self.data_args()]

    def twin(self, name: str, seed: int) -> str | None:
        """The run directory (relative) of a run's ANN twin, the transfer attack's source, if planned."""
        twin = Variant.parse(name).ann_twin
        return RunLayout.run_name(twin, seed) if (twin, seed) in self.runs() else None

    # --- the files ---------------------------------------------------------------------------------------
    def targets(self) -> list[str]:
        """Every final file of the reproduction (Snakemake's ``rule all``), relative to the root."""
        files = [RunLayout.TRAINING_SUMMARY, *RunLayout.ANALYSES, RunLayout.CLAIMS, "claims.md",
                 RunLayout.SIM_SUMMARY, *(RunLayout.figure(n) for n in NOTEBOOK_INPUTS)]
        if self.ablations:
            files += [RunLayout.ABLATIONS, "ablations.md"]
        return files

    def costliest(self) -> list[str]:
        """The trainings to start first (flex stbp and hybrid, about twice the others' time): with the
        longest jobs first, parallel workers finish together (Snakemake's ``--prioritize``)."""
        return [RunLayout.in_run(v, s, RunLayout.METRICS) for v, s in self.runs()
                if v.flex and v.mode.value in ("stbp", "hybrid")]

    def sim_results(self) -> dict[tuple[str, int], dict[str, str]]:
        return {(v, s): {job: f"{RunLayout.sim_job(v, s, job)}/{RunLayout.SIM_RESULT}" for job in self.sim_jobs(v, s)}
                for v, s in self.sim_runs()}

    def sim_outputs(self) -> list[str]:
        """``sim_summary.nc``, and ``convergence.nc`` where biophysical runs are planned."""
        bio = any(j.startswith("biophysical_k") for r in self.sim_results().values() for j in r)
        return [RunLayout.SIM_SUMMARY, *([RunLayout.CONVERGENCE] if bio else [])]

    def notebook_inputs(self, name: str) -> list[str]:
        inputs = [str(NOTEBOOK_DIR / f"{name}.ipynb"), *NOTEBOOK_INPUTS[name]]
        if name == "fig3_training":
            inputs += [RunLayout.in_run(v, s, RunLayout.METRICS) for v, s in self.runs()]  # not the ablations
        if name == "fidelity":
            inputs += self.sim_outputs()[1:]
            inputs += [p for r in self.sim_results().values() for j, p in r.items() if j == "exact_plasticity"]
        return inputs
