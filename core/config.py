"""Run configuration: one frozen, validated dataclass tree per run.

A run is fully described by a :class:`RunConfig`. Profiles (``smoke``,
``quick``, ``paper``) are presets; ``--set key=value`` overrides single
fields by their dotted path (``model.time_steps=4``, ``train.epochs=3``).
The config is written as JSON beside every checkpoint and validated again
when it is read back.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

from core.errors import UserError

CONFIG_FORMAT = 1
SEED_MAX = 2**32 - 1  # seeds are combined with epoch offsets into torch's 64-bit generator seeds
INT_LIMIT = 2**31 - 1  # no count in a config comes near this; larger values only overflow torch/numpy later


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class Arch(str, enum.Enum):
    VGG5 = "vgg5"
    VGG7 = "vgg7"  # a shallow VGG for fast CPU runs (quick profile)
    VGG11 = "vgg11"
    VGG16 = "vgg16"


class Mode(str, enum.Enum):
    """Training mode (docs/model.md, "Network")."""

    ANN = "ann"  # ReLU, one step, ordinary backprop
    HYBRID = "hybrid"  # LIF over T steps, no gradient through time, rate derivative
    STBP = "stbp"  # LIF over T steps, full BPTT with a surrogate derivative


class Encoding(str, enum.Enum):
    DIRECT = "direct"  # normalised image as a constant current at every step
    POISSON = "poisson"  # Bernoulli spikes with the pixel intensity as probability


class Reset(str, enum.Enum):
    SUBTRACT = "subtract"  # v <- v - theta after a spike (keeps the residual)
    ZERO = "zero"  # v <- 0 after a spike


class Refractory(str, enum.Enum):
    """How long a neuron stays silent after a spike (docs/model.md, "Neuron")."""

    STEP = "step"  # one step (K ticks): at most one spike per step, as the discrete model
    NONE = "none"  # no refractory period: a neuron may fire in consecutive ticks


class Surrogate(str, enum.Enum):
    ATAN = "atan"
    SIGMOID = "sigmoid"
    RECTANGLE = "rectangle"


class MaskSigma(str, enum.Enum):
    """The mask nonlinearity; its formula is ``core.equations.mask_sigma(value)``."""

    HARD = "hard"  # clip(z/6 + 1/2, 0, 1)
    LOGISTIC = "logistic"  # 1 / (1 + exp(-z))


class MaskLogits(str, enum.Enum):
    THRESHOLD = "threshold"  # BN(Pool(x) - threshold), the original authors' mechanism


class MaskMode(str, enum.Enum):
    """How a flex layer's mask is obtained."""

    LEARNED = "learned"  # m = sigma(logits(x) + eta(t) + b), the PlasticFlex mask
    CONV_ONLY = "conv_only"  # m = 1: the conv path only (ablation; the flex parameters stay unused)


class Downsample(str, enum.Enum):
    """The 2x2 stride-2 down-sampling stages of the baseline (``flex=False``)."""

    CONV = "conv"  # 2x2 stride-2 conv + BN: the twin of a flex down-sampling stage (default)
    MAXPOOL = "maxpool"  # the classic VGG: a neuron-free 2x2 max-pool (an extra, named baseline)


# model family -> (model.flex, model.downsample): the one place a family's name is tied to the config
FAMILIES: dict[str, tuple[bool, Downsample]] = {"flex": (True, Downsample.CONV), "vgg": (False, Downsample.CONV),
                                               "vggmp": (False, Downsample.MAXPOOL)}


def family_of(flex: bool, downsample: Downsample) -> str:
    """``flex``, ``vgg`` (the twin) or ``vggmp`` (the classic max-pool VGG) of a model's choices."""
    return next(f for f, (fl, ds) in FAMILIES.items() if fl == flex and (fl or ds is downsample))


