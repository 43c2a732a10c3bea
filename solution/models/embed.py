"""`embed`: a frozen timm backbone embeds every image once; per fold an MLP head trains on the embeddings.

Fine-tuning costs folds x epochs passes over every image; this costs one (two with embed.flip), after which
each fold's head trains in seconds, so a backbone can be tried in minutes. The backbone runs in eval mode
without gradients, on its own preprocessing (timm's data config: input size, crop, interpolation, mean, std).
The embeddings are cached per image under out_dir/cache, keyed by the backbone, its weights (by content), the
preprocessing and the flip: a second run, another fold, `predict` on the same images or another process reads
them, and nothing is decoded or embedded again. Images are cut into the same batches whichever process
embeds them, so every process stores the same bits. The head's hidden layer is this model's feature for fusion.
"""
from __future__ import annotations

import hashlib
import json
import re

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import nn
from tqdm import tqdm

from .. import log
from ..artefacts import content_hash
from ..cache import ArrayCache
from ..context import FoldJob
from ..images import BadImage, ImageStore, report_skipped
from ..trainer import _to, autocast_dtype, make_loader, resolve_device
from . import FoldOutput, ModelSpec
from .image import ImageRows, image_paths, load_backbone, normalise, register_input_stats
from .mlp import load_head, predict_head, train_head

APPEND_EVERY = 8192  # embeddings published per append: an interrupted pass keeps what it finished
INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


class FrozenNet(nn.Module):
    """The backbone with its own input statistics: uint8 images in, pooled embeddings out."""

    channels_last = True

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        register_input_stats(self, backbone)

    def embed(self, x):
        return self.backbone(normalise(self, x))


def preprocessing(backbone: nn.Module, size: int) -> dict:
    """timm's data config of the backbone, at embed.size when given: side, crop ratio and interpolation (the
    statistics are buffers of FrozenNet)."""
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(backbone)
    return {"side": size or int(data["input_size"][-1]), "crop_pct": float(data.get("crop_pct") or 1.0),
            "interpolation": data.get("interpolation", "bilinear"), "mean": list(data["mean"]), "std": list(data["std"])}


def eval_transform(prep: dict) -> A.Compose:
    """Shorter side to side / crop_pct, then the centre side x side crop: timm's eval crop, uint8 CHW out."""
    side, interpolation = prep["side"], INTERPOLATION.get(prep["interpolation"], cv2.INTER_LINEAR)
    return A.Compose([A.SmallestMaxSize(max_size=max(side, round(side / prep["crop_pct"])), interpolation=interpolation),
                      A.CenterCrop(side, side), ToTensorV2()])


