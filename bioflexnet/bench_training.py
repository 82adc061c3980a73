"""Training-step benchmarks, side by side: ``python -m bioflexnet.bench_training`` (``make bench``).

Every comparison runs its contenders in interleaved rounds (one step of each
in turn, so a busy machine slows all alike) and reports the median step time
and the ratio of medians. One thread per process unless ``--threads``.

* **peers**: the same plain VGG5 SNN (3x3 conv + BN + LIF stages, 2x2 max-pool,
  linear read-out averaged over T; beta 0.5, theta 1, reset by subtraction,
  atan surrogate alpha 2, direct encoding with the first conv + BN computed once
  and repeated over T) in BioFlexNet, SpikingJelly 2.0 (multi-step,
  its default ``lif_multi_step``) and snnTorch (``Leaky``, its per-step
  loop). The peers (the ``bench`` extra) are installed by ``make bench`` with
  ``pip install --no-deps`` (their declared dependencies would pull a CUDA
  torch); a missing peer is reported, not fatal.
* **flex vs vgg** per mode, at the quick profile's size (``vgg`` is FLEX's twin baseline:
  2x2 stride-2 conv + BN + LIF down-sampling stages), the same flex step with the
  reference ops (``fused = False``) for what the fused ops buy, and the classic VGG
  (2x2 max-pool, ``vggmp``) beside both.
* **time resolution**: a flex-stbp and a vgg-stbp step at ``model.ticks = 4`` (docs/model.md, "Time") against
  one tick per step.
* **stbp vs T x ann** for the VGG baseline.
* **peak memory**: the peak resident set during two training steps above the
  resident set before them (Linux ``/proc``), each contender in its own process.

Benchmarks, not tests: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core import equations
from core.config import Arch, Downsample, Mode, ModelConfig
from training.models import build_model

BETA, THETA, ALPHA = 0.5, 1.0, 2.0


def _set_fused(model: nn.Module, on: bool) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = on
    return model


def bioflexnet_model(mode: str, flex: bool, steps: int, width: float, arch: str = "vgg5",
                     fused: bool = True, downsample: str = "conv", ticks: int = 1) -> nn.Module:
    """A BioFlexNet model; ``flex=False`` with ``downsample="conv"`` is FLEX's twin baseline (docs/model.md),
    ``downsample="maxpool"`` the classic VGG (2x2 max-pool), the net the peers implement."""
    cfg = ModelConfig(arch=Arch(arch), width=width, mode=Mode(mode), time_steps=steps, flex=flex,
                      beta=BETA, theta=THETA, downsample=Downsample(downsample), ticks=ticks)
    return _set_fused(build_model(cfg), fused)


class _PeerVGG5(nn.Module):
    """Plain VGG5 SNN for a peer library; ``neuron()`` builds its LIF layer."""

    def __init__(self, width: float, steps: int, neuron: Callable[[], nn.Module], multistep: bool):
        super().__init__()
        c = [max(1, round(n * width)) for n in (64, 128, 256)]
        self.steps, self.multistep = steps, multistep
        self.register_buffer("mean", torch.tensor(equations.CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(equations.CIFAR10_STD).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0]))
        self.convs = nn.ModuleList([nn.Sequential(nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b))
                                    for a, b in ((c[0], c[1]), (c[1], c[2]))])
        self.lifs = nn.ModuleList([neuron() for _ in range(3)])
        self.fc = nn.Linear(c[2] * 16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x0 = self.stem(equations.normalise_input(images, self.mean, self.std))  # computed once, repeated over T
        if self.multistep:  # SpikingJelly: [T, B, ...] through every layer, stateless layers on [T*B, ...]
            x = self.lifs[0](x0.unsqueeze(0).repeat(self.steps, 1, 1, 1, 1))
            for conv, lif in zip(self.convs, self.lifs[1:]):
                x = lif(_flat(conv, _flat(lambda z: F.max_pool2d(z, 2), x)))
            x = _flat(lambda z: F.max_pool2d(z, 2), x)
            return self.fc(x.flatten(2)).mean(0)
        mems = [lif.init_leaky() for lif in self.lifs]  # snnTorch: one step at a time
        out = 0.0
        for _ in range(self.steps):
            s, mems[0] = self.lifs[0](x0, mems[0])
            for i, conv in enumerate(self.convs):
                s, mems[i + 1] = self.lifs[i + 1](conv(F.max_pool2d(s, 2)), mems[i + 1])
            out = out + self.fc(F.max_pool2d(s, 2).flatten(1))
        return out / self.steps


def _flat(fn, x: torch.Tensor) -> torch.Tensor:
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def spikingjelly_model(steps: int, width: float) -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    def lif():  # v = (1 - 1/tau) v + x with tau = 2: beta = 0.5; v_reset None: reset by subtraction
        return neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=THETA, v_reset=None,
                              surrogate_function=surrogate.ATan(alpha=ALPHA), step_mode="m")
    model = _PeerVGG5(width, steps, lif, multistep=True)
    from spikingjelly.activation_based import functional
    model.reset_state = lambda: functional.reset_net(model)  # its neurons keep state between calls
    return model


def snntorch_model(steps: int, width: float) -> nn.Module:
    import snntorch
    from snntorch import surrogate

    def lif():
        return snntorch.Leaky(beta=BETA, threshold=THETA, spike_grad=surrogate.atan(alpha=ALPHA),
                              reset_mechanism="subtract")
    return _PeerVGG5(width, steps, lif, multistep=False)


def make_step(model: nn.Module, batch: int, seed: int = 0) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward, SGD) on a fixed random batch."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    run = getattr(model, "run", None)

    def step() -> None:
        if hasattr(model, "reset_state"):
            model.reset_state()
        logits = run(x).logits if run is not None else model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def interleaved(contenders: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every contender, one call of each per round."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _builders(args) -> dict[str, Callable[[], nn.Module]]:
    T, w, Tq, arch = args.peer_steps, args.width, args.steps, args.arch
    b = {
        "peers/bioflexnet": lambda: bioflexnet_model("stbp", False, T, w, downsample="maxpool"),
        "peers/spikingjelly": lambda: spikingjelly_model(T, w),
        "peers/snntorch": lambda: snntorch_model(T, w),
    }
    for mode in ("ann", "hybrid", "stbp"):
        b[f"{mode}/flex"] = lambda mode=mode: bioflexnet_model(mode, True, Tq, w, arch)
        b[f"{mode}/vgg"] = lambda mode=mode: bioflexnet_model(mode, False, Tq, w, arch)
    b["stbp/flex-reference-ops"] = lambda: bioflexnet_model("stbp", True, Tq, w, arch, fused=False)
    b["stbp/vggmp"] = lambda: bioflexnet_model("stbp", False, Tq, w, arch, downsample="maxpool")
    for family, flex in (("flex", True), ("vgg", False)):  # the training-time cost of the time resolution
        b[f"stbp/{family}-ticks4"] = lambda flex=flex: bioflexnet_model("stbp", flex, Tq, w, arch, ticks=4)
    return b


def _available(builders: dict, notes: list[str]) -> dict:
    out = {}
    for name, build in builders.items():
        try:
            torch.manual_seed(0)
            out[name] = build()
        except ImportError as e:
            notes.append(f"{name}: not installed ({e.name}); `make bench` installs it with pip --no-deps")
    return out


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rise_mb(fn: Callable[[], None]) -> float:
    """Peak resident set during ``fn()`` above the resident set before it (Linux ``/proc``), in MiB."""
    with open("/proc/self/clear_refs", "w") as f:  # resets the high-water mark VmHWM to the current RSS
        f.write("5")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def peak_memory_mb(name: str, args) -> float:
    """Peak memory of two steps of ``name`` above the process's memory before them, in a fresh process."""
    code = (f"import torch; torch.set_num_threads({args.threads}); import argparse;"
            "from bioflexnet import bench_training as b;"
            f"a = argparse.Namespace(peer_steps={args.peer_steps}, width={args.width}, steps={args.steps}, arch={args.arch!r});"
            f"m = b._builders(a)[{name!r}](); s = b.make_step(m, {args.batch});"
            "print(b.peak_rise_mb(lambda: (s(), s())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else float("nan")


def report(times: dict[str, list[float]], memory: dict[str, float], args, notes: list[str]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"training step, batch {args.batch}, {args.threads} thread(s), {args.rounds} interleaved rounds "
             f"(medians); torch {torch.__version__}", ""]
    lines.append(f"{'contender':<26} {'ms/step':>9} {'ratio':>8}  {'peak MB':>8}  ratio against")
    groups = [("peers/bioflexnet", ["peers/spikingjelly", "peers/snntorch"],
               f"VGG5 width {args.width} SNN, T={args.peer_steps}, stbp")]
    for mode in ("ann", "hybrid", "stbp"):
        groups.append((f"{mode}/vgg", [f"{mode}/flex"],
                       f"{mode}: FLEX vs VGG, {args.arch.upper()} width {args.width}, T={args.steps}"))
    groups.append(("stbp/flex", ["stbp/flex-reference-ops"], "fused ops vs reference ops (flex-stbp)"))
    groups.append(("stbp/vggmp", ["stbp/vgg", "stbp/flex"], "the classic VGG (2x2 max-pool) vs the twin and FLEX (stbp)"))
    for family in ("flex", "vgg"):
        groups.append((f"stbp/{family}", [f"stbp/{family}-ticks4"],
                       f"time resolution: K = 4 ticks per step vs 1 ({family}-stbp, model.ticks)"))
    for base, others, title in groups:
        if base not in med:
            continue
        lines.append(f"-- {title}")
        for name in [base, *others]:
            if name in med:
                lines.append(f"{name:<26} {med[name] * 1e3:9.1f} {med[name] / med[base]:8.2f}  "
                             f"{memory.get(name, float('nan')):8.1f}  {base}")
    if "ann/vgg" in med and "stbp/vgg" in med:
        lines.append(f"-- STBP vs T x ANN (VGG): stbp step / ({args.steps} x ann step) = "
                     f"{med['stbp/vgg'] / (args.steps * med['ann/vgg']):.2f}")
    if "peers/bioflexnet" in med:
        for peer in ("peers/spikingjelly", "peers/snntorch"):
            if peer in med:
                lines.append(f"-- BioFlexNet is {med[peer] / med['peers/bioflexnet']:.2f}x faster than {peer[6:]} "
                             "(target >= 1.5)")
    for mode in ("ann", "hybrid", "stbp"):
        if f"{mode}/flex" in med:
            lines.append(f"-- FLEX / VGG step, {mode}: {med[f'{mode}/flex'] / med[f'{mode}/vgg']:.2f} (target <= 1.5)")
    lines += notes
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bioflexnet.bench_training", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--arch", choices=[a.value for a in Arch], default=Arch.VGG5.value,
                   help="architecture of the FLEX vs VGG comparisons (the peers are always VGG5)")
    p.add_argument("--steps", type=int, default=2, help="T for flex vs vgg (the quick profile's)")
    p.add_argument("--peer-steps", type=int, default=4, help="T for the peer comparison")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="+", default=None, help="contender name prefixes (e.g. peers stbp)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    p.add_argument("--out", type=Path, default=Path("runs/bench/training_step.txt"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    notes: list[str] = []
    builders = {k: v for k, v in _builders(args).items()
                if args.only is None or any(k.startswith(o) for o in args.only)}
    models = _available(builders, notes)
    steps = {name: make_step(m, args.batch) for name, m in models.items()}
    times = interleaved(steps, args.rounds)
    memory = {} if args.no_memory else {name: peak_memory_mb(name, args) for name in models}
    text = report(times, memory, args, notes)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"times_s": times, "peak_memory_mb": memory,
                                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
