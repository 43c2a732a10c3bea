"""The one training loop for every network: AMP, early stopping on samples-F1, resumable checkpoints.

A network here is an nn.Module with `embed(*inputs) -> features` and `head(features) -> logits`; the
loaders yield `(inputs_tuple, targets)`. Image networks say `channels_last = True` and keep their
convolutional trunk as `backbone` (what image.compile compiles). Each epoch ends with `last.pt`
(everything needed to resume after a kill) and, on improvement, `best.pt` (weights used for prediction).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed, log
from .artefacts import atomic_file
from .context import FoldJob
from .errors import UserError
from .device import autocast_dtype, resolve_device, to_device, training_device, uses_channels_last
from .metric import samples_f1
from .recipe import Recipe
from .recipe.updates import Updater, updates_per_epoch


def compile_backbone(net: nn.Module, cfg) -> None:
    """image.compile=true: compile the image backbone in place (nn.Module.compile), so every forward pass
    after this, training and prediction, runs compiled while state_dict keys stay those of the plain net."""
    if cfg.image.compile and isinstance(getattr(net, "backbone", None), nn.Module):
        net.backbone.compile()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path, obj: dict) -> None:
    """Through a file object, not a path: torch's own writer reports a full disk as a RuntimeError without
    the system's reason, while atomic_file gives one line naming the file and the reason."""
    with atomic_file(path) as fh:
        torch.save(obj, fh)


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _resume_state(job: FoldJob, last_path) -> dict | None:
    """last.pt, or None when there is none or it cannot be read (a kill mid-write on a filesystem without
    atomic rename, a truncated copy): the fold then starts over, and the log says why."""
    if not last_path.exists():
        return None
    try:
        return load_checkpoint(last_path)
    except Exception as err:  # any unpickling or zip error means the file is unusable
        log.warn(f"{job.label}: {last_path} is unreadable ({type(err).__name__}); starting this fold from scratch")
        distributed.barrier()  # every rank has read it before rank 0 removes it
        if distributed.is_main():
            last_path.unlink(missing_ok=True)
        return None


@dataclass
class FitResult:
    best_f1: float
    best_epoch: int
    history: list


def make_optimizer(cfg, param_groups: list[dict], device: torch.device):
    """AdamW or Adam; fused (one kernel for every tensor's update) when all the parameters are on the GPU."""
    groups = [{**group, "params": list(group["params"])} for group in param_groups]
    fused = device.type == "cuda" and all(p.is_cuda for group in groups for p in group["params"])
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, weight_decay=cfg.weight_decay, fused=fused or None)