MIN_WIDTH = 1 / 16  # narrower, a VGG's 64-channel layers round to 1-3 channels and learn nothing (issue 22)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and neuron model.

    ``time_steps`` is T for the spiking modes; ``ann`` always runs one step
    (see :attr:`steps`).

    Stages (docs/model.md, "Network", the twin baseline): ``flex`` makes every stage a
    PlasticFlexLayer; ``flex=False`` keeps the same stages with the pool path
    and mask removed (3x3 conv stages, 2x2 stride-2 conv down-sampling), so
    both sides have neurons in exactly the same places. ``down_neurons`` puts
    LIF (or ReLU) units after the down-sampling stages, on both sides. Ablations:
    ``flex_3x3=False`` (flex on the down-sampling stages only), ``mask_mode=conv_only``
    (m = 1), ``plasticity_rate=0`` (no plasticity); ``downsample=maxpool`` with
    ``flex=False`` is the classic max-pool VGG (no neurons on its pools).

    Neuron (docs/model.md, "Neuron"): ``refractory=step`` keeps a neuron silent for one step (K ticks) after a
    spike, as the discrete model, which fires at most once per step; ``none`` lets it fire in consecutive ticks
    (a fidelity lever: the count of spikes then follows the charge, not its timing within a step).

    Plasticity (:mod:`core.equations`): after each step
    ``b <- (1 - plasticity_decay) b + plasticity_rate (r_sel - r_inv)``; the
    drives lie in [0, 1], so ``|b| <= plasticity_rate / plasticity_decay``.
    """

    arch: Arch = Arch.VGG11
    flex: bool = True
    width: float = 1.0
    mode: Mode = Mode.STBP
    time_steps: int = 10
    encoding: Encoding = Encoding.DIRECT
    beta: float = 0.5
    theta: float = 1.0
    reset: Reset = Reset.SUBTRACT
    refractory: Refractory = Refractory.STEP  # only matters at ticks > 1 (a one-tick period is none)
    surrogate: Surrogate = Surrogate.ATAN
    surrogate_alpha: float = 2.0
    hybrid_surrogate: Surrogate = Surrogate.RECTANGLE
    mask_sigma: MaskSigma = MaskSigma.HARD
    mask_logits: MaskLogits = MaskLogits.THRESHOLD
    mask_init: float = 0.0
    mask_mode: MaskMode = MaskMode.LEARNED
    flex_3x3: bool = True
    downsample: Downsample = Downsample.CONV
    down_neurons: bool = True
    plasticity_rate: float = 1e-3
    plasticity_decay: float = 1e-3
    num_classes: int = 10
    ticks: int = 1  # K ticks per step: the time resolution of the LIF (docs/model.md, "Time")

    def __post_init__(self) -> None:
        _check(MIN_WIDTH <= self.width <= 64, "model.width", self.width,
               f"must be > 0 and <= 64, and >= {MIN_WIDTH} so that the first layers keep >= 4 of their 64 channels "
               "(1.0 = the paper's channel counts)")
        _check(1 <= self.time_steps <= 1000, "model.time_steps", self.time_steps, "must be >= 1 and <= 1000")
        _check(0.0 <= self.beta <= 1.0, "model.beta", self.beta, "is the membrane decay per step and must lie in [0, 1]")
        _check(self.theta > 0, "model.theta", self.theta, "is the firing threshold and must be > 0")
        _check(self.surrogate_alpha > 0, "model.surrogate_alpha", self.surrogate_alpha, "must be > 0")
        _check(self.plasticity_rate >= 0, "model.plasticity_rate", self.plasticity_rate, "is lambda and must be >= 0 (0 disables plasticity)")
        _check(0 <= self.plasticity_decay < 1, "model.plasticity_decay", self.plasticity_decay,
               "is the decay of the plastic bias per update and must lie in [0, 1) (it bounds |b| by rate/decay)")
        _check(self.plasticity_rate == 0 or self.plasticity_decay > 0, "model.plasticity_decay", self.plasticity_decay,
               "must be > 0 when model.plasticity_rate > 0: without decay the plastic bias is unbounded")
        _check(-3.0 < self.mask_init < 3.0, "model.mask_init", self.mask_init,
               "must lie in (-3, 3): beyond it the hard-sigmoid mask starts saturated and passes no gradient")
        _check(not (self.flex and self.downsample is Downsample.MAXPOOL), "model.downsample", self.downsample.value,
               "is only for the baseline (flex=false): a flex down-sampling stage already mixes a max-pool path")
        _check(self.num_classes >= 2, "model.num_classes", self.num_classes, "must be >= 2")
        _check(self.ticks >= 1, "model.ticks", self.ticks, "is the number of ticks per step and must be >= 1")
        if self.ticks > 1:
            _check(self.mode is not Mode.ANN, "model.ticks", self.ticks,
                   "needs spiking neurons; an ann-mode model has one step and no membrane (use model.ticks=1)")
            _check(0.0 < self.beta < 1.0, "model.ticks", self.ticks,
                   f"needs a leaky membrane, 0 < model.beta < 1 (got beta={self.beta}), to divide a step into ticks")
            _check(self.down_neurons, "model.ticks", self.ticks,
                   "needs neurons after every stage (model.down_neurons=true): an analog current between "
                   "stages has no tick-by-tick form in Brian2")

    @property
    def steps(self) -> int:
        """Number of simulated steps: 1 in ``ann`` mode, else ``time_steps``."""
        return 1 if self.mode is Mode.ANN else self.time_steps

    @property
    def spiking(self) -> bool:
        return self.mode is not Mode.ANN

    @property
    def family(self) -> str:
        """``flex``, ``vgg`` (the twin) or ``vggmp`` (the classic max-pool VGG)."""
        return family_of(self.flex, self.downsample)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data.

    ``val_size`` class-balanced images are carved from the training split (fixed
    by ``data_seed``, the same for every model seed) for the per-epoch
    validation; ``train_subset`` (0 = all) is drawn from the rest. The test
    split is evaluated once, after the last epoch.
    """

    epochs: int = 120
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    train_subset: int = 0
    eval_batch_size: int = 500
    augment: bool = True
    init_from: str = ""  # a run directory whose trained weights start this run (fine-tuning); "" = random init
    # Coarse-to-fine time resolution: only the last `fine_updates` optimiser updates run at model.ticks, the
    # ones before at one tick per step (K times cheaper); 0 = every update at model.ticks (docs/model.md, "Time")
    fine_updates: int = 0
    val_size: int = 5000
    data_seed: int = 0
    # Speed (issue 12). The step never waits for the device: loss and accuracy are accumulated there and read,
    # with the finiteness check, every `log_every` steps and at the end of the epoch.
    log_every: int = 50
    bf16: bool = False  # bfloat16 autocast of the forward pass (GPUs; the CPU runs it, slowly)
    channels_last: bool = False  # NHWC memory layout for the model and its input

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, "must be >= 1")
        _check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _check(0 <= self.momentum < 1, "train.momentum", self.momentum, "must lie in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing", self.label_smoothing, "must lie in [0, 1)")
        _check(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs", self.warmup_epochs, f"must lie in [0, epochs={self.epochs}]")
        _check(self.fine_updates >= 0, "train.fine_updates", self.fine_updates,
               "is the number of final steps trained at model.ticks and must be >= 0 (0 = all)")
        _check(self.train_subset >= 0, "train.train_subset", self.train_subset, "must be >= 0 (0 = whole training split)")
        _check(10 <= self.val_size <= 25000, "train.val_size", self.val_size,
               "must lie in [10, 25000] (validation images carved from the 50,000 training images)")
        _check(self.data_seed >= 0, "train.data_seed", self.data_seed, "must be >= 0")
        _check(self.log_every >= 1, "train.log_every", self.log_every, "must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    profile: str = "paper"
    seed: int = 0
    format: int = CONFIG_FORMAT

    def __post_init__(self) -> None:
        _check(self.profile in PROFILES, "profile", self.profile, f"is not a profile; choose one of {sorted(PROFILES)}")
        _check(0 <= self.seed <= SEED_MAX, "seed", self.seed, f"must be an integer in [0, {SEED_MAX}]")

    @property
    def variant(self):
        """The :class:`core.variants.Variant` (a ``str``: ``flex-stbp``, ``vgg-ann``, ...)."""
        from core.variants import Variant  # core.variants builds on this module

        return Variant(self.model.family, self.model.mode)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=_enum_value))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"cannot serialise {obj!r}")


