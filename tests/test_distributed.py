"""DDP on the CPU (gloo, 2 processes, tiny backbones): one step equals the one-process step on the global
batch; a 2-process `train gpus=2` (an image network on both ranks, a caption network on rank 0 alone),
killed after its first epoch and run again, resumes and writes the artefacts a 1-process run writes.

The CLI runs start right after collection (conftest calls start_background) and overlap the other tests.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from solution.artefacts import load_arrays, read_json

REPO = Path(__file__).resolve().parents[1]
TINY = ["models=resnet50,bilstm", "n_folds=2", "num_workers=0", "device=cpu", "image.model=test_resnet", "image.size=32",
        "image.pretrained=false", "image.batch_size=8", "image.lr=3e-3"]


def _descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_then_resume(args: list[str], last: Path, result: dict) -> None:
    """A 2-process run killed (every process, like a lost machine) once `last` is saved, then the same
    command again; result gets whether it was killed in time, and the second run's stderr and exit code."""
    command = [sys.executable, "-m", "solution", "train", *args]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not last.exists() and first.poll() is None:
        time.sleep(0.05)
    result["killed_in_time"] = first.poll() is None
    for pid in [first.pid, *_descendants(first.pid)]:  # torchrun puts its workers in sessions of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first.wait()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    result["stderr"], result["code"] = second.stderr, second.returncode


def start_background(root: Path, start) -> dict:
    from solution.demo import make_dataset

    data = make_dataset(root / "data", n_train=48, n_test=10, size=(40, 32))
    common = [f"data_dir={data}", *TINY, "fold=0", "image.epochs=3", "patience=10"]
    two: dict = {}
    last = root / "two" / "checkpoints" / "resnet50" / "fold0.partial" / "last.pt"  # where an unfinished fold trains
    thread = threading.Thread(target=_kill_then_resume, daemon=True,
                              args=([f"out_dir={root / 'two'}", *common, "gpus=2"], last, two))
    thread.start()
    return {"root": root, "one": start("train", f"out_dir={root / 'one'}", *common), "two": two, "two_thread": thread}


@pytest.fixture(scope="module")
def runs(background, tmp_path_factory, start_cli):
    return background.get(__name__) or start_background(tmp_path_factory.mktemp("ddp"), start_cli)


def _artefacts(out: Path) -> dict[str, dict]:
    """Each OOF file's rows and provenance, and each fold record's provenance and weight-file names."""
    found = {}
    for path in sorted((out / "oof").glob("*/fold*.npz")):
        meta, arrays = load_arrays(path)
        found[str(path.relative_to(out))] = {"ids": {k: v.tolist() for k, v in arrays.items() if k.endswith("_ids")},
                            "shapes": {k: v.shape for k, v in arrays.items()},
                            "provenance": {k: meta[k] for k in ("data", "folds", "config")}}
    for path in sorted((out / "checkpoints").glob("*/fold*/fold.json")):
        record = read_json(path)
        found[str(path.relative_to(out))] = {"provenance": record["provenance"], "files": sorted(record["files"])}
    return found


