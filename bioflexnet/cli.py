"""``bioflexnet`` command line: the one entry point of the project (the console script).

Every subcommand is declared here or in this package's :mod:`bioflexnet.sim_cli`
and :mod:`bioflexnet.analysis_cli`; each imports the package that does the work
(``training``, ``sim``, ``analysis``) only when it runs, so ``bioflexnet --help``
and ``bioflexnet sim`` never load torch.
"""
from __future__ import annotations

import argparse
import errno
import re
import sys
from pathlib import Path

from bioflexnet import analysis_cli, combine, sim_cli
from core.config import PROFILES, Arch, Mode, make_config
from core.errors import CLIError, UserError
from core.validate import int_in, output_dir, positive_int, seed_int

EXIT_USER_ERROR = 2


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model into a run directory",
                       description="Train one variant. With --resume, continue the run in --out from its "
                                   "checkpoint.pt, with the config stored in that checkpoint (config.json is only "
                                   "a copy for reading); options given must agree with it.")
    p.add_argument("--model", choices=[a.value for a in Arch], default=None, help="backbone (default: the profile's)")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=None, help="ann | hybrid | stbp (default stbp)")
    p.add_argument("--flex", action=argparse.BooleanOptionalAction, default=None,
                   help="PlasticFlex layers (--no-flex: the VGG baseline; default --flex)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None, help="preset (default quick)")
    p.add_argument("--seed", type=seed_int, default=None, help="random seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. model.time_steps=4 or train.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its checkpoint.pt (the checkpoint's config is used)")
    p.add_argument("--continue", dest="proceed", action="store_true",
                   help="resume the run in --out if its checkpoint has exactly this config and is unfinished; "
                        "otherwise start it afresh, keeping an existing checkpoint as checkpoint.previous.pt "
                        "(what the reproduce pipeline runs)")
    p.add_argument("--init-from", type=Path, default=None, metavar="RUN_DIR",
                   help="start from the trained weights of RUN_DIR (same architecture), e.g. to fine-tune a "
                        "K = 1 run at --set model.ticks=4; sets train.init_from")
    p.add_argument("--data-dir", type=Path, default=None, help="directory holding cifar-10-batches-py/ "
                   "(default $BIOFLEXNET_DATA_DIR or ./data)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from training.data import require_data, resolve_data_dir
    from training.devices import torch_device
    from training.runs import CHECKPOINT, init_state, run_config
    from training.trainer import train_run

    output_dir(args.out)
    resolve_data_dir(args.data_dir)
    device = torch_device(args.device)
    if args.init_from is not None:
        if args.resume:
            raise CLIError("--init-from starts a new run from another run's weights; --resume continues this one. "
                           "Give one of them.")
        args.overrides = [*args.overrides, f"train.init_from={args.init_from.resolve()}"]
    if args.resume:
        if args.out.is_dir() and not (args.out / CHECKPOINT).is_file():
            raise CLIError(f"--resume: {args.out} has no {CHECKPOINT}, so no epoch has finished and there is nothing "
                           "to resume; run the same command without --resume to start it again.")
        saved = run_config(args.out)
        cfg = make_config(args.profile or saved.profile, arch=args.model or saved.model.arch.value,
                          mode=args.mode or saved.model.mode.value,
                          flex=saved.model.flex if args.flex is None else args.flex,
                          seed=saved.seed if args.seed is None else args.seed, overrides=args.overrides)
        if not args.overrides and args.profile is None:
            cfg = saved  # nothing asked to change: continue exactly the saved run
    else:
        cfg = make_config(args.profile or "quick", arch=args.model, mode=args.mode,
                          flex=True if args.flex is None else args.flex,
                          seed=0 if args.seed is None else args.seed, overrides=args.overrides)
    if cfg.train.init_from:  # before the data is loaded or the run directory is made
        init_state(cfg.train.init_from, cfg.model)
    decide = None
    if args.proceed and not args.resume:
        def decide() -> bool:  # under the run's lock: nothing is moved before everything is checked
            require_data(args.data_dir)
            return (args.out / CHECKPOINT).is_file() and _continue(args.out, cfg)
    train_run(cfg, args.out, data_dir=args.data_dir, device=device, resume=args.resume, decide=decide)


def _continue(run_dir: Path, cfg) -> bool:
    """``train --continue``: True to resume; else the old checkpoint is set aside and the run starts afresh.

    A checkpoint that does not load never replaces a backup that does: it is kept as
    ``checkpoint.unreadable.pt`` and ``checkpoint.previous.pt`` stays as it was.
    """
    from training.runs import CHECKPOINT, RunDirError, load_checkpoint, run_config

    try:
        state = load_checkpoint(run_dir)
        same = run_config(state) == cfg
    except (RunDirError, UserError):
        state, same = None, False
    if same and int(state["epoch"]) < cfg.train.epochs:
        print(f"{run_dir}: continuing from epoch {int(state['epoch'])} of its checkpoint", flush=True)
        return True
    why = "its config differs" if state is not None and not same else \
        "it is finished, and the code or its inputs changed since" if state is not None else "it cannot be read"
    kept = "checkpoint.previous.pt" if state is not None else "checkpoint.unreadable.pt"
    (run_dir / CHECKPOINT).replace(run_dir / kept)
    print(f"{run_dir}: training afresh ({why}); the old checkpoint is kept as {kept}", flush=True)
    return False


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test accuracy of a trained run (full test split)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=1000)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from training.data import resolve_data_dir
    from training.devices import torch_device
    from training.evaluation import evaluate_run

    device = torch_device(args.device)
    resolve_data_dir(args.data_dir)
    ds = evaluate_run(args.run_dir, data_dir=args.data_dir, device=device, batch_size=args.batch_size)
    print(f"{args.run_dir}: test accuracy {float(ds.test_accuracy):.4f}, test loss {float(ds.test_loss):.4f} "
          f"on {int(ds.attrs['n_images'])} images (written to {args.run_dir / 'evaluation.nc'})")


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train every paper variant of a profile, then simulate, analyse, plot",
                       description="The whole reproduction as a Snakemake workflow (bioflexnet/workflow/Snakefile): "
                                   "train the six variants {vgg, flex} x {ann, hybrid, stbp} for every seed, export "
                                   "and simulate the stbp twins in Brian2, analyse every run, combine the tables, run "
                                   "the figure notebooks. Finished jobs are reused; jobs whose inputs, parameters or "
                                   "code changed run again.")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--out", type=Path, default=None, help="root of the run directories (default runs/PROFILE)")
    p.add_argument("--seeds", type=seed_int, nargs="+", action="extend", default=None,
                   help="training seeds (default 0; repeating --seeds adds to them); claims need >= 3 (paired "
                        "FLEX - VGG intervals over seeds)")
    p.add_argument("--ablations", action="store_true",
                   help="also train the ablations (lambda = 0, mask = 1, no 3x3 pool path, down-sampling neurons "
                        "off, classic max-pool VGG) in stbp mode for every seed; table in ROOT/ablations.md")
    p.add_argument("--jobs", type=int_in(1, 1024), default=None,
                   help="CPU cores Snakemake may use at once (default: all of this machine's)")
    p.add_argument("--dry-run", "-n", action="store_true", help="list every job and why it would run; run nothing")
    p.add_argument("--cluster", choices=["slurm"], default=None,
                   help="run the jobs on a cluster through Snakemake's executor plugin (profile "
                        "bioflexnet/workflow/profiles/slurm; adapt its partitions first)")
    p.add_argument("--cluster-profile", type=Path, default=None, metavar="DIR",
                   help="a Snakemake profile folder of your own (holds config.yaml) instead of the bundled one")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--snakemake", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                   help="everything after it goes to snakemake unchanged (e.g. --snakemake --forceall)")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from bioflexnet.plan import Plan
    from bioflexnet.reproduce import brian_device, reproduce
    from core.results import no_space
    from core.runlock import RunLock, describe_takeover, remove_stale_temps

    root = args.out or Path("runs") / args.profile
    data_dir = None
    if args.dry_run:
        device = "cpu" if args.device == "auto" else args.device
    else:
        from training.data import resolve_data_dir
        from training.devices import torch_device

        output_dir(root)
        # once, here: the jobs run inside ROOT, where a relative path would name another folder
        data_dir = resolve_data_dir(args.data_dir).absolute()
        device = torch_device(args.device)
    try:
        plan = Plan(profile=args.profile, seeds=tuple(args.seeds or [0]), ablations=args.ablations,
                    overrides=tuple(args.overrides), device=device, brian_device=brian_device(device),
                    data_dir=str(args.data_dir.resolve()) if args.data_dir else None,
                    **({"cores": args.jobs} if args.jobs else {}))
    except ValueError as exc:  # ConfigError (a UserError) passes through; a bad seed list lands here
        raise CLIError(str(exc)) from None
    cluster = dict(cluster=args.cluster, cluster_profile=args.cluster_profile)
    if args.dry_run:
        rc = reproduce(plan, root, dry_run=True, extra=args.snakemake, **cluster)
    else:
        # one reproduce per root (Snakemake also locks it; each training locks its own run directory).
        # Snakemake inherits the lock, so it stays held while Snakemake lives, even if this process dies.
        with RunLock(root) as lock:
            notes = [describe_takeover(lock)] + [f"{p.parent}: removed {p.name}, a temporary file left by an "
                                                 "interrupted write" for d in (root, root / "figures")
                                                 for p in remove_stale_temps(d)]
            for line in filter(None, notes):
                print(line, flush=True)
            rc = reproduce(plan, root, extra=args.snakemake, data_dir=data_dir, pass_fds=[lock.fileno()], **cluster)
    if rc != 0 and no_space(root):
        raise CLIError(f"the workflow stopped (snakemake exit {rc}): no space left on device under {root}; free "
                       "some space and run the same command again: finished jobs are reused.")
    if rc != 0:
        raise CLIError(f"the workflow stopped (snakemake exit {rc}); Snakemake's message is printed above (and a "
                       f"failed job's log is kept in its run directory under {root}). Fix the cause and run the "
                       "same command again: finished jobs are reused.")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained run as a framework-free file for the Brian2 simulator",
                       description="Fold batch-norm, write weights, LIF and mask parameters and a float64 PyTorch "
                                   "reference on the first N test images to one .npz file (see sim/).")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", choices=["npz", "nir"], default="npz",
                   help="npz: this project's export for `bioflexnet sim` (default); nir: a NIR graph (model.nir, "
                        "the VGG twin only; docs/nir.md) with its PyTorch reference beside it (model.reference.npz)")
    p.add_argument("--out", type=Path, default=None,
                   help="file to write (default RUN_DIR/export.npz, or RUN_DIR/model.nir with --format nir)")
    p.add_argument("--images", type=positive_int, default=128,
                   help="reference test images stored with their PyTorch spikes (default 128)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    from core.validate import output_file

    if args.format == "nir":
        from training.nir_export import NIR_FILE, export_nir

        output_file(args.out or Path(args.run_dir) / NIR_FILE)
        path = export_nir(args.run_dir, args.out, args.images, args.data_dir)
        print(f"{args.run_dir}: exported to {path} ({path.stat().st_size / 1e6:.1f} MB, NIR graph) and "
              f"{path.with_suffix('.reference.npz')} ({args.images} reference images)")
        return
    from training.export import EXPORT_FILE, export_run

    output_file(args.out or Path(args.run_dir) / EXPORT_FILE)  # before the export's work
    path = export_run(args.run_dir, args.out, args.images, args.data_dir)
    print(f"{args.run_dir}: exported to {path} ({path.stat().st_size / 1e6:.1f} MB, "
          f"{args.images} reference images)")


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="locate, prepare or download, and verify CIFAR-10",
                       description="Locate CIFAR-10, prepare or download it if absent, verify every file. Exit code 2 "
                                   "(with a line saying where to put the files) when the data cannot be had.")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="directory that holds cifar-10-batches-py/ (default $BIOFLEXNET_DATA_DIR or ./data)")
    p.add_argument("--prepare-script", type=Path, default=None,
                   help="preparation script to use when the files are absent (default "
                        "../shared/data/cifar10/prepare_cifar10.py if it exists)")
    p.add_argument("--no-prepare", action="store_true", help="never run a preparation script")
    p.add_argument("--offline", action="store_true", help="never download; say where to put the files instead")
    p.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> None:
    from training.datacmd import cmd_data as run

    run(args)


