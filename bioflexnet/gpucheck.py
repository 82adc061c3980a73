"""One prepared GPU session: ``make gpu-check`` (``--dry-run``: every code path at tiny size on the CPU).

On a machine with an NVIDIA GPU, within ``--budget`` seconds (8 minutes by default):

1. **Brian2 on the GPU**: builds the quick flex-stbp export (``runs/quick/flex-stbp/seed0``,
   or a smoke run trained here first) with ``cuda_standalone`` and runs it; reports the
   spike agreement with the ``runtime`` device on the same images.
2. **Throughput**: VGG16 at T = 10 training steps in bf16 (flex and vgg, channels-last,
   batch 128, synthetic data on the device) in images/s, and the projected time of the
   paper's 120 epochs of 50,000 images.
3. **A short GPU run**: trains a VGG11 flex-stbp run in bf16 for as many epochs as the
   measured throughput fits into the remaining budget, and reports its test accuracy.

Every stage prints one line starting with ``gpu-check`` and its result, and writes
``gpu_check.json`` to ``--out``; a stage that fails is reported and the next one runs.
The dry run swaps ``cuda_standalone`` for ``cpp_standalone``, VGG16/T=10 for a VGG5 of
width 1/16 at T = 2, and the run for a few steps on the CPU.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

QUICK_RUN = Path("runs/quick/flex-stbp/seed0")
PAPER_IMAGES, PAPER_EPOCHS = 50_000, 120


class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def say(stage: str, text: str) -> None:
    print(f"gpu-check [{stage}] {text}", flush=True)


def stage_brian2(args, out: Path) -> dict:
    """cuda_standalone (dry: cpp_standalone) vs runtime on the quick flex-stbp export."""
    from core.export_format import read_export
    from sim.simulate import SimOptions, simulate
    from training.export import export_run

    run = QUICK_RUN if (QUICK_RUN / "checkpoint.pt").is_file() else out / "flex-stbp-smoke"
    if not (run / "checkpoint.pt").is_file():
        from core.config import make_config
        from training.trainer import train_run
        overrides = ["train.train_subset=256", "train.batch_size=32"] if args.dry_run else []
        say("brian2", f"no quick run found; training a smoke flex-stbp run in {run}")
        train_run(make_config("smoke", mode="stbp", flex=True, overrides=overrides), run,
                  data_dir=args.data_dir, device="cpu", progress=False)
    n = 2 if args.dry_run else args.images
    path = export_run(run, out / "export.npz", n_images=n, data_dir=args.data_dir)
    export = read_export(path)
    device = "cpp_standalone" if args.dry_run else "cuda_standalone"
    t0 = time.perf_counter()
    ref = simulate(export, SimOptions(n_images=n, device="runtime"))
    t_runtime = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = simulate(export, SimOptions(n_images=n, device=device, build_dir=out / f"build-{device}"))
    t_device = time.perf_counter() - t0
    agree = {k: float(np.mean(ref.spikes[k] == got.spikes[k])) for k in ref.spikes}
    result = {"device": device, "images": n, "run": str(run), "runtime_s": t_runtime, "device_s": t_device,
              "device_timings": got.timings, "spike_agreement": agree,
              "identical": all(v == 1.0 for v in agree.values()),
              "readout_max_abs_diff": float(np.abs(ref.logits - got.logits).max())}
    say("brian2", f"{device} vs runtime on {n} images: spikes identical: {result['identical']} "
        f"(min agreement {min(agree.values()):.6f}); {device} {t_device:.1f}s incl. build, runtime {t_runtime:.1f}s")
    return result


def stage_throughput(args, device: str) -> dict:
    """Training images/s of flex and vgg at the paper's size (dry: tiny), bf16, channels-last."""
    from core.config import Arch, Mode, ModelConfig
    from training.models import build_model

    arch, width, steps, batch, n_steps = ((Arch.VGG5, 1 / 16, 2, 8, 2) if args.dry_run
                                          else (Arch.VGG16, 1.0, 10, args.batch, args.measure_steps))
    result = {}
    for flex in (True, False):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch, width=width, mode=Mode.STBP, time_steps=steps, flex=flex))
        model = model.to(device).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)

        def step():
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                out = model.run(x)
                loss = F.cross_entropy(out.logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.apply_plasticity(out)

        for _ in range(2):  # warm-up (cuDNN autotuning, allocator)
            step()
        _sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            step()
        _sync(device)
        ips = batch * n_steps / (time.perf_counter() - t0)
        name = "flex" if flex else "vgg"
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        hours = PAPER_IMAGES * PAPER_EPOCHS / ips / 3600
        result[name] = {"images_per_s": ips, "projected_120_epochs_h": hours, "peak_gib": peak}
        say("throughput", f"{arch.value} T={steps} {name} bf16 batch {batch}: {ips:.0f} images/s; "
            f"120 epochs of 50k would take {hours:.1f} h; peak memory {peak:.1f} GiB")
        del model, opt
    return result


def stage_train(args, device: str, clock: Clock, out: Path) -> dict:
    """A short flex-stbp run sized to the remaining budget."""
    from core.config import make_config
    from training.trainer import train_run

    if args.dry_run:
        overrides = ["train.train_subset=256", "train.batch_size=32", "train.epochs=1", "train.bf16=true",
                     "train.channels_last=true", "train.eval_batch_size=500"]
        cfg = make_config("smoke", mode="stbp", flex=True, overrides=overrides)
    else:
        # VGG11, width 1/2, T = 4: about 6x cheaper per image than VGG16/T=10; sized to what is left
        left = clock.left() - 45  # evaluation and margin
        per_epoch_s = PAPER_IMAGES / max(args.short_run_ips, 1.0)
        epochs = int(max(1, min(10, left // per_epoch_s)))
        overrides = [f"train.epochs={epochs}", "train.batch_size=256", "train.lr=0.1", "train.bf16=true",
                     "train.channels_last=true", "train.eval_batch_size=1000", "train.log_every=50",
                     "model.time_steps=4", "model.width=0.5"]
        cfg = make_config("paper", arch="vgg11", mode="stbp", flex=True, overrides=overrides)
    run_dir = out / "short-run"
    if run_dir.exists():  # this script's own output from an earlier invocation
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    metrics = train_run(cfg, run_dir, data_dir=args.data_dir, device=device, progress=False)
    result = {"variant": cfg.variant, "epochs": cfg.train.epochs, "wall_s": time.perf_counter() - t0,
              "val_accuracy": [float(v) for v in metrics.val_accuracy.values],
              "train_time_s": [float(v) for v in metrics.train_time.values]}
    say("train", f"{cfg.model.arch.value} {cfg.variant} {cfg.train.epochs} epoch(s): test accuracy "
        f"{result['val_accuracy'][-1]:.4f} after {result['wall_s']:.0f}s")
    return result


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bioflexnet.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="every code path at tiny size on the CPU")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all three stages (default 8 min)")
    p.add_argument("--images", type=int, default=20, help="images for the Brian2 comparison")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--measure-steps", type=int, default=10)
    p.add_argument("--skip", nargs="*", default=[], choices=["brian2", "throughput", "train"])
    args = p.parse_args(argv)
    clock = Clock(args.budget)
    if args.dry_run:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        p.error("no CUDA device is visible to torch; run on a GPU machine, or pass --dry-run to check the script.")
    args.out.mkdir(parents=True, exist_ok=True)
    say("start", f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
        + f", torch {torch.__version__}, budget {args.budget:.0f}s" + (" [dry run]" if args.dry_run else ""))
    report: dict = {"dry_run": args.dry_run, "device": device}
    stages = [("throughput", lambda: stage_throughput(args, device)),
              ("brian2", lambda: stage_brian2(args, args.out)),
              ("train", lambda: stage_train(args, device, clock, args.out))]
    ok = True
    for name, fn in stages:  # throughput first: the run's length is sized from it
        if name in args.skip:
            continue
        if name == "train":
            flex = report.get("throughput", {}).get("flex", {}).get("images_per_s", 0.0)
            # VGG11 at width 1/2 and T=4 vs VGG16 at T=10: ~10x fewer operations per image; assume 6x
            args.short_run_ips = max(flex * 6, 1.0)
        try:
            report[name] = fn()
        except Exception as exc:  # report and go on: one failed stage must not hide the others
            ok = False
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            say(name, f"FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        report[f"{name}_done_at_s"] = args.budget - clock.left()
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    say("done", f"{args.budget - clock.left():.0f}s of {args.budget:.0f}s; report in {args.out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
