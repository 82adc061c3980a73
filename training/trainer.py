"""The training loop: SGD with a triangular learning rate, full validation every epoch.

Splits: the validation split is carved from the training images
(:func:`training.data.hold_out`, ``train.val_size`` class-balanced images fixed by
``train.data_seed``); it drives the per-epoch curves. The test split is
evaluated once, after the last epoch, and stored as ``test_accuracy`` /
``test_loss`` beside the curves; nothing is chosen on it.

Reproducibility: the model is initialised from ``seed``; the shuffling,
augmentation and any Poisson draws of epoch ``e`` come from generators seeded
with ``(seed, e)``, so a run resumed after epoch ``e`` continues exactly as
an uninterrupted one would. A checkpoint is written (atomically) after every
epoch; a non-finite loss stops training with the last good checkpoint intact.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from tqdm.auto import tqdm

from core.config import ConfigError, RunConfig
from core.errors import UserError
from core.results import provenance, write_dataset, write_json
from core.runlock import RunLock, describe_takeover, remove_stale_temps
from training import data as cifar
from training import distributed
from training.models import ModelOutput, SpikingVGG, build_model, parameter_count
from training.runs import (CHECKPOINT, CONFIG, METRICS, PROVENANCE, RunDirError, init_state, load_checkpoint,
                           run_config, save_checkpoint, write_config)


PROGRESS_LINE_S = 30.0  # without a progress bar, a line at most this often (seconds)


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite."""


class EvalResult(NamedTuple):
    loss: float
    accuracy: float
    firing_rate: dict[str, float]  # per neuron layer: mean spikes per neuron and step (ann: fraction > 0)
    conv_ratio: dict[str, float]  # per flex layer: mean mask m (share of the conv path)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Triangular schedule: linear warm-up to ``peak``, then linear decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def ticks_at(step: int, total_steps: int, fine_updates: int, ticks: int) -> int:
    """Time resolution of optimiser update ``step``: ``ticks`` for the last ``fine_updates`` updates (all if 0),
    else 1."""
    return ticks if fine_updates == 0 or step >= total_steps - fine_updates else 1


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def batch_layer_means(out: ModelOutput) -> tuple[dict[str, float], dict[str, float]]:
    """Per layer, the batch's mean activity (fraction of neurons and steps with a spike, or ReLU > 0) and mean
    mask share m (flex layers)."""
    rates = {t.name: (t.output > 0).float().mean().item() for t in out.layers}
    ratios = {t.name: t.mask.mean().item() for t in out.layers if t.mask is not None}
    return rates, ratios


