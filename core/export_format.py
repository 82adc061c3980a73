"""The export file: a trained network as plain arrays, readable without torch.

``bioflexnet export`` (:mod:`training.export`) writes it; ``sim/`` reads it.
One ``.npz`` archive (zip, numpy's format, loaded with ``allow_pickle=False``)
holds a JSON header (array ``header``, a unicode string) and float64 / integer
arrays named ``<owner>.<field>``:

======================  ===============================  =========================================
array                   shape                            meaning
======================  ===============================  =========================================
``input.mean/std``      ``[3]``                          normalisation ``(pixel/255 - mean) / std``
``L.weight``            ``[C_out, C_in, k, k]``          conv weights with the conv path's BN folded in
``L.bias``              ``[C_out]``                      bias current of the conv path (folded BN)
``L.pool_map``          ``[C_out, C_in]``                channel map ``P`` of the pool path (flex)
``L.threshold``         ``[C_out, H', W']``              mask threshold tensor (flex)
``L.logit_scale/shift`` ``[C_out]``                      logit BN folded: ``logits = scale*(pool - thr) + shift``
``L.eta``               ``[T, C_out]``                   mask time bias ``eta(t)`` (flex)
``L.plastic_bias``      ``[C_out]``                      plastic mask bias ``b`` at export time (flex)
``readout.weight/bias`` ``[classes, C*H*W]``, ``[classes]`` linear read-out on the NCHW-flattened last map
``ref.images``          ``[N, 3, 32, 32]`` uint8         reference images (first N of the test split)
``ref.labels``          ``[N]`` int64                    their labels
``ref.logits``          ``[N, classes]``                 float64 PyTorch forward of *this* export
``ref.model_logits``    ``[N, classes]``                 the trained float32 model's own output
``ref.spikes.L``        ``[N, T, ceil(C*H*W/8)]`` uint8  reference spikes, ``np.packbits`` over NCHW neurons
``ref.input_spikes``    ``[N, T, 384]`` uint8            Poisson encoding only: the input spikes drawn
                                                         for the reference (packed ``[3, 32, 32]``)
``ref.mask_mean.L``     ``[N, T, C_out]``                mask ``m`` averaged over positions (flex)
``ref.r_sel.L/r_inv.L`` ``[N, C_out]``                   pathway drives per image (flex; see equations)
======================  ===============================  =========================================

Layer ``kind`` is ``flex`` (PlasticFlexLayer + LIF), ``conv`` (conv + BN + LIF)
or ``pool`` (max-pool of spikes, no neurons; baseline VGG). Every array is
checked against the shapes the header implies when the file is read, so a
malformed, truncated or newer file fails with an :class:`ExportError` that
names the problem. This module is torch-free.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core import equations
from core.errors import UserError
from core.results import atomic_path

FORMAT_NAME = "bioflexnet-export"
FORMAT_VERSION = 2  # 2: scale-free pathway drives and model.plasticity_decay (bounded plasticity rule)
KINDS = ("flex", "conv", "pool")
RESETS = ("subtract", "zero")
REFRACTORY = ("step", "none")
SIGMAS = tuple(equations.SIGMAS)  # ("hard", "logistic")
ENCODINGS = ("direct", "poisson")


class ExportError(UserError, ValueError):
    """An export file is missing, truncated, malformed or from a newer version."""


class LayerSpec(NamedTuple):
    """One stage of the network; sizes are ``(H, W)``."""

    name: str
    kind: str
    c_in: int
    c_out: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    kernel: int
    stride: int
    padding: int

    @property
    def neurons(self) -> bool:
        return self.kind != "pool"

    @property
    def n_out(self) -> int:
        return self.c_out * self.out_size[0] * self.out_size[1]

    @property
    def n_in(self) -> int:
        return self.c_in * self.in_size[0] * self.in_size[1]


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv / max-pool along one axis (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class ModelHeader:
    """``header["model"]``: what the simulator needs to know about the trained network."""

    steps: int  # T (1 for ann)
    beta: float  # membrane decay per step
    theta: float  # threshold
    reset: str  # one of RESETS
    mask_sigma: str  # one of SIGMAS
    encoding: str  # one of ENCODINGS
    plasticity_rate: float  # lambda of the mask plasticity (model.plasticity_rate)
    plasticity_decay: float  # delta (model.plasticity_decay)
    num_classes: int
    flex: bool  # PlasticFlex layers (written by every export; else read from the layers' kinds)
    ticks: int = 1  # K ticks per step the network was trained at
    mode: str = "stbp"
    arch: str = ""
    width: float | None = None
    downsample: str = "conv"  # the twin VGG's down-sampling stages: conv | maxpool
    refractory: str = "step"  # one of REFRACTORY: one step after a spike, or none

    @property
    def variant(self):
        """The :class:`core.variants.Variant` this export was trained as."""
        from core.variants import Variant

        return Variant.of(self.flex, self.mode, self.downsample == "maxpool")


@dataclass(frozen=True)
class Physics:
    """``header["physics"]``: the physical reading of the trained dynamics (defaults for older exports)."""

    tau_m_ms: float = equations.PHYSICS_DEFAULTS["tau_m_ms"]
    v_rest_mv: float = equations.PHYSICS_DEFAULTS["v_rest_mv"]
    v_threshold_mv: float = equations.PHYSICS_DEFAULTS["v_threshold_mv"]
    ticks: int = 1
    step_ms: float | None = None  # tau_m ln(1/beta); None without a leaky membrane
    dt_ms: float | None = None
    refractory_ms: float | None = None
    synapse: str = "delta"


@dataclass(frozen=True)
class RunInfo:
    """``header["run"]``: where the export came from."""

    run_dir: str = ""
    checkpoint_sha256: str = ""
    config: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # RunConfig.to_dict()

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")


@dataclass(frozen=True)
class Header:
    """The export header, parsed (after validation) into typed, frozen parts."""

    format_version: int
    model: ModelHeader
    physics: Physics
    layers: tuple[LayerSpec, ...]
    readout_features: int
    input_seed: int | None  # Poisson encoding: the seed of the reference's input spikes
    run: RunInfo

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Header":
        from core.equations import PHYSICS_DEFAULTS

        def known(kind, values: dict) -> dict:
            names = {f.name for f in fields(kind)}
            return {k: v for k, v in values.items() if k in names}

        run = d.get("run", {})
        return cls(
            format_version=int(d["format_version"]),
            model=ModelHeader(**known(ModelHeader, {"flex": any(x["kind"] == "flex" for x in d["layers"]),
                                                    **d["model"]})),
            physics=Physics(**known(Physics, {**PHYSICS_DEFAULTS, **d.get("physics", {})})),
            layers=tuple(LayerSpec(x["name"], x["kind"], x["c_in"], x["c_out"], tuple(x["in_size"]),
                                   tuple(x["out_size"]), x["kernel"], x["stride"], x["padding"]) for x in d["layers"]),
            readout_features=int(d["readout"]["features"]),
            input_seed=d.get("reference", {}).get("input_seed"),
            run=RunInfo(str(run.get("run_dir", "")), str(run.get("checkpoint_sha256", "")),
                        MappingProxyType(dict(run.get("config") or {}))))


@dataclass(frozen=True)
class Export:
    """A loaded export: the parsed header and the arrays, validated."""

    header: Header
    arrays: dict[str, np.ndarray]
    path: Path | None = None

    @property
    def model(self) -> ModelHeader:
        return self.header.model

    @property
    def steps(self) -> int:
        return self.model.steps

    @property
    def ticks(self) -> int:
        """K ticks per step the network was trained at (1 for exports that predate the field)."""
        return self.model.ticks

    @property
    def physics(self) -> Physics:
        """Physical parameters of the trained dynamics (defaults of :data:`core.equations.PHYSICS_DEFAULTS`
        for exports that predate the field)."""
        return self.header.physics

    @property
    def layers(self) -> list[LayerSpec]:
        return list(self.header.layers)

    @property
    def neuron_layers(self) -> list[LayerSpec]:
        return [layer for layer in self.layers if layer.neurons]

    @property
    def n_reference(self) -> int:
        return int(self.arrays["ref.labels"].shape[0])

    def reference_spikes(self, name: str, n_images: int | None = None) -> np.ndarray:
        """Unpacked reference spikes of neuron layer ``name``: bool ``[N, T, C, H, W]``.

        ``name="input"`` gives the Poisson input spikes ``[N, T, 3, 32, 32]``.
        """
        if name == "input":
            packed, shape = self.arrays["ref.input_spikes"][:n_images], (3, 32, 32)
        else:
            layer = next(la for la in self.layers if la.name == name)
            packed, shape = self.arrays[f"ref.spikes.{name}"][:n_images], (layer.c_out, *layer.out_size)
        bits = np.unpackbits(packed, axis=-1, count=int(np.prod(shape))).astype(bool)
        return bits.reshape(*packed.shape[:2], *shape)


def pack_spikes(spikes: np.ndarray) -> np.ndarray:
    """``[N, T, C, H, W]`` 0/1 -> ``[N, T, ceil(C*H*W / 8)]`` uint8 (NCHW neuron order)."""
    return np.packbits(np.asarray(spikes, dtype=bool).reshape(*spikes.shape[:2], -1), axis=-1)


def write_export(path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Validate and write an export atomically (no half-written file on failure)."""
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **header}
    export = validate(header, arrays, source="the export being written")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
            np.savez_compressed(f, header=np.array(json.dumps(header, sort_keys=True)), **export.arrays)
    return path