def _check(ok: bool, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} {why}.")


# --- profiles ---------------------------------------------------------------

def _profile_smoke() -> RunConfig:
    """Seconds per model: for tests."""
    return RunConfig(
        model=ModelConfig(arch=Arch.VGG5, width=0.125, time_steps=2),
        train=TrainConfig(epochs=1, batch_size=64, lr=0.1, warmup_epochs=0.2, train_subset=4096, eval_batch_size=250,
                          val_size=1000),
        profile="smoke",
    )


QUICK_TICKS, QUICK_FINE_UPDATES = 1, 0


def _profile_quick() -> RunConfig:
    """The CPU demo: every variant in a couple of minutes on 2 cores, well above chance.

    A shallow VGG (5 weight layers) because the deep narrow spiking nets learn too
    slowly for a CPU budget; the paper profile uses VGG16.
    """
    # One tick per step. Training at K = 4 (model.ticks=4, optionally train.fine_updates=N for a fine-tune of the
    # last N steps, or `train --init-from RUN`) makes Brian2's biophysical mode at K reproduce every spike, but a
    # K = 4 step costs ~6x a K = 1 step, every analysis would run at K = 4, and finer dt still does not converge
    # (class agreement 0.70-0.80 at 2K and 4K; README "Fidelity"), so the CPU demo stays at K = 1.
    return RunConfig(
        model=ModelConfig(arch=Arch.VGG5, width=0.25, time_steps=2, ticks=QUICK_TICKS),
        train=TrainConfig(epochs=3, batch_size=64, lr=0.1, warmup_epochs=0.3, train_subset=25600, eval_batch_size=250,
                          fine_updates=QUICK_FINE_UPDATES),
        profile="quick",
    )


