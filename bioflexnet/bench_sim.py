"""Wall time of one simulation on several Brian2 devices, measured side by side.

    python -m bioflexnet.bench_sim RUNS/quick/flex-stbp/seed0 --images 50 --repeats 3

Every repeat runs the same export on every device in turn (interleaved, so a
busy machine slows all of them alike) and the table reports medians over the
repeats and each device's ratio to the first one. The standalone devices'
first repeat includes the C++ compilation; later repeats reuse the build
directory, so ``compile`` is the incremental rebuild. The build directory is
kept between invocations (:func:`build_cache`), so only the first invocation
on a machine pays the full build; ``--fresh`` measures a cold one. The devices must also
agree: the script checks that every device gives the same spikes and read-out
as the first one, and says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from core.export_format import read_export
from sim.simulate import MODES, SimOptions, SimResult, simulate

COLUMNS = ("simulate_per_image_s", "simulate_s", "build_network_s", "build_s", "wall_s")


def measure(export, options: SimOptions, devices: list[str], repeats: int, build_root: Path) -> dict:
    """``{device: {column: [seconds per repeat]}}`` and whether every run matched the first one."""
    times = {d: {c: [] for c in COLUMNS} for d in devices}
    reference: SimResult | None = None
    identical = True
    for _ in range(repeats):
        for device in devices:
            run = dataclasses.replace(options, device=device, build_dir=build_root / device)
            t0 = time.perf_counter()
            result = simulate(export, run)
            wall = time.perf_counter() - t0
            for column in COLUMNS[:-1]:
                times[device][column].append(result.timings.get(column, float("nan")))
            times[device]["wall_s"].append(wall)
            if reference is None:
                reference = result
            else:
                identical &= all(np.array_equal(reference.spikes[k], result.spikes[k]) for k in reference.spikes)
                identical &= bool(np.array_equal(reference.logits, result.logits))
    return {"times": times, "identical": identical}


def build_cache(export_path: Path, options: SimOptions) -> Path:
    """A build directory for this export and these options, kept between invocations.

    The key hashes what the generated code depends on: the export file's bytes,
    the options and the Brian2 version. Brian2 rewrites only the generated files
    whose contents changed and ``make`` recompiles only those, so a second
    invocation skips the C++ build (tens of seconds to minutes) and a stale key
    could at worst cost a rebuild, never a wrong binary.
    """
    import hashlib
    import os

    import brian2

    h = hashlib.sha256(Path(export_path).read_bytes())
    h.update(repr((dataclasses.asdict(options), brian2.__version__)).encode())
    base = Path(os.environ.get("BIOFLEXNET_CACHE", Path.home() / ".cache" / "bioflexnet"))
    return base / "brian2-bench" / h.hexdigest()[:16]


def table(times: dict, n_images: int) -> str:
    devices = list(times)
    base = statistics.median(times[devices[0]]["simulate_per_image_s"])
    lines = [f"{'device':<16} {'ms/image':>9} {'ratio':>6} {'simulate s':>11} {'network s':>10} {'compile s':>10} "
             f"{'wall s':>8}   (medians; compile: first, then later repeats)"]
    for device in devices:
        t = {c: statistics.median(v) for c, v in times[device].items()}
        compile_s = times[device]["build_s"]
        compile_txt = "-" if np.isnan(compile_s[0]) else (f"{compile_s[0]:.0f}/{statistics.median(compile_s[1:]):.1f}"
                                                          if len(compile_s) > 1 else f"{compile_s[0]:.0f}")
        lines.append(f"{device:<16} {t['simulate_per_image_s'] * 1e3:9.2f} {t['simulate_per_image_s'] / base:6.2f} "
                     f"{t['simulate_s']:11.2f} {t['build_network_s']:10.2f} {compile_txt:>10} {t['wall_s']:8.1f}")
    lines.append(f"({n_images} images per run; ratio = this device's simulation time per image / {devices[0]}'s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="_get_vc_env is private", category=UserWarning)
    p = argparse.ArgumentParser(prog="python -m bioflexnet.bench_sim", description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path, help="RUN_DIR holding export.npz, or the .npz file")
    p.add_argument("--devices", nargs="+", default=["runtime", "cpp_standalone"],
                   choices=["runtime", "cpp_standalone", "cuda_standalone"])
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", choices=MODES, default=None,
                   help="default: the trained dynamics (exact at K = 1, biophysical at the export's K)")
    p.add_argument("--ticks", type=int, default=None, help="ticks per step (default: the export's K)")
    p.add_argument("--build-root", type=Path, default=None,
                   help="standalone build directories (default: a cache keyed by the export and options, reused "
                        "across invocations; see build_cache)")
    p.add_argument("--fresh", action="store_true", help="build in a temporary directory (measures a cold build)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.images < 1:
        p.error("--repeats and --images must be >= 1")
    devices = list(dict.fromkeys(args.devices))
    path = args.export / "export.npz" if args.export.is_dir() else args.export
    export = read_export(path)
    mode = args.mode or ("exact" if export.ticks == 1 else "biophysical")
    options = SimOptions(n_images=args.images, mode=mode, ticks=args.ticks)
    with tempfile.TemporaryDirectory(prefix="bioflexnet-bench-") as tmp:
        root = Path(tmp) if args.fresh else (args.build_root or build_cache(path, options))
        print(f"standalone builds in {root}" + ("" if args.fresh else " (reused across invocations)"))
        out = measure(export, options, devices, args.repeats, root)
    print(f"{path}: {mode} mode, {args.repeats} repeats, devices interleaved")
    print(table(out["times"], args.images))
    print("every run gave the same spikes and read-out as the first" if out["identical"]
          else "WARNING: the devices disagree (spikes or read-out differ from the first device's)")
    return 0 if out["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
