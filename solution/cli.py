"""`./run.sh [COMMAND] [key=value ...]`: the one front door to every stage."""
from __future__ import annotations

import json
import sys
import time

from . import log
from .config import build_config, help_text, save_config
from .errors import UserError

COMMANDS = {
    "train": "train the selected models on the selected folds (default command)",
    "tune": "Optuna blend weights + per-label thresholds on OOF, with the nested-CV score",
    "submit": "write submissions/submission.csv from the tuned blend",
    "predict": "run saved fold models on data_dir's test.csv (no training) into a submission",
    "report": "write oof/report.md, report.json and figures",
    "all": "train, tune, submit and report in one go",
    "demo": "make a synthetic dataset under demo/ and run 'all' on it",
    "test": "run the test suite (pytest)",
    "bench": "measure image-model throughput and write BENCHMARKS.md",
}


def usage() -> str:
    cmds = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
    return (f"usage: ./run.sh [COMMAND] [key=value ...]\n\ncommands:\n{cmds}\n\nkeys (default shown; dotted keys "
            f"are nested settings; fold= takes 3, 0,2,4 or 0..4):\n{help_text()}\n")


def _check_writable(cfg) -> None:
    probe = cfg.out / "logs" / f".write-test-{time.time_ns()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"out_dir {cfg.out_dir} is not writable ({err.strerror}); pass out_dir=<writable folder>") from None


def run(command: str, overrides: list[str]) -> None:
    from .data import load_competition

    if command == "demo":
        from .demo import DEMO_DEFAULTS

        overrides = DEMO_DEFAULTS + overrides
    cfg = build_config(overrides)
    _check_writable(cfg)
    log_path = log.setup(cfg.out / "logs", command)
    log.info(f"{command}: resolved config\n{json.dumps(cfg.to_dict(), indent=None, default=str)}")
    save_config(cfg, cfg.out / "logs" / f"{log_path.stem if log_path else command}.config.json")
    if command == "bench":
        from .bench import bench

        return bench(cfg, overrides)
    if command == "predict":
        from .predict import predict

        return predict(cfg)
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
    steps = ["train", "tune", "submit", "report"] if command in ("all", "demo") else [command]
    for step in steps:
        if step == "train":
            from .train import train

            train(cfg, comp)
        elif step == "tune":
            from .tune import tune

            tune(cfg, comp)
        elif step == "submit":
            from .submit import submit

            submit(cfg, comp)
        elif step == "report":
            from .report import report

            report(cfg, comp)
    if command in ("all", "demo"):
        log.info(f"done: submission {cfg.out / 'submissions' / 'submission.csv'}; report {cfg.out / 'oof' / 'report.md'}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage())
        return 0
    command = argv.pop(0) if argv and "=" not in argv[0] else "train"
    if command not in COMMANDS or command == "test":
        print(f"error: unknown command '{command}'; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        run(command, argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    return 0
