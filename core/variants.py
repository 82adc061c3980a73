"""The vocabulary of a reproduction: variants, ablations and where each run's files live (torch-free).

A :class:`Variant` is a model family (``flex``, its twin ``vgg``, or the classic
max-pool ``vggmp``) trained in one :class:`~core.config.Mode`. It *is* its name
(a ``str`` subclass: ``Variant.parse("flex-stbp") == "flex-stbp"``), so it goes
into file names, netCDF coordinates and attrs unchanged, and it knows its parts
and its ANN twin (the source model of the transfer attack).

:class:`RunLayout` is the one place that says where things live under a
reproduction root::

    ROOT/<variant>/seed<N>/                    a run directory (checkpoint.pt, metrics.nc, train.log)
    ROOT/<variant>/seed<N>/export.npz          its export for Brian2
    ROOT/<variant>/seed<N>/sim/<job>/sim.nc    one Brian2 simulation of it
    ROOT/<variant>/seed<N>/<analysis>.nc       robustness.nc, sparsity.nc, landscape.nc
    ROOT/ablation-<name>/seed<N>/              an ablation run
    ROOT/<combined>.nc                         every run of one kind along variant x seed
    ROOT/figures/<notebook>.ipynb, .png        the executed figure notebooks
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from core.config import FAMILIES as _FAMILY_MODELS
from core.config import Downsample, Mode, family_of
from core.errors import UserError

FAMILIES = tuple(_FAMILY_MODELS)  # ("flex", "vgg", "vggmp")


class VariantError(UserError, ValueError):
    """A string that is not a variant name."""


class Variant(str):
    """``<family>-<mode>``, e.g. ``flex-stbp``; a ``str`` with its parts as properties."""

    __slots__ = ()

    def __new__(cls, family: str, mode: Mode | str) -> "Variant":
        if family not in FAMILIES:
            raise VariantError(f"{family!r} is not a model family; choose one of {list(FAMILIES)}.")
        try:
            mode = Mode(mode)
        except ValueError:
            raise VariantError(f"{mode!r} is not a mode; choose one of {[m.value for m in Mode]}.") from None
        return super().__new__(cls, f"{family}-{mode.value}")

    def __getnewargs__(self) -> tuple[str, str]:  # pickling (e.g. to worker processes)
        return self.family, self.mode.value

    @classmethod
    def parse(cls, name: str) -> "Variant":
        """``"flex-stbp"`` -> ``Variant("flex", "stbp")``; a clear error for anything else."""
        family, sep, mode = str(name).partition("-")
        if not sep:
            raise VariantError(f"{name!r} is not a variant name; variants are <family>-<mode>, e.g. flex-stbp "
                               f"(families {list(FAMILIES)}, modes {[m.value for m in Mode]}).")
        return cls(family, mode)

    @classmethod
    def of(cls, flex: bool, mode: Mode | str, maxpool: bool = False) -> "Variant":
        return cls(family_of(flex, Downsample.MAXPOOL if maxpool else Downsample.CONV), mode)

    @property
    def family(self) -> str:
        return self.split("-", 1)[0]

    @property
    def mode(self) -> Mode:
        return Mode(self.split("-", 1)[1])

    @property
    def flex(self) -> bool:
        return _FAMILY_MODELS[self.family][0]

    @property
    def downsample(self) -> Downsample:
        return _FAMILY_MODELS[self.family][1]

    @property
    def spiking(self) -> bool:
        return self.mode is not Mode.ANN

    @property
    def ann_twin(self) -> "Variant":
        """The same family trained as an ANN (``flex-stbp`` -> ``flex-ann``): the transfer attack's source."""
        return Variant(self.family, Mode.ANN)

    def train_options(self) -> list[str]:
        """The ``bioflexnet train`` options that select this variant."""
        opts = ["--mode", self.mode.value, "--flex" if self.flex else "--no-flex"]
        return opts + (["--set", f"model.downsample={self.downsample.value}"] if self.downsample is not Downsample.CONV
                       else [])

    def model_overrides(self) -> list[str]:
        """The ``--set`` overrides of this family beyond ``model.flex`` (the classic VGG's max-pools)."""
        return [f"model.downsample={self.downsample.value}"] if self.downsample is not Downsample.CONV else []


