"""One log file per run, even for runs started in the same second (the .config.json is named after its stem)."""
from __future__ import annotations

import logging
import multiprocessing
import os

import pytest

from solution import log

SECOND = "20250102-030405"


@pytest.fixture
def same_second(monkeypatch):
    """Every run starts in the same second; the logger is put back as it was afterwards."""
    monkeypatch.setattr(log.time, "strftime", lambda *args: SECOND)  # the file handler's time stamps too
    logger = logging.getLogger("solution")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for handler in logger.handlers:
        handler.close()
    logger.handlers[:], logger.propagate, logger.level = saved


def test_runs_in_the_same_second_get_their_own_log_file(tmp_path, same_second):
    paths = []
    for n in range(3):
        paths.append(log.setup(tmp_path, "train"))
        log.info(f"run {n}")
    assert [p.name for p in paths] == [f"train-{SECOND}.log", f"train-{SECOND}-2.log", f"train-{SECOND}-3.log"]
    for n, path in enumerate(paths):
        assert path.read_text().count("run ") == 1 and f"run {n}" in path.read_text()


def _start_run(log_dir, barrier, names) -> None:
    barrier.wait()
    names.put(log.setup(log_dir, "train").name)
    log.info(f"pid {os.getpid()}")


def test_processes_racing_for_one_name_each_get_their_own(tmp_path, same_second):
    fork = multiprocessing.get_context("fork")
    barrier, names = fork.Barrier(4), fork.Queue()
    runs = [fork.Process(target=_start_run, args=(tmp_path, barrier, names)) for _ in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    assert [run.exitcode for run in runs] == [0] * 4
    got = sorted(names.get(timeout=5) for _ in runs)
    assert got == sorted([f"train-{SECOND}.log"] + [f"train-{SECOND}-{n}.log" for n in (2, 3, 4)])
    for name in got:
        assert (tmp_path / name).read_text().count("pid ") == 1
