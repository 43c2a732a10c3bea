"""One log file per run, even for runs started in the same second (the .config.json is named after its stem)."""
from __future__ import annotations

import io
import logging
import multiprocessing
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

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


class _Terminal(io.StringIO):
    """stderr as a terminal: where tqdm draws unless told not to."""

    def isatty(self) -> bool:
        return True


class _Features(nn.Module):
    head = nn.Linear(5, 18)

    def embed(self, x):
        return x.float()


@pytest.mark.parametrize("disabled", [True, False])
def test_every_progress_bar_obeys_tqdm_disable(monkeypatch, tmp_path, noise_images, disabled):
    """The image pre-flight's bar, the trainer's (prediction and epochs share _quiet) and the MiniLM encoder's,
    drawn on a terminal: none with TQDM_DISABLE set, each without it."""
    from solution.images import ImageStore
    from solution.models import minilm
    from solution.settings import build_config
    from solution.trainer import ArrayRows, make_loader, predict

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    if disabled:
        monkeypatch.setenv("TQDM_DISABLE", "1")
    else:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    ImageStore(None, 32).prepare(noise_images(3), workers=0, skip_bad=False)
    loader, _ = make_loader(ArrayRows([np.zeros((4, 5), np.float32)], None), 2, build_config(["num_workers=0"]),
                            shuffle=False)
    predict(_Features(), loader, torch.device("cpu"), desc="predicting")

    class Encoder(torch.nn.Module):  # the least minilm.encode needs: a tokenizer and a pooled embedding
        max_seq_length = 8

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(1, 4)

        def tokenizer(self, captions, truncation, max_length):
            return {"input_ids": [[1, 2, 3] for _ in captions]}

        def forward(self, features):
            return {"sentence_embedding": self.proj(features["input_ids"].float().mean(1, keepdim=True))}

    monkeypatch.setattr(minilm, "load_encoder", lambda cfg: Encoder())
    monkeypatch.setattr(minilm, "model_path", lambda cfg: "encoder")
    minilm.embed_captions(build_config([f"out_dir={tmp_path}"]), ["a cat on a mat"])
    drawn = terminal.getvalue()  # the bars' own text (log lines of other handlers may land here too)
    assert ("checking images" in drawn, "predicting" in drawn, "embed 1 captions" in drawn) == (not disabled,) * 3, drawn
