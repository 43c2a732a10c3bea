"""`bench`: image-model throughput and the blend-search time on this machine, appended to BENCHMARKS.md.

Throughput (train and inference images/s, data loading included) uses synthetic 640x480 JPEGs:
decoding every JPEG each time (no cache), reading the resized uint8 cache, and, on CUDA, the GPU
alone on batches made on the device. The loader ceiling is the training data path without a network
(cache read, augmentation, collation, pinned copy on CUDA), with 1 worker and with num_workers: what
training could reach with an infinitely fast network. The search time is one `tune.fit_tuning`
(tune.search's weights, per-label thresholds and calibration) on 5 synthetic models x 30,000 rows.
"""
from __future__ import annotations

import dataclasses
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import log
from .artefacts import atomic_path
from .config import Config
from .demo import _image, _labels
from .images import ImageStore
from .labels import N_LABELS
from .models.image import ImageNet, ImageRows, device_augment, training_rows, transforms
from .device import autocast_dtype, to_device, training_device
from .recipe import image_recipe
from .recipe.updates import Updater
from .trainer import compile_backbone, make_loader, make_optimizer

MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"
SEARCH_START, SEARCH_END = "<!-- search:start -->", "<!-- search:end -->"
EMBED_START, EMBED_END = "<!-- embed:start -->", "<!-- embed:end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text + f", torch {torch.__version__}"


def _synthetic(folder: Path, n: int, seed: int, workers: int) -> list[Path]:
    """n synthetic 640x480 JPEGs, drawn by `workers` processes: drawn one by one (about 0.05 to 0.1 s
    each), 2,048 of them would take longer than the rest of a GPU bench."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.jpg" for i in range(n)]
    with ProcessPoolExecutor(max(workers, 1)) as pool:
        list(pool.map(_draw_one, [(path, seed, i) for i, path in enumerate(paths)], chunksize=16))
    return paths


def _draw_one(args) -> None:
    path, seed, i = args
    rng = np.random.default_rng([seed, i])
    _image(rng, _labels(rng), (640, 480), 1.0).save(path, quality=90)


def _timed_train(cfg, net, loader, device, warmup: int = 2) -> float:
    """Training images/s under the image.* recipe's update rule (accumulation, EMA, mixing; not the head probe)."""
    augment = device_augment(cfg) if isinstance(getattr(loader, "dataset", None), ImageRows) else None  # not GPU-only
    warmup = min(warmup, len(loader) - 1)  # a tiny bench.images still times at least one batch
    loss_fn = nn.BCEWithLogitsLoss().to(device)
    optimizer = make_optimizer(cfg, [{"params": net.parameters(), "lr": 1e-4}], device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(device) == torch.float16)
    recipe = image_recipe(cfg.image, None)
    updater = Updater(net, optimizer, scaler, loss_fn, device, batches=len(loader), accum_steps=recipe.accum_steps,
                      grad_clip=cfg.grad_clip, ema=recipe.averaged(net), augment=augment, mixer=recipe.mixer())
    net.train()
    seen, start = 0, None
    for step, (inputs, target) in enumerate(loader):
        if step == warmup:
            _sync(device)
            start, seen = time.time(), 0
        updater.step(step, inputs, target)
        seen += len(target)
    _sync(device)
    return seen / (time.time() - start)


@torch.no_grad()
def _timed_infer(net, loader, device, warmup: int = 2) -> float:
    warmup = min(warmup, len(loader) - 1)
    net.eval()
    dtype = autocast_dtype(device)
    seen, start = 0, None
    for step, (inputs, _) in enumerate(loader):
        if step == warmup:
            _sync(device)
            start, seen = time.time(), 0
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            net.head(net.embed(*to_device(inputs, device, device.type == "cuda")))
        seen += len(inputs[0])
    _sync(device)
    return seen / (time.time() - start)


def loader_rate(cfg, dataset, workers: int, device, passes: int = 3) -> float:
    """Images/s the training loader delivers on its own with `workers` processes (on CUDA with the
    pinned copy to the device): the ceiling of training speed. The first pass, while the workers start,
    is not timed."""
    cfg = dataclasses.replace(cfg, num_workers=workers)
    loader, _ = make_loader(dataset, cfg.network_batch(cfg.image.batch_size), cfg, shuffle=True)
    seen, start = 0, 0.0
    for epoch in range(passes + 1):
        if epoch == 1:
            _sync(device)
            start, seen = time.time(), 0
        for inputs, target in loader:
            to_device([*inputs, target], device, channels_last=False)
            seen += len(target)
    _sync(device)
    return seen / (time.time() - start)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _network(cfg, device) -> ImageNet:
    import timm

    net = ImageNet(timm.create_model(cfg.image.model, pretrained=False, num_classes=0)).to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    compile_backbone(net, cfg)
    return net