def read_export(path: str | os.PathLike) -> Export:
    """Read and validate an export; raise :class:`ExportError` saying what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"export file {path} does not exist; create it with `bioflexnet export RUN_DIR`.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}  # read everything now: CRCs are checked here
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{path} is truncated or not an export archive ({type(exc).__name__}: {exc}); "
                          "export the run again with `bioflexnet export RUN_DIR`.") from exc
    if "header" not in arrays:
        raise ExportError(f"{path} has no header array; it is not a bioflexnet export.")
    try:
        header = json.loads(str(arrays.pop("header")))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: the header is not valid JSON ({exc}); export the run again.") from exc
    except RecursionError:  # a crafted header of deeply nested arrays: no export nests more than a few levels
        raise ExportError(f"{path}: the header nests too deeply to be an export's; export the run again.") from None
    export = validate(header, arrays, source=str(path))
    return Export(export.header, export.arrays, path)


def params_only(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Export:
    """An export of the parameters alone (no reference arrays), for computing the reference itself."""
    return Export(Header.parse({"format_version": FORMAT_VERSION, **header}),
                  {k: v for k, v in arrays.items() if not k.startswith("ref.")})


def validate(header: Any, arrays: dict[str, np.ndarray], source: str) -> Export:
    """Check the header and every array's presence, shape, dtype and finiteness."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ExportError(f"{source}: header format is {header.get('format') if isinstance(header, dict) else header!r},"
                          f" expected {FORMAT_NAME!r}; this is not a bioflexnet export.")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ExportError(f"{source}: format_version={version!r} is not a positive integer.")
    if version < FORMAT_VERSION:
        raise ExportError(f"{source}: format_version={version} was written by an older bioflexnet whose plasticity "
                          f"rule differs (this version reads {FORMAT_VERSION}); export the run again with "
                          "`bioflexnet export RUN_DIR`.")
    if version > FORMAT_VERSION:
        raise ExportError(f"{source} has export format version {version}, newer than this bioflexnet reads "
                          f"({FORMAT_VERSION}); upgrade bioflexnet or export again with this version.")
    _check_header(header, source)
    expected = expected_arrays(header, n_ref=_n_reference(arrays, source))
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ExportError(f"{source} lacks the arrays {missing}; the file is incomplete, export the run again.")
    for name, (shape, kind) in expected.items():
        arr = arrays[name]
        if tuple(arr.shape) != shape:
            raise ExportError(f"{source}: array {name} has shape {tuple(arr.shape)}, the header implies {shape}.")
        if arr.dtype.kind not in kind:
            raise ExportError(f"{source}: array {name} has dtype {arr.dtype}, expected kind {kind!r}.")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ExportError(f"{source}: array {name} holds NaN or infinite values; the run diverged or the "
                              "file is corrupt.")
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise ExportError(f"{source} holds unexpected arrays {unknown}; it was written by another version.")
    return Export(Header.parse(header), {k: np.asarray(arrays[k]) for k in expected})


