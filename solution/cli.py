"""`./run.sh [COMMAND] [key=value ...]`: the one front door to every stage."""
from __future__ import annotations

import json
import sys
import time

from . import log
from .config import help_text, save_config
from .settings import build_config
from .errors import MACHINE_ERRNOS, UserError, machine_error

COMMANDS = {
    "train": "train the selected models on the selected folds (default command)",
    "tune": "blend weights, per-label thresholds and calibration on OOF, with the nested-CV score",
    "submit": "write submissions/submission.csv from the tuned blend",
    "predict": "run saved fold models on data_dir's test.csv (no training) into a submission",
    "report": "write oof/report.md, report.json and figures",
    "compare": "paired difference of out_dir's nested scores against compare.baseline's (same data and folds)",
    "all": "train, tune, submit and report in one go",
    "demo": "make a synthetic dataset under demo/ and run 'all' on it",
    "test": "run the test suite (pytest)",
    "bench": "measure image-model throughput and write BENCHMARKS.md",
    "holdout": "hold back a stratified share of train.csv, run 'all' on the rest, score it: checks the nested estimate",
}


def usage() -> str:
    from .variants import KINDS

    cmds = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
    variant = (f"  {'variant.NAME.KEY=VALUE':<34} declare a variant on the command line: variant.NAME.kind=KIND (one "
               f"of {', '.join(KINDS)}), then any key of that kind's sections or a training key")
    return (f"usage: ./run.sh [COMMAND] [key=value ...]\n\ncommands:\n{cmds}\n\nkeys (default shown, then what it "
            f"means and [allowed: its values]; dotted keys are nested settings; every key is checked before any data "
            f"is read):\n{help_text()}\n{variant}\n")


def _check_writable(cfg) -> None:
    probe = cfg.out / "logs" / f".write-test-{time.time_ns()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"out_dir {cfg.out_dir} is not writable ({err.strerror}); pass out_dir=<writable folder>") from None


def run(command: str, overrides: list[str]) -> None:
    if command == "demo":
        from .demo import DEMO_DEFAULTS

        overrides = DEMO_DEFAULTS + overrides
    cfg = build_config(overrides)
    _check_writable(cfg)
    if command in ("train", "all", "demo", "holdout", "predict"):
        from .text import pipeline_identity

        pipeline_identity(cfg)  # missing WordNet data or vectors file: one error line, before anything is logged
    from .data import load_competition  # here, not above: a bad key= fails without importing pandas

    # Bad data fails here, before anything is logged, so the user sees the one error line alone.
    comp = load_competition(cfg.data_dir, cfg.limit) if command not in ("bench", "predict", "demo", "compare") else None
    runs = None
    if command == "compare":  # runs that do not pair fail here, before anything is logged
        from .compare import paired_runs

        runs = paired_runs(cfg)
    from . import distributed  # here, not above: it imports torch, and a bad key= fails without it

    if command in ("train", "all", "demo", "holdout"):
        from .models import training_order

        with log.silenced():  # weights that cannot be had: one line, before folds, the cache and torchrun
            for model in training_order(cfg, cfg.models):
                try:
                    model.spec.preflight(model.cfg)
                except UserError as err:
                    if model.name not in cfg.variant:
                        raise
                    raise UserError(f"variant {model.name}: {err} (a variant's keys go in its own declaration: its "
                                    f"[{model.name}] table in variants=FILE, or variant.{model.name}.KEY=VALUE)") from None
    if cfg.gpus > 1 and not distributed.launched():
        if command not in ("train", "all"):
            raise UserError(f"gpus={cfg.gpus} applies to train and all (the image networks); drop it for {command}")
        distributed.launch("train", overrides, cfg.gpus)  # every stage after train is single-process
        if command == "train":
            return
        command, overrides = "all-after-train", [o for o in overrides if not o.startswith("gpus=")]
    if distributed.launched():
        from .device import resolve_device

        distributed.init(resolve_device(cfg.device))
    log_path = log.setup(cfg.out / "logs" if distributed.is_main() else None, command, quiet=not distributed.is_main())
    log.info(f"{command}: resolved config\n{json.dumps(cfg.to_dict(), indent=None, default=str)}")
    if distributed.is_main():
        save_config(cfg, cfg.out / "logs" / f"{log_path.stem if log_path else command}.config.json")
    if command == "bench":
        from .bench import bench

        return bench(cfg, overrides)
    if command == "predict":
        from .predict import predict

        return predict(cfg)
    if command == "compare":
        from .compare import compare

        return compare(cfg, runs)
    if command == "demo":
        from .demo import make_dataset

        if not (cfg.data / "train.csv").exists():
            log.info(f"demo: writing a synthetic dataset to {cfg.data}")
            make_dataset(cfg.data)
        comp = load_competition(cfg.data_dir, cfg.limit)
    for name, lines in comp.repaired.items():
        if lines:
            log.info(f"{name}: repaired the quoting of {len(lines)} row(s) at line(s) {', '.join(map(str, lines[:20]))}")
    log.info(f"data: {len(comp.train)} train rows, {len(comp.test)} test rows from {cfg.data}")
    if command == "holdout":
        from .holdout import run_holdout

        return run_holdout(cfg, comp, run_all)
    if command in ("all", "demo"):
        return run_all(cfg, comp)
    if command == "all-after-train":
        return run_all(cfg, comp, stages=("tune", "submit", "report"))
    run_stage(command, cfg, comp)
    distributed.finish()


def run_stage(name: str, cfg, comp) -> None:
    """Stage <name> is the function <name>(cfg, comp) of solution/<name>.py, imported only when used."""
    from importlib import import_module

    getattr(import_module(f"{__package__}.{name}"), name)(cfg, comp)


def run_all(cfg, comp, stages=("train", "tune", "submit", "report")) -> None:
    for name in stages:
        run_stage(name, cfg, comp)
    log.info(f"done: submission {cfg.out / 'submissions' / 'submission.csv'}; report {cfg.out / 'oof' / 'report.md'}")


def _one_line(err: UserError) -> int:
    print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)  # always one line
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        try:
            print(usage(), flush=True)
        except BrokenPipeError:  # `--help | head`: no traceback, and none at exit when stdout is flushed
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    command = argv.pop(0) if argv and "=" not in argv[0] else "train"
    if command not in COMMANDS or command == "test":
        print(f"error: unknown command '{command}'; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        run(command, argv)
    except UserError as err:
        return _one_line(err)
    except OSError as err:  # last resort for a machine failure no stage turned into a UserError
        if err.errno not in MACHINE_ERRNOS:
            raise
        return _one_line(machine_error(err.filename or "a file", err, verb="failed on"))
    except RuntimeError as err:  # torch's CUDA out-of-memory error outside the steps that name their batch setting
        if type(err).__name__ != "OutOfMemoryError":
            raise
        said = ". ".join(str(err).split(". ")[:2]).rstrip(".")  # "CUDA out of memory. Tried to allocate 2.00 GiB"
        return _one_line(UserError(f"{said}; lower image.batch_size or image.size, or pass device=cpu; finished folds "
                                   "and epochs are kept"))
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    return 0