def test_a_killed_two_process_train_resumes_and_writes_what_a_one_process_train_writes(runs):
    proc = runs["one"].result(timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs["two_thread"].join(timeout=600)
    two = runs["two"]
    assert two["killed_in_time"], "the 2-process run finished before it could be killed"
    assert two["code"] == 0, two["stderr"][-3000:]
    assert "resnet50 fold 0: resuming after epoch" in two["stderr"] and "fold 0 epoch 1/3:" not in two["stderr"]
    assert two["stderr"].count("resnet50 fold 0 epoch 3/3:") == 1  # rank 0 alone logs
    one, two_out = (Path(runs["root"]) / name for name in ("one", "two"))
    # resnet50 on both ranks, bilstm on rank 0 alone (a collective call there would hang the run)
    assert _artefacts(two_out) == _artefacts(one) and len(_artefacts(one)) == 6  # features, OOF, record each
    probs = load_arrays(two_out / "oof" / "resnet50" / "fold0.npz")[1]
    assert np.isfinite(probs["val_probs"]).all() and np.isfinite(probs["test_probs"]).all()


# ---- one optimisation step: 2 ranks on halves of a global batch == 1 process on the whole batch -------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(backbone: str, x: torch.Tensor, y: torch.Tensor, forward_wrapper=None, accum: int = 1) -> dict:
    """Build the image net with seed 0, take one update on (x, y) made of `accum` micro-batches, return its weights."""
    import timm

    from solution.settings import build_config
    from solution.losses import make_loss
    from solution.models.image import ImageNet
    from solution.recipe.updates import Updater
    from solution.trainer import Logits, make_optimizer

    torch.manual_seed(0)
    net = ImageNet(timm.create_model(backbone, pretrained=False, num_classes=0))
    cfg = build_config(["device=cpu"])
    optimizer = make_optimizer(cfg, [{"params": net.parameters(), "lr": 1e-2}], torch.device("cpu"))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    forward = forward_wrapper(Logits(net)) if forward_wrapper else None
    loss_fn = make_loss(cfg, np.ones((4, 18), np.uint8))
    net.train()
    updater = Updater(net, optimizer, scaler, loss_fn, torch.device("cpu"), batches=accum, accum_steps=accum,
                      grad_clip=1.0, forward=forward)
    for i, (xs, ys) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
        updater.step(i, (xs,), ys)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g), \
        (torch.rand(8, 18, generator=g) < 0.3).float()


BACKBONES = ("test_convnext", "test_resnet")


def _rank_step(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, y = _batch()
    half = slice(4 * rank, 4 * rank + 4)
    torch.save({b: _step(b, x[half], y[half], DistributedDataParallel) for b in BACKBONES}, Path(out) / f"rank{rank}.pt")
    # the same update from 2 micro-batches of 2 rows on each rank: no gradient sync on the first, then the sum averaged
    torch.save(_step("test_convnext", x[half], y[half], DistributedDataParallel, accum=2), Path(out) / f"accum{rank}.pt")
    from solution import distributed

    gathered = {}
    for n in (1, 3, 7):  # one rank without rows, uneven shares, more
        rows = np.arange(n)[distributed.shard(n).start:distributed.shard(n).stop]
        feats = np.repeat(rows[:, None], 4, axis=1).astype(np.float32) if len(rows) else np.zeros(0)  # as predict()
        ids, feats = distributed.gather_rows(rows, feats)
        gathered[n] = (ids.tolist(), feats.shape)
    torch.save(gathered, Path(out) / f"gathered{rank}.pt")
    distributed.finish()  # as a real run leaves: its DDP wrappers collected, then both ranks leave together


def test_one_ddp_step_on_a_global_batch_equals_the_one_process_step(tmp_path):
    """One update on 2 ranks, whole or accumulated from micro-batches, equals the one-process update. Without BatchNorm (test_convnext: LayerNorm) the 2-rank step equals the 1-process step. With BatchNorm
    on the CPU (test_resnet; SyncBatchNorm exists on GPUs only) each rank normalises its own half, so the
    ranks agree with each other (DDP averages the gradients) but not exactly with the 1-process step."""
    torch.multiprocessing.spawn(_rank_step, args=(_free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for r in (0, 1):  # evaluation shards come back whole and in row order on every rank
        assert torch.load(tmp_path / f"gathered{r}.pt") == {n: (list(range(n)), (n, 4)) for n in (1, 3, 7)}
    x, y = _batch()
    for backbone in BACKBONES:
        alone = _step(backbone, x, y)
        params = [k for k in alone if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        for k in params:
            torch.testing.assert_close(ranks[0][backbone][k], ranks[1][backbone][k], rtol=0, atol=1e-6)
        assert any(not torch.equal(alone[k], _initial(backbone)[k]) for k in params)  # the step moved the weights
        if backbone == "test_convnext":
            for k in params:
                torch.testing.assert_close(ranks[0][backbone][k], alone[k], rtol=1e-4, atol=1e-5)
                for r in (0, 1):  # accumulated over micro-batches on both ranks: still the one-process step
                    torch.testing.assert_close(torch.load(tmp_path / f"accum{r}.pt")[k], alone[k], rtol=1e-4, atol=1e-5)


def _initial(backbone: str) -> dict:
    import timm

    from solution.models.image import ImageNet

    torch.manual_seed(0)
    return ImageNet(timm.create_model(backbone, pretrained=False, num_classes=0)).state_dict()
