"""Several processes training one image network together (DDP through torchrun, or `gpus=N`).

torchrun starts one process per GPU (or per CPU slot with device=cpu, for tests) and describes the group
in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT). Rank 0 alone writes files and runs
the caption models, tune and everything after; image networks train on every rank. Outside a group
every function here is what a single process would do, so the rest of the code calls them freely.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


_alone = False  # inside alone(): rank 0 works by itself and must not wait for the others


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and not _alone


@contextlib.contextmanager
def alone():
    """Rank 0's work that the other ranks skip (caption models, fusion): every function here acts as in a
    single process meanwhile, so no collective call waits for ranks that are not there."""
    global _alone
    _alone = True
    try:
        yield
    finally:
        _alone = False


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True inside a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join torchrun's group: NCCL between GPUs (each process on its LOCAL_RANK's GPU), gloo on the CPU."""
    if not launched() or active():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # The other ranks wait while rank 0 alone fills the image cache and embeds every image for each frozen
    # backbone: an hour and more on 40,000 photos, far past the 10-minute default of a collective's wait.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=6))


def finish() -> None:
    """Every rank done: leave the group together. A rank that tears its group down (or exits) while a peer still
    finishes the last collective can abort that peer ("terminate called without an active exception"), and
    torchrun then reports a finished run as failed. DDP wrappers sit in reference cycles (their gradient hooks
    hold the reducer), so they are collected first, while the group they talk through still exists. Only after
    success: on an error the other ranks may never arrive, and torchrun ends them."""
    if active():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value):
    """Rank 0's value on every rank: decisions (early stopping, the learning-rate schedule) are taken once."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int) -> range:
    """This rank's contiguous share of n rows; concatenated in rank order the shares are 0..n-1, each once."""
    r, w = rank(), world()
    return range(n * r // w, n * (r + 1) // w)


def gather_rows(*parts: np.ndarray) -> list[np.ndarray]:
    """Each array of every rank's shard, concatenated in rank order (the rows of the whole set, in order)."""
    if not active():
        return list(parts)
    gathered: list = [None] * world()
    dist.all_gather_object(gathered, parts)
    return [np.concatenate([g[i] for g in gathered if len(g[i])] or [parts[i]])  # a rank may have had no rows
            for i in range(len(parts))]


def average_buffers(net: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks, so every rank evaluates
    the same network; with per-rank BatchNorm (the CPU) each rank's statistics saw only its own batches."""
    if not active():
        return
    for buffer in net.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer /= world()


def main_first(work):
    """Run work() on rank 0, then on the other ranks: the cache and folds file are made once, then read."""
    if is_main():
        result = work()
        barrier()
        return result
    barrier()
    return work()


def launch(command: str, overrides: list[str], gpus: int) -> None:
    """`gpus=N`: the same command again under torchrun with N processes on this machine, or a one-line error."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "solution", command, *overrides]
    code = subprocess.run(args).returncode
    if code != 0:
        raise UserError(f"the {gpus}-process {command} (torchrun) exited with status {code}; its log above says why "
                        "(rerun the same command to resume from the last finished epoch)")