def _n_reference(arrays: dict[str, np.ndarray], source: str) -> int:
    labels = arrays.get("ref.labels")
    if labels is None or labels.ndim != 1:
        raise ExportError(f"{source} lacks the 1-d array ref.labels (reference images); export the run again.")
    return int(labels.shape[0])


def _require(ok: bool, source: str, what: str) -> None:
    if not ok:
        raise ExportError(f"{source}: malformed header: {what}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _check_field(ok: bool, source: str, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ExportError(f"{source}: malformed header: {name}={value!r} {rule}; export the run again with "
                          "`bioflexnet export RUN_DIR`.")


def _check_header_types(header: dict[str, Any], source: str) -> None:
    """Every header field the reader and the simulator use: present, of the right type, in range."""
    model = header.get("model")
    _require(isinstance(model, dict), source, "no 'model' object")
    for key in ("steps", "beta", "theta", "reset", "mask_sigma", "encoding", "plasticity_rate", "plasticity_decay",
                "num_classes"):
        _require(key in model, source, f"model.{key} is missing")
    _check_field(_is_int(model["steps"]) and 1 <= model["steps"] <= 100_000, source, "model.steps", model["steps"],
                 "must be an integer in [1, 100000]")
    for key, rule, ok in (("beta", "must be a finite number in [0, 1]", lambda v: 0.0 <= v <= 1.0),
                          ("theta", "must be a finite number > 0", lambda v: v > 0),
                          ("plasticity_rate", "must be a finite number >= 0", lambda v: v >= 0),
                          ("plasticity_decay", "must be a finite number in [0, 1)", lambda v: 0 <= v < 1)):
        _check_field(_is_number(model[key]) and ok(model[key]), source, f"model.{key}", model[key], rule)
    _check_field(_is_int(model["num_classes"]) and 2 <= model["num_classes"] <= 100_000, source, "model.num_classes",
                 model["num_classes"], "must be an integer in [2, 100000]")
    for key in ("reset", "mask_sigma", "encoding"):
        _check_field(isinstance(model[key], str), source, f"model.{key}", model[key], "must be a string")
    reference = header.get("reference", {})
    if isinstance(reference, dict) and "input_seed" in reference:
        _check_field(_is_int(reference["input_seed"]) and 0 <= reference["input_seed"] < 2**32, source,
                     "reference.input_seed", reference["input_seed"], "must be an integer in [0, 2**32)")
    layers = header.get("layers")
    _require(isinstance(layers, list) and len(layers) > 0, source, "no 'layers' list")
    names = set()
    for i, d in enumerate(layers):
        keys = ("name", "kind", "c_in", "c_out", "in_size", "out_size", "kernel", "stride", "padding")
        _require(isinstance(d, dict) and all(k in d for k in keys), source, f"layer {i} lacks one of {keys}")
        where = f"layers[{i}]"
        _check_field(isinstance(d["name"], str) and d["name"].isidentifier() and d["name"] not in names, source,
                     f"{where}.name", d["name"], "must be a unique identifier")
        names.add(d["name"])
        where = f"layers[{i}] ({d['name']})"
        for key, low in (("c_in", 1), ("c_out", 1), ("kernel", 1), ("stride", 1), ("padding", 0)):
            _check_field(_is_int(d[key]) and low <= d[key] <= 100_000, source, f"{where}.{key}", d[key],
                         f"must be an integer in [{low}, 100000]")
        for key in ("in_size", "out_size"):
            _check_field(isinstance(d[key], list) and len(d[key]) == 2 and all(_is_int(v) and 1 <= v <= 100_000
                                                                                for v in d[key]),
                         source, f"{where}.{key}", d[key], "must be a list of two integers in [1, 100000]")
        _check_field(d.get("kind") == "conv" or d["padding"] <= d["kernel"] // 2, source, f"{where}.padding",
                     d["padding"], f"must be at most half the kernel ({d['kernel']}) where a max-pool runs")
    for key in ("run", "reference"):
        _check_field(isinstance(header.get(key, {}), dict), source, key, header.get(key), "must be an object")
    readout = header.get("readout")
    _require(isinstance(readout, dict), source, "no 'readout' object")
    _check_field(_is_int(readout.get("features")) and readout["features"] >= 1, source, "readout.features",
                 readout.get("features"), "must be a positive integer")