@torch.no_grad()
def predict(net: nn.Module, loader, device: torch.device, tta_flip: bool = False,
            desc: str = "predict", batch: BatchSetting | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and pooled features for every row of `loader`, in loader order; a CUDA out-of-memory
    error ends in one line (`batch` names the setting that sizes the loader's batches)."""
    net.to(device).eval()
    channels_last = uses_channels_last(net, device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device)

    def forward(inputs):
        inputs = to_device(inputs, device, channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f = net.embed(*inputs).float()
            p = torch.sigmoid(net.head(f).float())
            if tta_flip:
                f2 = net.embed(*[x.flip(-1) if x.dim() == 4 else x for x in inputs]).float()  # images only
                p = (p + torch.sigmoid(net.head(f2).float())) / 2
                f = (f + f2) / 2
        return p.cpu().numpy(), f.cpu().numpy()

    probs, feats = [], []
    for inputs, _ in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=_quiet()):
        out = _unless_out_of_memory(lambda: forward(inputs))
        if out is OUT_OF_MEMORY:
            raise out_of_memory(desc, batch or BatchSetting("batch_size", loader.batch_size), len(inputs[0]), device,
                                lambda n: forward([x[:n] for x in inputs]))
        probs.append(out[0])
        feats.append(out[1])
    probs, feats = np.concatenate(probs or [np.zeros((0, 18), np.float32)]), np.concatenate(feats or [np.zeros(0)])
    if isinstance(loader.dataset, RankShard):  # this rank predicted its share: every rank gets all rows, in order
        probs, feats = distributed.gather_rows(probs, feats)
    return probs, feats.astype(np.float32)


@dataclass(frozen=True)
class BatchSetting:
    """The setting that sizes a network's batches, for the line a CUDA out-of-memory error ends in."""

    key: str  # what the user lowers: image.batch_size, or batch_size (every network; what predict takes)
    value: int
    context: str = ""  # the other settings that bear on memory, e.g. "image.model=resnet50, image.size=224"
    variant: str = ""  # the declared variant whose own settings set `key` (there it must change: they win)

    def assign(self, value: int) -> str:
        if self.variant:
            return (f"{self.key}={value} in the declaration of variant {self.variant} (its [{self.variant}] table in "
                    f"variants=FILE, or variant.{self.variant}.{self.key}={value})")
        return f"{self.key}={value}"


OUT_OF_MEMORY = object()


def _unless_out_of_memory(step):
    """step()'s result, or OUT_OF_MEMORY when CUDA ran out: returned, not raised, so that the failed step's
    tensors (held by the exception's traceback) are freed before anything else runs."""
    try:
        return step()
    except torch.cuda.OutOfMemoryError:
        return OUT_OF_MEMORY


def largest_fitting(step, rows: int) -> int:
    """The largest of rows/2, rows/4, ..., 1 for which step(n) runs without a CUDA out-of-memory error, each
    try from freed memory; 0 when not even one row fits."""
    n = rows // 2
    while n >= 1:
        torch.cuda.empty_cache()
        if _unless_out_of_memory(lambda: step(n)) is not OUT_OF_MEMORY:
            return n
        n //= 2
    return 0


def gpu_memory(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"


def out_of_memory(label: str, batch: BatchSetting, rows: int, device: torch.device, step) -> UserError:
    """The one line for a CUDA out-of-memory error at `rows` rows per batch, with a `batch.key` that fits:
    probed by step(n) at halved batches (one step each; not in a DDP run, where a lone rank's step would wait
    for the others), and scaled from rows (this process's batch) to the setting."""
    torch.cuda.empty_cache()
    fits = 0 if distributed.active() else largest_fitting(step, rows)
    if fits:
        fix = f"{fits} rows fit (one step tried): rerun with {batch.assign(max(1, batch.value * fits // rows))}"
    elif distributed.active():
        fix = f"rerun with {batch.assign(max(1, batch.value // 2))} (not probed in a several-process run)"
    else:
        fix = "not even 1 row fits: choose a smaller model or image.size, or device=cpu"
    context = f", {batch.context}" if batch.context else ""
    return UserError(f"{label}: CUDA out of memory at {rows} rows per batch ({batch.key}={batch.value}{context}) "
                     f"on {gpu_memory(device)}; {fix}; finished folds and epochs are kept")


def _quiet() -> bool:
    """Progress bars on rank 0 only, and there as log.bars_off says."""
    return log.bars_off() or not distributed.is_main()


class Logits(nn.Module):
    """net.head(net.embed(*inputs)) as one forward call: DistributedDataParallel syncs gradients of what its
    forward computed, so a DDP run wraps this, not the net."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *inputs):
        return self.net.head(self.net.embed(*inputs))


class LossTally:
    """An epoch's mean training loss, read from the device every CHECK_EVERY steps instead of every step
    (each read waits for the GPU); a non-finite loss stops the run with the step it came from."""

    CHECK_EVERY = 50

    def __init__(self, label: str, epoch: int):
        self.label, self.epoch = label, epoch
        self.seen, self.total, self.pending = 0, 0.0, []

    def add(self, step: int, loss: torch.Tensor, rows: int) -> bool:
        """Record one step's loss; True when the pending losses were just read (time to show the mean)."""
        self.pending.append((step, rows, loss))
        if len(self.pending) < self.CHECK_EVERY:
            return False
        self.check()
        return True

    def check(self) -> None:
        if not self.pending:
            return
        values = torch.stack([loss for _, _, loss in self.pending]).tolist()
        for (step, rows, _), value in zip(self.pending, values):
            if not math.isfinite(value):
                raise UserError(f"{self.label}: loss is {value} at epoch {self.epoch} step {step}; "
                                "lower the learning rate or check the inputs")
            self.seen += rows
            self.total += value * rows
        self.pending = []

    @property
    def mean(self) -> float:
        return self.total / max(self.seen, 1)


def _resume(ckpt: dict, net, optimizer, schedule, scaler, ema) -> dict:
    """The loop's state from a matching last.pt, with the network, optimizer, schedule, loss scaler and EMA loaded."""
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    return {k: ckpt[k] for k in FRESH}


FRESH = {"epoch": 0, "best_f1": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}


def fit(job: FoldJob, net: nn.Module, param_groups: list[dict], train_loader, stop_loader, y_stop: np.ndarray,
        loss_fn: nn.Module, epochs: int, reseed, unit: str = "rows", augment=None,
        batch: BatchSetting | None = None, recipe: Recipe = Recipe()) -> FitResult:
    """Train with early stopping on the stop set's samples-F1; resume from last.pt when it matches.

    `recipe` says how batches become updates (the schedule, accumulation, EMA, mixing, a head fitted first); the
    default is the plain one. With an EMA on, the averaged weights are what early stopping evaluates and best.pt
    keeps. In a DDP run (several ranks, loaders made with split=True) every rank steps on its share of each global
    batch and the gradients are averaged; on CUDA BatchNorm becomes SyncBatchNorm, so a step equals the
    one-process step on the whole batch. On the CPU (gloo, for tests) BatchNorm keeps per-rank statistics,
    averaged over the ranks after each epoch. Rank 0 alone writes checkpoints; the early-stopping decision
    is rank 0's, broadcast. Every epoch reseeds all RNGs from (seed, fold, epoch, rank): resume is exact.
    A CUDA out-of-memory error ends in one line naming `batch` (the setting that sizes train_loader's batches)
    and a batch that fits; the same command later resumes after the last finished epoch."""
    cfg = job.cfg
    batch = batch or BatchSetting("batch_size", train_loader.batch_size * distributed.world())
    device = training_device(cfg)
    ddp = distributed.active()
    if ddp and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # in place below the top module; same parameters
    net.to(device)
    if uses_channels_last(net, device):
        net.to(memory_format=torch.channels_last)
    loss_fn = loss_fn.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(device) == torch.float16)
    optimizer = make_optimizer(cfg, param_groups, device)
    batches = len(train_loader)
    schedule = recipe.schedule(cfg.scheduler, optimizer, epochs, updates_per_epoch(batches, recipe.accum_steps))
    last_path, best_path = job.ckpt_dir / "last.pt", job.ckpt_dir / "best.pt"
    ckpt = _resume_state(job, last_path)
    if ckpt is not None and ckpt.get("provenance") != job.provenance:
        log.info(f"{job.label}: {last_path} is from other data or settings; starting over")
        ckpt = None
    if ckpt is None and recipe.head_init is not None:
        recipe.head_init(net, device)
    ema = recipe.averaged(net)  # the average starts from the fitted head
    state = {**FRESH, "history": []}
    if ckpt is not None:
        state = _resume(ckpt, net, optimizer, schedule, scaler, ema)
        log.info(f"{job.label}: resuming after epoch {state['epoch']} from {last_path}")
    evaluated = ema.net if ema is not None else net
    compile_backbone(net, cfg)
    forward = None
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(Logits(net), device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
    updater = Updater(net, optimizer, scaler, loss_fn, device, batches=batches, accum_steps=recipe.accum_steps,
                      grad_clip=cfg.grad_clip, schedule=schedule, ema=ema, forward=forward, augment=augment,
                      mixer=recipe.mixer())
    n_train = len(train_loader.dataset)
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if state["bad_epochs"] >= cfg.patience:
            break
        epoch_seed = cfg.seed * 1000 + job.k * 100 + epoch
        rank_seed = epoch_seed * 64 + distributed.rank()
        seed_everything(rank_seed)  # dropout
        reseed(epoch_seed)  # the loader: shuffle order (one for all ranks) and each row's augmentation
        updater.reseed(rank_seed)  # device augmentation and mixing
        net.train()
        start, tally = time.time(), LossTally(job.label, epoch)
        with tqdm(total=n_train, desc=f"{job.label} epoch {epoch}/{epochs}", unit=unit, dynamic_ncols=True,
                  leave=False, disable=_quiet()) as bar:
            for step, (inputs, target) in enumerate(train_loader):
                loss = _unless_out_of_memory(lambda: updater.step(step, inputs, target))
                if loss is OUT_OF_MEMORY:
                    raise out_of_memory(job.label, batch, len(target), device,
                                        lambda n: updater.trial([x[:n] for x in inputs], target[:n]))
                bar.update(len(target) * distributed.world())
                if tally.add(step + 1, loss, len(target)):
                    bar.set_postfix(loss=f"{tally.mean:.4f}")
            tally.check()
        train_seconds = time.time() - start
        distributed.average_buffers(net)
        if ema is not None:
            distributed.average_buffers(ema.net)
        probs, _ = predict(evaluated, stop_loader, device, desc=f"{job.label} validate", batch=batch)
        y = torch.from_numpy(y_stop.astype(np.float32))
        val_loss = float(loss_fn.cpu()(torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)), y))
        loss_fn.to(device)
        val_f1 = distributed.broadcast(samples_f1(y_stop, probs))
        lr = optimizer.param_groups[-1]["lr"]
        schedule.after_epoch(val_f1)
        improved = val_f1 > state["best_f1"]
        state["epoch"] = epoch
        if improved:
            state.update(best_f1=val_f1, best_epoch=epoch, bad_epochs=0)
            if distributed.is_main():
                save_checkpoint(best_path, {"model": evaluated.state_dict(), "provenance": job.provenance,
                                            "epoch": epoch, "val_f1": val_f1})
        else:
            state["bad_epochs"] += 1
        seconds = time.time() - start
        row = {"epoch": epoch, "train_loss": tally.mean, "val_loss": val_loss, "val_f1": val_f1, "lr": lr,
               "seconds": seconds, "train_per_s": tally.seen * distributed.world() / max(train_seconds, 1e-9)}
        state["history"].append(row)
        log.info(f"{job.label} epoch {epoch}/{epochs}: train_loss {row['train_loss']:.4f}  val_loss {val_loss:.4f}  "
                 f"val_f1 {val_f1:.4f}{' *' if improved else '  '}  lr {lr:.2e}  {seconds:.1f}s  "
                 f"{_rate(row['train_per_s'])} {unit}/s")
        if distributed.is_main():
            save_checkpoint(last_path, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(),
                                        **({"ema": ema.state_dict()} if ema is not None else {}),
                                        "provenance": job.provenance, **state})
        if state["bad_epochs"] >= cfg.patience:
            log.info(f"{job.label}: early stop after epoch {epoch}, best val_f1 {state['best_f1']:.4f} "
                     f"at epoch {state['best_epoch']}")
    distributed.barrier()  # rank 0 has written best.pt
    if not best_path.exists():
        raise UserError(f"{job.label}: no epoch finished (epochs={epochs}); set epochs>=1")
    net.load_state_dict(load_checkpoint(best_path)["model"])
    if math.isnan(state["best_f1"]):
        raise UserError(f"{job.label}: validation F1 is NaN; check the inputs")
    return FitResult(state["best_f1"], state["best_epoch"], state["history"])