@torch.no_grad()
def evaluate(model: SpikingVGG, split: cifar.Split, batch_size: int, ticks: int | None = None) -> EvalResult:
    """Loss, accuracy and layer statistics over the *whole* split, in eval mode (at ``ticks``, default the model's)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    rate_sum: dict[str, float] = {}
    ratio_sum: dict[str, float] = {}
    for x, y in cifar.batches(split, batch_size):
        out = model.run(x, ticks=ticks)
        loss_sum += F.cross_entropy(out.logits, y, reduction="sum").item()
        correct += (out.logits.argmax(1) == y).sum().item()
        rates, ratios = batch_layer_means(out)
        for k, v in rates.items():
            rate_sum[k] = rate_sum.get(k, 0.0) + v * len(y)
        for k, v in ratios.items():
            ratio_sum[k] = ratio_sum.get(k, 0.0) + v * len(y)
        n += len(y)
    model.train(was_training)
    return EvalResult(loss_sum / n, correct / n, {k: v / n for k, v in rate_sum.items()},
                      {k: v / n for k, v in ratio_sum.items()})


@dataclass
class Trainer:
    """Train one run described by ``cfg`` into ``run_dir``."""

    cfg: RunConfig
    run_dir: Path
    data_dir: Path | None = None
    device: str = "cpu"
    progress: bool | None = None  # None: a bar only when attached to a terminal

    def run(self, resume: bool = False) -> xr.Dataset:
        ranks = distributed.from_environment()  # one process, or a rank of a torchrun job
        device = distributed.init(ranks, self.device)
        try:
            return self._run(resume, ranks, device)
        finally:
            if ranks.world > 1 and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def _run(self, resume: bool, ranks: distributed.DistInfo, device: str) -> xr.Dataset:
        cfg, tc, run_dir = self.cfg, self.cfg.train, Path(self.run_dir)
        s = self._setup(ranks, device)
        history: list[dict[str, Any]] = []
        start_epoch, test = 0, None
        if resume:
            start_epoch, history, test = self._restore(s.model, s.opt)
        elif ranks.main:
            self._start(run_dir)
        if not resume and tc.init_from:  # every rank, before DDP wraps the model
            self._init_from(s.model, Path(tc.init_from))
        distributed.barrier(ranks)
        forward = distributed.wrap(s.model, ranks, device)
        prov = provenance(cfg.to_dict(), cfg.seed)
        for epoch in range(start_epoch, tc.epochs):
            t0 = time.perf_counter()
            stats = self._train_epoch(s, forward, epoch, ranks, device)
            train_time, t1 = time.perf_counter() - t0, time.perf_counter()
            val = evaluate(s.model, s.val, tc.eval_batch_size, ticks=stats.ticks)
            history.append({"epoch": epoch + 1, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                            "val_loss": val.loss, "val_accuracy": val.accuracy, "lr": stats.lr,
                            "train_time": train_time, "eval_time": time.perf_counter() - t1,
                            "firing_rate": val.firing_rate, "conv_ratio": val.conv_ratio})
            if epoch + 1 == tc.epochs:  # the test split, once, after the last epoch
                res = evaluate(s.model, cifar.load_split("test", self.data_dir, device), tc.eval_batch_size)
                test = {"test_loss": res.loss, "test_accuracy": res.accuracy}
            if ranks.main:
                self._save_epoch(s, history, test, prov)
            distributed.barrier(ranks)
        return metrics_dataset(history, s.model.names_with_neurons(), cfg, prov, test, parameter_count(s.model))

    def _setup(self, ranks: distributed.DistInfo, device: str) -> "_Setup":
        """Splits, model (initialised from the seed), optimiser and schedule; every size checked."""
        cfg, tc = self.cfg, self.cfg.train
        if tc.batch_size % ranks.world:
            raise ConfigError(f"train.batch_size={tc.batch_size} (the global batch) does not divide among "
                              f"{ranks.world} processes; choose a multiple of {ranks.world}.")
        full = cifar.load_split("train", self.data_dir, device)
        if tc.val_size >= len(full):
            raise ConfigError(f"train.val_size={tc.val_size} leaves none of the {len(full)} training images for "
                              "training; lower train.val_size.")
        pool, val_split = cifar.hold_out(full, tc.val_size, tc.data_seed)
        train_split = cifar.subset(pool, tc.train_subset, cfg.seed)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model).to(device)
        if ranks.world > 1:
            distributed.convert_batchnorm(model)
        if tc.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, nesterov=tc.momentum > 0,
                              weight_decay=tc.weight_decay)
        steps_per_epoch = len(train_split) // tc.batch_size
        if steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size={tc.batch_size} is larger than the {len(train_split)} training "
                              "examples; lower the batch size or raise train.train_subset.")
        return _Setup(model, opt, train_split, val_split, steps_per_epoch, steps_per_epoch * tc.epochs,
                      round(steps_per_epoch * tc.warmup_epochs))

    def _train_epoch(self, s: "_Setup", forward, epoch: int, ranks: distributed.DistInfo,
                     device: str) -> "_EpochStats":
        """One epoch of SGD steps, each followed by the Hebbian step of the flex masks."""
        cfg, tc = self.cfg, self.cfg.train
        gen = torch.Generator(device).manual_seed(epoch_seed(cfg.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.seed, epoch))  # Poisson encoding draws
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=tc.bf16)
        s.model.train()
        log = _EpochLog(self, epoch, s.steps_per_epoch, ranks, device)
        batches = cifar.batches(s.train, tc.batch_size, generator=gen, train=True, augmented=tc.augment)
        for i, (x, y) in enumerate(log.bar(batches)):
            x, y = distributed.shard(x, ranks), distributed.shard(y, ranks)  # this rank's share
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            step = epoch * s.steps_per_epoch + i
            lr = lr_at(step, s.total_steps, s.warmup_steps, tc.lr)
            for group in s.opt.param_groups:
                group["lr"] = lr
            ticks = ticks_at(step, s.total_steps, tc.fine_updates, cfg.model.ticks)
            with autocast:
                out = forward(x, ticks=ticks)
                loss = F.cross_entropy(out.logits.float(), y, label_smoothing=tc.label_smoothing)
            s.opt.zero_grad(set_to_none=True)
            loss.backward()
            s.opt.step()
            s.model.apply_plasticity(distributed.all_reduce_moments(out, ranks))
            log.step(i, loss, out.logits, y)
        return _EpochStats(*log.totals(), lr, ticks)

    def _save_epoch(self, s: "_Setup", history: list[dict[str, Any]], test: dict[str, float] | None,
                    prov: dict[str, str]) -> None:
        """Checkpoint and metrics.nc after an epoch (atomically), and the epoch's line."""
        cfg, run_dir, h = self.cfg, Path(self.run_dir), history[-1]
        save_checkpoint(run_dir, {"config": cfg.to_dict(), "model": s.model.state_dict(),
                                  "optimizer": s.opt.state_dict(), "epoch": h["epoch"], "history": history,
                                  "test": test, "provenance": prov})
        write_dataset(metrics_dataset(history, s.model.names_with_neurons(), cfg, prov, test,
                                      parameter_count(s.model)), run_dir / METRICS)
        print(f"{cfg.variant} seed {cfg.seed} epoch {h['epoch']}/{cfg.train.epochs}: train loss {h['train_loss']:.4f} "
              f"acc {h['train_accuracy']:.4f} | val loss {h['val_loss']:.4f} acc {h['val_accuracy']:.4f} "
              f"| {h['train_time']:.1f}s train", flush=True)
        if test is not None:
            print(f"{cfg.variant} seed {cfg.seed}: test accuracy {test['test_accuracy']:.4f} (full test "
                  "split, evaluated once)", flush=True)

    def _check(self, step_loss: torch.Tensor, correct: torch.Tensor, checked: int, done: int, epoch: int,
               ranks: distributed.DistInfo, batch_size: int) -> tuple[float, int]:
        """Read the epoch's running totals (one device sync), over all ranks; stop on a non-finite loss.

        Returns the epoch's summed loss (over examples) and correct count so far.
        """
        losses = step_loss[:done].clone()
        totals = distributed.all_reduce_sum(torch.cat([losses, correct.to(losses.dtype).view(1)]), ranks)
        losses, n_correct = totals[:-1] / ranks.world, int(totals[-1].item())
        bad = (~torch.isfinite(losses[checked:])).nonzero()
        if len(bad):
            i = checked + int(bad[0])
            raise TrainingDiverged(_diverged_message(float(losses[i]), epoch, i, epoch * len(step_loss) + i,
                                                     Path(self.run_dir)))
        return float(losses.sum()) * batch_size, n_correct

    def _start(self, run_dir: Path) -> None:
        if (run_dir / CHECKPOINT).exists():
            raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out.")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, self.cfg)
        write_json(provenance(self.cfg.to_dict(), self.cfg.seed), run_dir / PROVENANCE)

    def _init_from(self, model: SpikingVGG, source: Path) -> None:
        """Start from another run's trained weights (fine-tuning, e.g. at another ``model.ticks``)."""
        state = init_state(source, self.cfg.model, map_location=self.device)
        model.load_state_dict(state["model"])
        print(f"{self.cfg.variant}: starting from the weights of {source} (epoch {state['epoch']})", flush=True)

    def _restore(self, model: SpikingVGG,
                 opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]], dict[str, float] | None]:
        state = load_checkpoint(self.run_dir, map_location=self.device)
        saved = run_config(state)
        if saved != self.cfg:
            raise RunDirError(f"{self.run_dir} was trained with a different config "
                              f"({_config_diff(saved, self.cfg)}); resume with the same options, or start a new run.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state["epoch"] >= self.cfg.train.epochs:
            # rewrite metrics.nc from the checkpoint's history: `train --resume` is how a lost or corrupt one comes back
            write_dataset(metrics_dataset(list(state["history"]), model.names_with_neurons(), self.cfg,
                                          state.get("provenance") or provenance(self.cfg.to_dict(), self.cfg.seed),
                                          state.get("test"), parameter_count(model)),
                          Path(self.run_dir) / METRICS)
            print(f"{self.run_dir}: all {self.cfg.train.epochs} epochs are done; nothing to resume "
                  f"({METRICS} rewritten from the checkpoint).", flush=True)
        return state["epoch"], list(state["history"]), state.get("test")


class _Setup(NamedTuple):
    model: SpikingVGG
    opt: torch.optim.Optimizer
    train: cifar.Split
    val: cifar.Split
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


class _EpochStats(NamedTuple):
    loss: float  # mean training loss over the epoch's examples
    accuracy: float
    lr: float  # at the epoch's last update
    ticks: int  # the time resolution of the epoch's last update (validation runs at it)


class _EpochLog:
    """The epoch's loss and accuracy, accumulated on the device and read (with the finiteness check) every
    ``train.log_every`` steps, so the step itself never waits for the device; a progress bar on a terminal,
    otherwise a line every PROGRESS_LINE_S seconds."""

    def __init__(self, trainer: Trainer, epoch: int, steps: int, ranks: distributed.DistInfo, device: str):
        self.trainer, self.epoch, self.steps, self.ranks = trainer, epoch, steps, ranks
        self.step_loss = torch.zeros(steps, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.checked, self.seen, self.loss_sum, self.n_correct = 0, 0, 0.0, 0
        self.t0 = self.last_line = time.perf_counter()
        self._bar = None

    def bar(self, batches):
        cfg = self.trainer.cfg
        self._bar = tqdm(batches, total=self.steps, desc=f"{cfg.variant} epoch {self.epoch + 1}/{cfg.train.epochs}",
                         disable=_bar_disabled(self.trainer.progress) if self.ranks.main else True, leave=False)
        return self._bar

    def step(self, i: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        cfg = self.trainer.cfg
        self.step_loss[i] = loss.detach()
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y) * self.ranks.world
        if (i + 1) % cfg.train.log_every and i + 1 != self.steps:
            return
        self.loss_sum, self.n_correct = self.trainer._check(self.step_loss, self.correct, self.checked, i + 1,
                                                            self.epoch, self.ranks, cfg.train.batch_size)
        self.checked = i + 1
        loss_mean, acc = self.loss_sum / self.seen, self.n_correct / self.seen
        self._bar.set_postfix(loss=f"{loss_mean:.3f}", acc=f"{acc:.3f}")
        if self._bar.disable and self.ranks.main and self.trainer.progress is not False and \
                time.perf_counter() - self.last_line >= PROGRESS_LINE_S and i + 1 < self.steps:
            # no bar (a pipe, a log file, the reproduce workflow): a line now and then instead
            self.last_line = time.perf_counter()
            print(f"{cfg.variant} seed {cfg.seed} epoch {self.epoch + 1}/{cfg.train.epochs}: step {i + 1}/"
                  f"{self.steps}, train loss {loss_mean:.4f} acc {acc:.4f}, {self.last_line - self.t0:.0f}s", flush=True)

    def totals(self) -> tuple[float, float]:
        return self.loss_sum / self.seen, self.n_correct / self.seen


def _diverged_message(loss: float, epoch: int, i: int, step: int, run_dir: Path) -> str:
    """What happened and what is on disk: a checkpoint exists only once an epoch has finished."""
    where = f"loss became {loss} at epoch {epoch + 1}, step {i + 1} (global step {step}); training stopped. "
    if epoch == 0:
        kept = (f"No epoch finished, so {run_dir} holds no checkpoint (only {CONFIG} and {PROVENANCE}); "
                "lower train.lr or change the neuron parameters and train again (the same --out can be reused).")
    else:
        kept = (f"The last good checkpoint (after epoch {epoch}) in {run_dir} is intact; lower train.lr or change "
                "the neuron parameters and start a new run.")
    return where + kept


def _bar_disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _config_diff(a: RunConfig, b: RunConfig) -> str:
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    return ", ".join(f"{k}: {fa.get(k)!r} in the run vs {fb.get(k)!r} now" for k in sorted(fa) if fa.get(k) != fb.get(k))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def metrics_dataset(history: list[dict[str, Any]], layers: list[str], cfg: RunConfig, prov: dict[str, str],
                    test: dict[str, float] | None = None, n_parameters: int | None = None) -> xr.Dataset:
    """Per-epoch metrics as an xarray Dataset with dims ``epoch`` and ``layer``.

    ``test_accuracy`` / ``test_loss`` (scalars) are NaN until the last epoch is done.
    """
    epochs = [h["epoch"] for h in history]

    def per_layer(key: str) -> np.ndarray:
        return np.array([[h[key].get(name, math.nan) for name in layers] for h in history], dtype=float)

    def scalar(key: str, long_name: str, units: str) -> xr.DataArray:
        return xr.DataArray([h[key] for h in history], dims="epoch", attrs={"long_name": long_name, "units": units})

    ds = xr.Dataset(
        {
            "train_loss": scalar("train_loss", "training cross-entropy (mean over the epoch, augmented)", "nat"),
            "train_accuracy": scalar("train_accuracy", "training top-1 accuracy (mean over the epoch, augmented)", "1"),
            "val_loss": scalar("val_loss", "validation cross-entropy (held-out training images)", "nat"),
            "val_accuracy": scalar("val_accuracy", "validation top-1 accuracy (held-out training images)", "1"),
            "test_loss": xr.DataArray((test or {}).get("test_loss", math.nan), attrs={
                "long_name": "cross-entropy on the full CIFAR-10 test split, evaluated once after the last epoch",
                "units": "nat"}),
            "test_accuracy": xr.DataArray((test or {}).get("test_accuracy", math.nan), attrs={
                "long_name": "top-1 accuracy on the full CIFAR-10 test split, evaluated once after the last epoch",
                "units": "1"}),
            "lr": scalar("lr", "learning rate at the last step of the epoch", "1"),
            "train_time": scalar("train_time", "wall time of the epoch's training steps", "s"),
            "eval_time": scalar("eval_time", "wall time of the epoch's validation", "s"),
            "firing_rate": xr.DataArray(per_layer("firing_rate"), dims=("epoch", "layer"), attrs={
                "long_name": "mean spikes per neuron and time step on the validation split (ann: fraction of active units)",
                "units": "1/step"}),
            "conv_ratio": xr.DataArray(per_layer("conv_ratio"), dims=("epoch", "layer"), attrs={
                "long_name": "mean flex mask m (share of the conv path) on the validation split; NaN for non-flex layers",
                "units": "1"}),
        },
        coords={"epoch": xr.DataArray(epochs, dims="epoch", attrs={"long_name": "epochs completed", "units": "1"}),
                "layer": xr.DataArray(layers, dims="layer", attrs={"long_name": "neuron layer"})},
        attrs={**prov, "variant": cfg.variant, "profile": cfg.profile,
               "validation": f"{cfg.train.val_size} class-balanced training images (data_seed {cfg.train.data_seed})",
               **({"n_parameters": n_parameters} if n_parameters is not None else {})},
    )
    return ds


def train_run(cfg: RunConfig, run_dir: str | Path, *, data_dir: str | Path | None = None, device: str = "cpu",
              resume: bool = False, progress: bool | None = None,
              decide: Callable[[], bool] | None = None) -> xr.Dataset:
    """Train (or resume) one run; returns the per-epoch metrics.

    The run directory is locked for the whole call (:class:`core.runlock.RunLock`: a second writer gets
    an error naming this process), and temporary files of writes interrupted earlier are removed first.
    ``decide``, if given, runs once the lock is held and before anything is written, and returns whether
    to resume (``train --continue``: it checks, then sets an old checkpoint aside).
    """
    run_dir = Path(run_dir)
    if cfg.model.num_classes < len(cifar.CLASSES):  # checked before any work: the labels would not fit the logits
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} is smaller than CIFAR-10's "
                          f"{len(cifar.CLASSES)} classes; use {len(cifar.CLASSES)}.")
    trainer = Trainer(cfg, run_dir, Path(data_dir) if data_dir else None, device, progress)
    if not distributed.from_environment().main:  # a torchrun job: rank 0 owns (locks and writes) the run dir
        return trainer.run(resume=resume)
    with RunLock(run_dir) as lock:
        for line in [describe_takeover(lock)] + [f"{run_dir}: removed {p.name}, a temporary file left by an "
                                                 "interrupted write" for p in remove_stale_temps(run_dir)]:
            if line:
                print(line, flush=True)
        if decide is not None:
            resume = decide()
        return trainer.run(resume=resume)