def _check_header(header: dict[str, Any], source: str) -> None:
    _check_header_types(header, source)
    model = header.get("model")
    _require(isinstance(model, dict), source, "no 'model' object")
    for key in ("steps", "beta", "theta", "reset", "mask_sigma", "encoding", "plasticity_rate", "plasticity_decay",
                "num_classes"):
        _require(key in model, source, f"model.{key} is missing")
    _require(isinstance(model["steps"], int) and model["steps"] >= 1, source, f"model.steps={model['steps']!r}")
    _require(0.0 <= model["beta"] <= 1.0, source, f"model.beta={model['beta']!r} is not in [0, 1]")
    _require(model["theta"] > 0, source, f"model.theta={model['theta']!r} is not > 0")
    ticks = model.get("ticks", 1)
    _require(isinstance(ticks, int) and ticks >= 1, source, f"model.ticks={ticks!r} is not an integer >= 1")
    _require(ticks == 1 or 0.0 < model["beta"] < 1.0, source, f"model.ticks={ticks} needs 0 < beta < 1")
    _require(model["reset"] in RESETS, source, f"model.reset={model['reset']!r} is not one of {RESETS}")
    _require(model.get("refractory", "step") in REFRACTORY, source,
             f"model.refractory={model.get('refractory')!r} is not one of {REFRACTORY}")
    _require(model["mask_sigma"] in SIGMAS, source, f"model.mask_sigma={model['mask_sigma']!r} not in {SIGMAS}")
    _require(model["encoding"] in ENCODINGS, source, f"model.encoding={model['encoding']!r} not in {ENCODINGS}")
    _require(model["encoding"] != "poisson" or isinstance(header.get("reference", {}).get("input_seed"), int),
             source, "a Poisson-encoded export needs reference.input_seed")
    layers = header.get("layers")
    _require(isinstance(layers, list) and len(layers) > 0, source, "no 'layers' list")
    c, size = 3, [32, 32]
    for i, d in enumerate(layers):
        keys = ("name", "kind", "c_in", "c_out", "in_size", "out_size", "kernel", "stride", "padding")
        _require(isinstance(d, dict) and all(k in d for k in keys), source, f"layer {i} lacks one of {keys}")
        _require(d["kind"] in KINDS, source, f"layer {d['name']!r} has kind {d['kind']!r}, not one of {KINDS}")
        _require(d["c_in"] == c and list(d["in_size"]) == size, source,
                 f"layer {d['name']!r} takes {d['c_in']}x{d['in_size']} but the previous stage gives {c}x{size}")
        want = [out_size(s, d["kernel"], d["stride"], d["padding"]) for s in size]
        _require(list(d["out_size"]) == want, source, f"layer {d['name']!r} out_size {d['out_size']} != {want}")
        _require(d["kind"] != "pool" or d["c_out"] == d["c_in"], source, f"pool layer {d['name']!r} changes channels")
        c, size = d["c_out"], want
    _require(layers[0]["kind"] != "pool", source, "the first stage must have neurons (it receives the image)")
    readout = header.get("readout")
    _require(isinstance(readout, dict) and readout.get("features") == c * size[0] * size[1], source,
             f"readout.features must equal the last map's size {c * size[0] * size[1]}")