def _end_to_end(cfg, paths, y, store: ImageStore, device, bs: int) -> tuple[float, float]:
    """Train and inference images/s of a fresh network fed by the real loaders (whose workers end with them)."""
    net = _network(cfg, device)
    train_loader, _ = make_loader(training_rows(cfg, paths, y, store), bs, cfg, shuffle=True)
    eval_loader, _ = make_loader(ImageRows(paths, None, store, transforms(cfg, False)), bs * 2, cfg, shuffle=False)
    return _timed_train(cfg, net, train_loader, device), _timed_infer(net, eval_loader, device)


def bench(cfg: Config, overrides: list[str]) -> None:
    device = training_device(cfg)
    n = cfg.bench.images or (2048 if device.type == "cuda" else 96)
    bs = cfg.network_batch(cfg.image.batch_size)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        log.info(f"bench: writing {n} synthetic 640x480 JPEGs to {work}")
        paths = _synthetic(work / "data", n, cfg.seed, cfg.worker_count())
        y = np.zeros((n, N_LABELS), np.float32)
        for mode, cache_dir in (("decode JPEG each time", None), ("resized uint8 cache", work / "cache")):
            store = ImageStore(cache_dir, cfg.image.size)
            start = time.time()
            store.prepare(paths, cfg.worker_count(), skip_bad=False)
            prep = time.time() - start
            train_ips, infer_ips = _end_to_end(cfg, paths, y, store, device, bs)
            rows.append((mode, train_ips, infer_ips, prep))
            log.info(f"bench {mode}: train {train_ips:.1f} img/s, inference {infer_ips:.1f} img/s "
                     f"(pre-flight {'+ cache build ' if cache_dir else ''}{prep:.1f}s)")
        train_rows = training_rows(cfg, paths, y, store)  # store: the cache of the last mode
        for workers in sorted({1, cfg.worker_count()}):
            rate = loader_rate(cfg, train_rows, workers, device)
            auto = " = auto" if cfg.num_workers == "auto" and workers == cfg.worker_count() else ""
            rows.append((f"loader alone (cache), {workers} worker{'s' * (workers > 1)}{auto}", rate, None, 0.0))
            log.info(f"bench {rows[-1][0]}: {rate:.1f} img/s")
        if device.type == "cuda":
            net = _network(cfg, device)
            x = torch.randint(0, 256, (bs, 3, cfg.image.size, cfg.image.size), dtype=torch.uint8, device=device)
            fake = [((x,), torch.zeros(bs, N_LABELS, device=device))] * max(8, n // bs)
            rows.append(("GPU only (batches made on the device)", _timed_train(cfg, net, fake, device),
                         _timed_infer(net, [((torch.cat([x, x]),), None)] * max(8, n // bs), device), 0.0))
            log.info(f"bench GPU only: train {rows[-1][1]:.1f} img/s, inference {rows[-1][2]:.1f} img/s")
        _write(cfg, overrides, rows, device, n, bs)
        embedding_row(cfg, overrides, paths, work / "out", device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _write_search_time(cfg, overrides, _search_seconds(cfg))


def _embed_rate(cfg: Config, paths: list[Path], out: Path) -> tuple[int, float]:
    """Images/s of a frozen embedding pass of embed.model (its weights, its preprocessing, embed.flip): every
    JPEG decoded, checked, cropped and embedded, as `embed` does once per image. Returns (side, rate)."""
    from .models.embed import frozen

    found = frozen(dataclasses.replace(cfg, out_dir=str(out)))
    start = time.time()
    found.fill(paths)
    rate = len(paths) / (time.time() - start)
    side = found.prep["side"]
    log.info(f"bench embed {cfg.embed.model} @ {side}{' + flip' if cfg.embed.flip else ''}: {rate:.1f} img/s")
    return side, rate


def embedding_row(cfg: Config, overrides: list[str], paths: list[Path], out: Path, device) -> None:
    """One row of the embedding table: the rate of embed.model, or "skipped: no weights" (and no figure) when
    its weights cannot be had here (no network, no cache, no package)."""
    from .errors import UserError

    try:
        side, rate = _embed_rate(cfg, paths, out)
    except UserError as err:
        log.warn(f"bench embed {cfg.embed.model}: skipped ({err})")
        side, rate = None, None
    _write_embed_rate(cfg, overrides, device, len(paths), side, rate)


def _write_embed_rate(cfg: Config, overrides: list[str], device, n: int, side: int | None, rate: float | None) -> None:
    _add_rows(cfg, EMBED_START, EMBED_END, "Frozen embedding throughput (`./run.sh bench`)",
              "The `embed` kind's one pass over the images: each synthetic 640x480 JPEG decoded, checked, cropped to "
              "the backbone's input and embedded (twice with embed.flip), from a cold start of the pass.",
              "| date | machine | command | backbone @ side, batch | flip | images | img/s |",
              f"| {time.strftime('%Y-%m-%d')} | {machine()} ({device.type}, {cfg.worker_count()} workers) | "
              f"`{_command(overrides)}` | {cfg.embed.model} @ {side or '—'}, {cfg.embed.batch_size} | "
              f"{'yes' if cfg.embed.flip else 'no'} | {n} | {'skipped: no weights' if rate is None else f'{rate:.1f}'} |\n")


def _search_seconds(cfg: Config) -> float:
    """One full weight + threshold search on 5 noisy synthetic models x 30,000 rows."""
    import optuna

    from .tune import fit_tuning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(cfg.seed)
    y = (rng.random((30000, N_LABELS)) < 0.12).astype(np.uint8)
    y[np.arange(len(y)), rng.integers(0, N_LABELS, len(y))] = 1
    stack = np.stack([np.clip(y * rng.uniform(0.3, 0.7) + rng.random(y.shape) * 0.6, 0, 1).astype(np.float32)
                      for _ in range(5)])
    start = time.time()
    fit_tuning(stack, y, cfg)
    seconds = time.time() - start
    log.info(f"bench blend search, 5 models x 30000 rows: {seconds:.1f}s")
    return seconds


def _write(cfg: Config, overrides: list[str], rows, device, n: int, bs: int) -> None:
    workers = f"{cfg.worker_count()} workers{' = auto' if cfg.num_workers == 'auto' else ''}"
    _add_rows(cfg, MARK_START, MARK_END, "Image model throughput (`./run.sh bench`)",
              "Appended by `./run.sh bench`; data loading included except in GPU-only rows; loader rows have no network.",
              "| date | machine | command | model @ size, batch | mode | train img/s | inference img/s |",
              "".join(f"| {time.strftime('%Y-%m-%d')} | {machine()} ({device.type}, {workers}) | `{_command(overrides)}` | "
                      f"{cfg.image.model} @ {cfg.image.size}, {bs} ({n} images) | {mode} | {train:.1f} | "
                      f"{'—' if infer is None else f'{infer:.1f}'} |\n" for mode, train, infer, _ in rows))
    log.info(f"bench: appended {len(rows)} rows to {cfg.bench.file}")


def _write_search_time(cfg: Config, overrides: list[str], seconds: float) -> None:
    _add_rows(cfg, SEARCH_START, SEARCH_END, "Blend search time (`./run.sh bench`)",
              "One weight, per-label threshold and calibration search (`tune.fit_tuning`) on 5 synthetic models x "
              "30,000 rows x 18 labels; target < 60 s on the 2-core CPU.",
              "| date | machine | command | weight search, threshold_trials | seconds |",
              f"| {time.strftime('%Y-%m-%d')} | {machine()} | `{_command(overrides)}` | "
              f"{_search(cfg)}, {cfg.tune.threshold_trials} | {seconds:.1f} |\n")


def _search(cfg: Config) -> str:
    return f"{cfg.tune.search} {cfg.tune.steps} steps" if cfg.tune.search == "greedy" else \
        f"{cfg.tune.search} {cfg.tune.trials} trials"


def _command(overrides: list[str]) -> str:
    return ("./run.sh bench " + " ".join(overrides)).strip()


def _add_rows(cfg: Config, start: str, end: str, title: str, about: str, header: str, rows: str) -> None:
    """Insert table rows before the `end` marker of bench.file, first adding the section (title, what it measures,
    the table's header between the markers) where the file has none; the file is replaced whole, never half-written."""
    path = Path(cfg.bench.file)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if end not in text:
        rule = "|---" * header.count(" | ") + "|---|"
        text += f"\n## {title}\n\n{about}\n\n{start}\n{header}\n{rule}\n{end}\n"
    head, tail = text.split(end, 1)
    with atomic_path(path) as tmp:
        tmp.write_text(head + rows + end + tail, encoding="utf-8")