def add_figures(sub: argparse._SubParsersAction) -> None:
    from analysis.notebooks import NOTEBOOKS

    p = sub.add_parser("figures", help="regenerate the paper figures with papermill",
                       description="Execute the notebooks in notebooks/ on the results under ROOT.")
    p.add_argument("root", type=Path, help="output root of `bioflexnet reproduce` (e.g. runs/quick)")
    p.add_argument("--out", type=Path, default=None, help="figure directory (default ROOT/figures)")
    p.add_argument("--only", nargs="+", choices=sorted(NOTEBOOKS), default=None)
    p.set_defaults(func=cmd_figures)


def cmd_figures(args: argparse.Namespace) -> None:
    from analysis.notebooks import run_notebooks

    if not args.root.is_dir():
        raise CLIError(f"{args.root} is not a directory; give the output root of `bioflexnet reproduce` "
                       "(e.g. runs/quick).")
    output_dir(args.out or args.root / "figures")
    run_notebooks(args.root, args.out, args.only)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (what was wrong and where to look), exit code 2, like every user error."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "-1/255" is a (negative) value, not an option: its type then says what is wrong with it,
        # rather than argparse's "expected one argument"
        self._negative_number_matcher = re.compile(r"^-(\d+|\d*\.\d+)([eE][-+]?\d+)?(/\d*\.?\d+)?$")

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _train_hint(args: argparse.Namespace) -> str:
    """How to go on after an interrupted ``train``: --resume only once an epoch has finished."""
    from training.runs import CHECKPOINT

    if args.proceed or (Path(args.out) / CHECKPOINT).is_file():
        return " (continue with the same command" + ("" if args.proceed or args.resume else " and --resume") + ")"
    return " (no epoch had finished, so there is no checkpoint to resume: run the same command again)"


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="bioflexnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_OneLineParser)
    add_train(sub)
    add_evaluate(sub)
    add_reproduce(sub)
    add_export(sub)
    add_data(sub)
    sim_cli.register(sub)
    analysis_cli.register(sub)
    add_figures(sub)
    combine.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"bioflexnet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"bioflexnet {args.command}: error: no space left on device ({exc.strerror}: {exc.filename}); free "
              "some space and run the same command again.", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        hint = _train_hint(args) if args.command == "train" else \
            " (run it again: finished stages are reused)" if args.command == "reproduce" else ""
        print(f"bioflexnet {args.command}: interrupted; files written so far are complete{hint}.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