def _rate(per_second: float) -> str:
    """A rate to read at a glance: whole numbers from 10 up, two decimals below (a CPU's 0.52 img/s is not 0)."""
    return f"{per_second:.0f}" if per_second >= 10 else f"{per_second:.2f}"


def make_loader(dataset, batch_size: int, cfg, shuffle: bool, split: bool = False):
    """A DataLoader with the speed settings (cfg.worker_count() workers, kept across epochs and each 4
    batches ahead; pinned memory on CUDA) and a reseed hook.

    Returns (loader, reseed); calling reseed(s) makes the next epoch's shuffle and augmentation depend
    only on s (SeededRows), so a resumed run sees the same batches as an uninterrupted one, with any number
    of workers. split=True, in a DDP run, shares the rows out over the ranks: a training loader draws this
    rank's part of every global batch of batch_size rows (DistributedSampler: one shuffle for all ranks, no
    row repeated); an evaluation loader reads this rank's contiguous shard, and predict() gathers them.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    in_memory = isinstance(dataset, ArrayRows)  # whole batches by one index: worker processes only cost
    workers = 0 if in_memory else cfg.worker_count()
    cuda = resolve_device(cfg.device).type == "cuda"
    if split and distributed.active() and not shuffle:
        dataset = RankShard(dataset, distributed.shard(len(dataset)))
    sampler, reseed = None, generator.manual_seed
    if shuffle:
        rows = torch.utils.data.RandomSampler(dataset, generator=generator)
        if split and distributed.active():
            if batch_size % distributed.world():
                raise UserError(f"batch size {batch_size} does not split over {distributed.world()} processes; "
                                f"choose image.batch_size as a multiple of gpus={distributed.world()}")
            batch_size //= distributed.world()
            rows = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=cfg.seed, drop_last=True)
        sampler = SeededRows(rows, len(dataset))
        reseed = sampler.reseed
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=cuda,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_one_opencv_thread if workers > 0 else None,
        drop_last=shuffle and len(dataset) > batch_size, generator=generator,
        collate_fn=_batch_as_is if in_memory else None)
    return loader, reseed


class SeededRows(torch.utils.data.Sampler):
    """A training sampler's rows, each as the index epoch_seed * n + row: datasets read row index % n, and
    one with random augmentation (ImageRows) seeds it from the index. reseed(s) sets the epoch's shuffle
    (the generator of a RandomSampler, or the epoch of a DistributedSampler: one order for all ranks)."""

    def __init__(self, rows, n: int):
        self.rows, self.n, self.epoch_seed = rows, n, 0

    def reseed(self, s: int) -> None:
        self.epoch_seed = s
        if isinstance(self.rows, torch.utils.data.DistributedSampler):
            self.rows.set_epoch(s)
        else:
            self.rows.generator.manual_seed(s)

    def __iter__(self):
        offset = self.epoch_seed * self.n
        return (offset + i for i in self.rows)

    def __len__(self):
        return len(self.rows)


class RankShard(torch.utils.data.Subset):
    """This rank's contiguous rows of an evaluation set (make_loader split=True in a DDP run)."""


def _one_opencv_thread(worker_id: int) -> None:
    """In each worker: OpenCV (under albumentations) would start a thread pool of its own per worker, and
    those threads fight the other workers for the cores. It touches no random state."""
    import cv2

    cv2.setNumThreads(0)


def _batch_as_is(batch):
    return batch


class ArrayRows(torch.utils.data.Dataset):
    """Rows of in-memory arrays: yields ((a[i], b[i], ...), y[i]); y may be None for unlabelled rows."""

    def __init__(self, arrays: list[np.ndarray], y: np.ndarray | None):
        self.arrays = [torch.as_tensor(a) for a in arrays]
        n = len(self.arrays[0])
        self.y = torch.as_tensor(y if y is not None else np.zeros((n, 18), np.float32)).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        i %= len(self.y)  # a training loader's SeededRows index
        return tuple(a[i] for a in self.arrays), self.y[i]

    def __getitems__(self, indices):
        """A whole batch by one fancy index (the DataLoader prefers this to one row at a time)."""
        idx = torch.as_tensor(indices) % len(self.y)
        return tuple(a[idx] for a in self.arrays), self.y[idx]