def _profile_paper() -> RunConfig:
    return RunConfig(
        model=ModelConfig(arch=Arch.VGG16, width=1.0, time_steps=10),
        train=TrainConfig(epochs=120, batch_size=128, lr=0.1, warmup_epochs=1.0),
        profile="paper",
    )


PROFILES: dict[str, typing.Callable[[], RunConfig]] = {
    "smoke": _profile_smoke,
    "quick": _profile_quick,
    "paper": _profile_paper,
}


def make_config(
    profile: str,
    *,
    arch: str | None = None,
    mode: str | None = None,
    flex: bool | None = None,
    seed: int = 0,
    overrides: typing.Sequence[str] = (),
) -> RunConfig:
    """Build a run config from a profile, the common CLI choices and ``key=value`` overrides."""
    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r} is not a profile; choose one of {sorted(PROFILES)}.")
    base = PROFILES[profile]()
    data = base.to_dict()
    if arch is not None:
        data["model"]["arch"] = arch
    if mode is not None:
        data["model"]["mode"] = mode
    if flex is not None:
        data["model"]["flex"] = flex
    data["seed"] = seed
    explicit_ticks = False
    for item in overrides:
        key, value = _split_override(item)
        _assign(data, key, value)
        explicit_ticks |= key.split(".")[-1] == "ticks"
    m = data["model"]
    if not explicit_ticks and (m["mode"] == Mode.ANN.value or m["down_neurons"] in (False, "false")):
        # the profile's tick resolution is for networks with spiking neurons after every stage; an explicit
        # --set model.ticks=K still reaches the config's validation
        m["ticks"] = 1
    return config_from_dict(data)


