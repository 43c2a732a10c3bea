"""Console + file logging: one logger, a file per run under out_dir/logs."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

_logger = logging.getLogger("solution")


def setup(log_dir: Path | None, command: str) -> Path | None:
    """Log to stderr, and to logs/<command>-<time>.log when the folder is writable."""
    _logger.setLevel(logging.INFO)
    _logger.handlers.clear()
    _logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(console)
    if log_dir is None:
        return None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    _logger.addHandler(handler)
    return path


def info(msg: str) -> None:
    _logger.info(msg)


def warn(msg: str) -> None:
    _logger.warning(f"WARNING: {msg}")