class Embeddings:
    """The cached embeddings of one frozen backbone; `matrix(paths)` gives them in the paths' order."""

    def __init__(self, cfg, net: FrozenNet, prep: dict):
        self.cfg, self.net, self.prep = cfg, net, prep
        weights = content_hash({k: v.detach().float().cpu().numpy() for k, v in net.backbone.state_dict().items()})
        what = json.dumps({"prep": prep, "flip": cfg.embed.flip}, sort_keys=True)
        stem = (f"embed_{re.sub(r'[^A-Za-z0-9_.-]', '_', cfg.embed.model)}_{weights}_"
                f"{hashlib.sha256(what.encode()).hexdigest()[:8]}")
        self.cache = ArrayCache(cfg.out / "cache", stem, np.float32, fix="embed on a local disk")

    @staticmethod
    def _key(path) -> tuple[str, str]:
        """The image's cache key and signature (size and time: a changed file is embedded again). A missing file
        is signed "missing": the pre-flight of the images to embed names it, or on_bad_image=skip embeds grey."""
        try:
            st = path.stat()
            signature = f"{st.st_size}-{st.st_mtime_ns}"
        except OSError:
            signature = "missing"
        return str(path.resolve()), signature

    def fill(self, paths: list) -> None:
        """Embed every image of `paths` the cache lacks, in batches cut the same way in every process (the
        sorted keys of `paths`, embed.batch_size at a time), so the same image gets the same bits whoever embeds it."""
        keys = {}
        for path in paths:
            key, signature = self._key(path)
            keys.setdefault(key, (path, signature))
        order = sorted(keys)
        size = self.cfg.embed.batch_size
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        todo = [chunk for chunk in chunks if any(not self.cache.cached(k, keys[k][1]) for k in chunk)]
        label = f"embed {self.cfg.embed.model}"
        if not todo:
            log.info(f"{label}: all {len(order)} images are in {self.cache.bin_path.name}; nothing decoded or embedded")
            return
        batch = [k for chunk in todo for k in chunk]
        log.info(f"{label}: embedding {len(batch)} of {len(order)} images at {self.prep['side']} px"
                 f"{' with their flips' if self.cfg.embed.flip else ''} into {self.cache.bin_path}")
        store = self._checked_images([keys[k][0] for k in batch])
        self._embed(batch, [keys[k] for k in batch], store, label)

    def _checked_images(self, paths: list) -> ImageStore:
        """The images to embed, decoded from their files (the pre-flight finds missing and broken ones, as for
        every image model); no resized copy is kept: a frozen pass reads each image once."""
        cfg = self.cfg
        store = ImageStore(None, self.prep["side"])
        bad: list[BadImage] = store.prepare(paths, cfg.worker_count(), skip_bad=cfg.on_bad_image == "skip")
        report_skipped(bad, cfg.out / "logs" / "skipped_images.txt")
        return store

    @torch.no_grad()
    def _embed(self, keys: list[str], sources: list[tuple], store: ImageStore, label: str) -> None:
        cfg, net = self.cfg, self.net
        device = resolve_device(cfg.device)
        net.to(device).eval()
        channels_last = device.type == "cuda"
        if channels_last:
            net.to(memory_format=torch.channels_last)
        dtype = autocast_dtype(device)
        rows = ImageRows([path for path, _ in sources], None, store, eval_transform(self.prep))
        loader, _ = make_loader(rows, cfg.embed.batch_size, cfg, shuffle=False)
        pending, done = [], 0
        with tqdm(total=len(keys), desc=label, unit="img", dynamic_ncols=True) as bar:
            for (images,), _ in loader:
                n = len(images)  # a short last batch is padded: every pass has one shape, so one set of kernels
                padded = torch.cat([images, images[-1:].expand(cfg.embed.batch_size - n, *images.shape[1:])])
                x = _to([padded], device, channels_last)[0]
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    f = net.embed(x).float()
                    if cfg.embed.flip:
                        f = (f + net.embed(x.flip(-1)).float()) / 2
                f = f[:n]
                for i, vector in enumerate(f.cpu().numpy()):
                    pending.append((keys[done + i], sources[done + i][1], vector))
                done += len(f)
                bar.update(len(f))
                if len(pending) >= APPEND_EVERY:
                    self.cache.append(pending)
                    pending = []
        if pending:
            self.cache.append(pending)

    def matrix(self, paths: list) -> np.ndarray:
        """The embeddings of `paths`, in order, (len(paths), dim); images not embedded yet are embedded first."""
        keys = [self._key(p) for p in paths]
        if not all(self.cache.cached(key, signature) for key, signature in keys):
            self.fill(paths)
        return np.stack([self.cache.get(key) for key, _ in keys])


def embeddings(cfg, images) -> Embeddings:
    """The model's embeddings of every image of `images` (a train.ImageSource), computed where missing."""
    net = FrozenNet(load_backbone(cfg.embed, "embed"))
    found = Embeddings(cfg, net, preprocessing(net.backbone, cfg.embed.size))
    found.fill(images.paths())
    return found


def _head(cfg) -> dict:
    e = cfg.embed
    return dict(hidden=e.hidden, dropout=e.dropout)


def run(job: FoldJob) -> FoldOutput:
    cfg, comp = job.cfg, job.comp
    x = job.store.matrix(image_paths(job, comp.train))
    x_test = job.store.matrix(image_paths(job, comp.test))
    e = cfg.embed
    return train_head(job, x[job.train_idx], x[job.val_idx], x_test, **_head(cfg), epochs=cfg.network_epochs(e.epochs),
                      batch_size=cfg.network_batch(e.head_batch_size), lr=e.lr, features=True)


def infer(job: FoldJob, frame, upstream):
    x = job.store.matrix(image_paths(job, frame))
    return predict_head(job, load_head(job, x.shape[1], **_head(job.cfg)), x)


SPEC = ModelSpec(kind="embed", run=run, infer=infer, store=embeddings,
                 preflight=lambda cfg: load_backbone(cfg.embed, "embed"))