# keys that were renamed: old dotted name -> new (old config.json files and --set spellings keep working)
RENAMED_KEYS = {"train.tick_steps": "train.fine_updates"}


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form key=value (e.g. model.time_steps=4).")
    key, value = item.split("=", 1)
    key = key.strip()
    for old, new in RENAMED_KEYS.items():
        if key in (old, old.split(".")[-1]):
            print(f"note: --set {key} is now called {new}; it does the same.", file=sys.stderr)
            key = new
    return key, value.strip()


def _assign(data: dict[str, Any], key: str, raw: str) -> None:
    parts = key.split(".")
    if len(parts) == 1:  # bare field name: accept it when exactly one section has it
        owners = [s for s in ("model", "train") if parts[0] in data[s]]
        if parts[0] in data:
            owners = []
        elif len(owners) == 1:
            parts = [owners[0], parts[0]]
    node: Any = data
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node:
            raise ConfigError(f"--set {key}: unknown section {p!r}; valid keys are {sorted(_valid_keys(data))}.")
        node = node[p]
    if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
        raise ConfigError(f"--set {key}: unknown key; valid keys are {sorted(_valid_keys(data))}.")
    node[parts[-1]] = _parse_scalar(raw)


def _valid_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        if k == "format":
            continue
        if isinstance(v, dict):
            keys += _valid_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


def _parse_scalar(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate a JSON-like dict (e.g. a loaded ``config.json``) into a :class:`RunConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a JSON object, got {type(data).__name__}.")
    fmt = data.get("format", CONFIG_FORMAT)
    if fmt != CONFIG_FORMAT:
        raise ConfigError(
            f"config format {fmt!r} is not supported by this version (expects {CONFIG_FORMAT}); "
            "train the run again with this version or install the version that wrote it."
        )
    data = _renamed(data)
    model = _build(ModelConfig, data.get("model", {}), "model")
    train = _build(TrainConfig, data.get("train", {}), "train")
    extra = set(data) - {"model", "train", "profile", "seed", "format"}
    if extra:
        raise ConfigError(f"unknown config keys {sorted(extra)}; valid top-level keys are model, train, profile, seed.")
    return RunConfig(model=model, train=train, profile=data.get("profile", "paper"), seed=_coerce(int, data.get("seed", 0), "seed"))


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the keys of :data:`RENAMED_KEYS` under their new names (a config written before a rename)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in RENAMED_KEYS.items():
        (section, key), (_, new_key) = old.split("."), new.split(".")
        if isinstance(data.get(section), dict) and key in data[section] and new_key not in data[section]:
            data[section][new_key] = data[section].pop(key)
    return data


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a JSON object, got {values!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {section} keys {sorted(unknown)}; valid keys are {sorted(known)}.")
    kwargs = {name: _coerce(hints[name], value, f"{section}.{name}") for name, value in values.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not valid; choose one of {[m.value for m in tp]}.") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) <= INT_LIMIT:
                return int(value)
            raise ConfigError(f"{name}={value!r} must be an integer.")
        if name == "seed" and not 0 <= value <= SEED_MAX:
            raise ConfigError(f"seed={value!r} is out of range; a seed is an integer in [0, {SEED_MAX}].")
        if abs(value) > INT_LIMIT:
            raise ConfigError(f"{name}={value!r} is out of range; integers here must lie within ±{INT_LIMIT}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} must be a number.")
        if abs(value) > 1e300 or not math.isfinite(value):
            raise ConfigError(f"{name}={value!r} must be a finite number.")
        return float(value)
    if tp is str:
        return str(value)
    return value


def with_overrides(config: RunConfig, **changes: Any) -> RunConfig:
    """Return a copy of a (sub)config with fields replaced, validated again."""
    return replace(config, **changes)