def expected_arrays(header: dict[str, Any], n_ref: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype kinds)}`` of every array the header implies."""
    model, steps = header["model"], header["model"]["steps"]
    classes = model["num_classes"]
    out = {"input.mean": ((3,), "f"), "input.std": ((3,), "f"),
           "readout.weight": ((classes, header["readout"]["features"]), "f"), "readout.bias": ((classes,), "f"),
           "ref.images": ((n_ref, 3, 32, 32), "u"), "ref.labels": ((n_ref,), "iu"),
           "ref.logits": ((n_ref, classes), "f"), "ref.model_logits": ((n_ref, classes), "f")}
    if model["encoding"] == "poisson":
        out["ref.input_spikes"] = ((n_ref, steps, 3 * 32 * 32 // 8), "u")
    for d in header["layers"]:
        name, c_in, c_out, k = d["name"], d["c_in"], d["c_out"], d["kernel"]
        n_out = c_out * d["out_size"][0] * d["out_size"][1]
        if d["kind"] == "pool":
            continue
        out[f"{name}.weight"] = ((c_out, c_in, k, k), "f")
        out[f"{name}.bias"] = ((c_out,), "f")
        out[f"ref.spikes.{name}"] = ((n_ref, steps, (n_out + 7) // 8), "u")
        if d["kind"] == "flex":
            out[f"{name}.pool_map"] = ((c_out, c_in), "f")
            out[f"{name}.threshold"] = ((c_out, *d["out_size"]), "f")
            for field in ("logit_scale", "logit_shift", "plastic_bias"):
                out[f"{name}.{field}"] = ((c_out,), "f")
            out[f"{name}.eta"] = ((steps, c_out), "f")
            out[f"ref.mask_mean.{name}"] = ((n_ref, steps, c_out), "f")
            out[f"ref.r_sel.{name}"] = ((n_ref, c_out), "f")
            out[f"ref.r_inv.{name}"] = ((n_ref, c_out), "f")
    return out
