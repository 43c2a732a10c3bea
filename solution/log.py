"""Console + file logging: one logger, a file per run under out_dir/logs."""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import time
from pathlib import Path

from .errors import machine_error

_logger = logging.getLogger("solution")


def bars_off() -> bool:
    """disable= for every progress bar (tqdm's, and the MiniLM encoder's show_progress_bar): off when TQDM_DISABLE
    is set to anything (tqdm's own reading, which it applies only where disable= is not passed) or when stderr is
    not a terminal (a log file)."""
    return bool(os.environ.get("TQDM_DISABLE")) or not sys.stderr.isatty()


def _new_log_file(log_dir: Path, command: str) -> Path:
    """Create logs/<command>-<time>.log, or -2, -3, ... after it: runs started in the same second never share one."""
    stem = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in itertools.count(1):
        path = log_dir / (f"{stem}.log" if n == 1 else f"{stem}-{n}.log")
        try:
            path.touch(exist_ok=False)  # O_EXCL: of two runs racing for a name, exactly one gets it
            return path
        except FileExistsError:
            continue


class _LogFile(logging.FileHandler):
    """The run's log file. A write it cannot make (a full disk...) ends the run in one line naming the file,
    where logging would print a traceback for every later record and go on."""

    def handleError(self, record) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            return super().handleError(record)
        _logger.removeHandler(self)
        with contextlib.suppress(OSError):
            self.close()
        raise machine_error(self.baseFilename, err) from None


def setup(log_dir: Path | None, command: str, quiet: bool = False) -> Path | None:
    """Log to stderr, and to a new logs/<command>-<time>[-n].log when the folder is writable; quiet (the
    other ranks of a DDP run) shows warnings and errors only, so the console reads as one process's log."""
    _logger.setLevel(logging.WARNING if quiet else logging.INFO)
    for handler in _logger.handlers:
        handler.close()
    _logger.handlers.clear()
    _logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(console)
    if log_dir is None:
        return None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = _new_log_file(log_dir, command)
        handler = _LogFile(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    _logger.addHandler(handler)
    return path


def columns(rows: list[tuple[str, ...]]) -> str:
    """Rows of text cells as left-aligned columns: the console tables of report and compare."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def info(msg: str) -> None:
    _logger.info(msg)


def warn(msg: str) -> None:
    _logger.warning(f"WARNING: {msg}")


@contextlib.contextmanager
def silenced():
    """No log lines inside the block: a pre-flight check runs before the run's log exists, and what it would
    say is said again when the stage does the work."""
    was = _logger.disabled
    _logger.disabled = True
    try:
        yield
    finally:
        _logger.disabled = was