# The six variants of the paper, the most expensive first (parallel workers then finish together)
PAPER_VARIANTS: tuple[Variant, ...] = tuple(Variant(f, m) for f in ("flex", "vgg") for m in ("stbp", "hybrid", "ann"))
# The variants simulated in Brian2 (the STBP twins: the spiking models trained through time)
SIM_VARIANTS: tuple[Variant, ...] = (Variant("flex", "stbp"), Variant("vgg", "stbp"))


class Ablation(NamedTuple):
    """One change against ``base`` (flex-stbp or its twin vgg-stbp)."""

    base: Variant
    overrides: tuple[str, ...]

    @property
    def change(self) -> str:
        return " ".join(self.overrides) + ("" if self.base.flex else f" ({self.base} twin)")


ABLATIONS: dict[str, Ablation] = {
    "lambda0": Ablation(Variant("flex", "stbp"), ("model.plasticity_rate=0",)),
    "conv_only": Ablation(Variant("flex", "stbp"), ("model.mask_mode=conv_only",)),
    "no_pool_3x3": Ablation(Variant("flex", "stbp"), ("model.flex_3x3=false",)),
    "flex_no_down_neurons": Ablation(Variant("flex", "stbp"), ("model.down_neurons=false",)),
    "vgg_no_down_neurons": Ablation(Variant("vgg", "stbp"), ("model.down_neurons=false",)),
    "vgg_maxpool": Ablation(Variant("vgg", "stbp"), ("model.downsample=maxpool",)),
}

_RUN_DIR = re.compile(r"^(?P<name>[a-z0-9_-]+)/seed(?P<seed>\d+)$")


@dataclass(frozen=True)
class RunLayout:
    """Where every file of a reproduction lives under ``root`` (see the module docstring).

    The static methods give paths relative to the root (what the Snakefile and the plan use: the workflow
    runs inside the root); the instance methods absolute ones. ``RUN`` and ``SIM_JOB`` are the same layout
    as Snakemake wildcard patterns.
    """

    root: Path

    RUN = "{variant}/seed{seed}"  # a run directory, as a wildcard pattern
    SIM_JOB = RUN + "/sim/{job}"  # one Brian2 simulation of a run
    TRAINING_SUMMARY = "training_summary.nc"
    ANALYSES = ("robustness.nc", "sparsity.nc", "landscape.nc")
    SIM_SUMMARY = "sim_summary.nc"
    CONVERGENCE = "convergence.nc"
    CLAIMS = "claims.nc"
    ABLATIONS = "ablations.nc"
    EXPORT = "export.npz"
    CHECKPOINT = "checkpoint.pt"
    METRICS = "metrics.nc"
    SIM_RESULT = "sim.nc"
    FIGURES = "figures"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_run(cls, run_dir: str | Path) -> "RunLayout":
        """The layout whose root holds ``run_dir`` (``ROOT/<variant>/seed<N>``)."""
        return cls(Path(run_dir).resolve().parents[1])

    @staticmethod
    def run_name(variant: str, seed: int) -> str:
        """``flex-stbp/seed0``: a run directory relative to the root (ablations: ``ablation-<name>``)."""
        return RunLayout.RUN.format(variant=variant, seed=int(seed))

    @staticmethod
    def in_run(variant: str, seed: int, name: str) -> str:
        """A file of a run, relative to the root: ``flex-stbp/seed0/metrics.nc``."""
        return f"{RunLayout.run_name(variant, seed)}/{name}"

    @staticmethod
    def sim_job(variant: str, seed: int, job: str) -> str:
        """A simulation's directory, relative to the root: ``flex-stbp/seed0/sim/exact``."""
        return RunLayout.SIM_JOB.format(variant=variant, seed=int(seed), job=job)

    @staticmethod
    def figure(notebook: str, suffix: str = ".ipynb") -> str:
        """An executed notebook (or its figure), relative to the root."""
        return f"{RunLayout.FIGURES}/{notebook}{suffix}"

    @staticmethod
    def parse_run_name(name: str) -> tuple[str, int]:
        """``"flex-stbp/seed0"`` -> ``("flex-stbp", 0)``."""
        m = _RUN_DIR.match(str(name).strip("/"))
        if m is None:
            raise VariantError(f"{name!r} is not a run directory name of a reproduction (<variant>/seed<N>).")
        return m["name"], int(m["seed"])

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.root / self.run_name(variant, seed)

    def sim_result(self, variant: str, seed: int, job: str) -> Path:
        return self.root / self.sim_job(variant, seed, job) / self.SIM_RESULT

    @property
    def figures(self) -> Path:
        return self.root / self.FIGURES
