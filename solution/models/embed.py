"""`embed`: a frozen timm backbone embeds every image once; per fold an MLP head trains on the embeddings.

Fine-tuning costs folds x epochs passes over every image; this costs one (two with embed.flip), after which
each fold's head trains in seconds, so a backbone can be tried in minutes. The backbone runs in eval mode
without gradients, on its own preprocessing (timm's data config: input size, crop, interpolation, mean, std).
The embeddings are cached per image under out_dir/cache, keyed by the backbone, its weights (by content), the
preprocessing and the flip: a second run, another fold, `predict` on the same images or another process reads
them, and nothing is decoded or embedded again. Images are cut into the same batches whichever process
embeds them, so every process stores the same bits. That identity is part of every fold's provenance, so a
backbone whose weights changed (another download, another file) retrains the heads, and `predict` refuses it.
The head's hidden layer is this model's feature for fusion.
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

from .. import log
from ..artefacts import content_hash
from ..cache import ArrayCache
from ..context import FoldJob, FoldOutput
from ..errors import UserError
from ..images import BadImage, ImageStore, report_skipped, signature
from ..device import resolve_device
from ..trainer import BatchSetting, make_loader, predict
from ..variants import own_settings
from .spec import ModelSpec
from .image import ImageRows, image_paths, load_backbone, normalise, register_input_stats
from .mlp import load_head, predict_head, train_head

APPEND_EVERY = 8192  # embeddings published per append: an interrupted pass keeps what it finished
INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


class FrozenNet(nn.Module):
    """The backbone with its own input statistics: uint8 images in, pooled embeddings out. It has no head (the
    identity): trainer.predict, which runs it, returns the embeddings as its features."""

    channels_last = True

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Identity()
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
    """Shorter side to side / crop_pct with the backbone's interpolation, then the centre side x side crop, uint8
    CHW out: timm's eval crop, taken from the image as the store decodes it (JPEGs drafted and resized to 1.15 x
    side on their shorter side)."""
    side, interpolation = prep["side"], INTERPOLATION.get(prep["interpolation"], cv2.INTER_LINEAR)
    return A.Compose([A.SmallestMaxSize(max_size=max(side, round(side / prep["crop_pct"])), interpolation=interpolation),
                      A.CenterCrop(side, side), ToTensorV2()])


class Embeddings:
    """The cached embeddings of one frozen backbone; `matrix(paths)` gives them in the paths' order."""

    def __init__(self, cfg, net: FrozenNet, prep: dict, name: str = "embed"):
        """name: the model's, for the advice of an out-of-memory line (a variant's own settings win)."""
        self.cfg, self.net, self.prep, self.name = cfg, net, prep, name
        weights = content_hash({k: v.detach().float().cpu().numpy() for k, v in net.backbone.state_dict().items()})
        what = json.dumps({"prep": prep, "flip": cfg.embed.flip}, sort_keys=True)
        self.identity = (f"embed_{re.sub(r'[^A-Za-z0-9_.-]', '_', cfg.embed.model)}_{weights}_"
                         f"{hashlib.sha256(what.encode()).hexdigest()[:8]}")
        self.cache = ArrayCache(cfg.out / "cache", self.identity, np.float32, fix="embed on a local disk")

    @staticmethod
    def _key(path) -> tuple[str, str]:
        """The image's cache key and signature; a missing file is signed "missing": the pre-flight of the images
        to embed names it, or on_bad_image=skip embeds grey."""
        return str(path.resolve()), signature(path)

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
        """The images to embed, checked by decoding them (the pre-flight finds missing and broken ones, as for
        every image model); no resized copy is kept, since the pass reads each image once more and never again."""
        cfg = self.cfg
        store = ImageStore(None, self.prep["side"])
        bad: list[BadImage] = store.prepare(paths, cfg.worker_count(), skip_bad=cfg.on_bad_image == "skip")
        report_skipped(bad, cfg.out / "logs" / "skipped_images.txt")
        return store

    def _embed(self, keys: list[str], sources: list[tuple], store: ImageStore, label: str) -> None:
        """The pass, APPEND_EVERY images at a time (each published when done) through trainer.predict, which also
        turns a CUDA out-of-memory error into one line naming embed.batch_size. The last batch is padded with
        copies of its last image, so every forward pass has one shape, and so one set of kernels."""
        cfg, size = self.cfg, self.cfg.embed.batch_size
        device = resolve_device(cfg.device)
        declared = "embed.batch_size" in own_settings(cfg, self.name)
        setting = BatchSetting("embed.batch_size", size, f"embed.model={cfg.embed.model}, side {self.prep['side']}",
                               self.name if declared else "")
        group = size * -(-APPEND_EVERY // size)  # whole batches, so the groups cut the images as one pass would
        for start in range(0, len(keys), group):
            paths = [path for path, _ in sources[start:start + group]]
            rows = ImageRows(paths + paths[-1:] * (-len(paths) % size), None, store, eval_transform(self.prep))
            loader, _ = make_loader(rows, size, cfg, shuffle=False)
            _, vectors = predict(self.net, loader, device, tta_flip=cfg.embed.flip, desc=label, batch=setting)
            self.cache.append([(keys[start + i], sources[start + i][1], vectors[i]) for i in range(len(paths))])
        self.net.cpu()  # its device memory goes back to what trains next

    def matrix(self, paths: list) -> np.ndarray:
        """The embeddings of `paths`, in order, (len(paths), dim); images not embedded yet are embedded first."""
        keys = [self._key(p) for p in paths]
        if not all(self.cache.cached(key, signature) for key, signature in keys):
            self.fill(paths)
        return np.stack([self.cache.get(key) for key, _ in keys])


def _frozen_net(cfg) -> tuple[FrozenNet, dict]:
    """The model's backbone with its weights, and its preprocessing; random weights (pretrained=false) come from
    the seed, so they are the same in every run."""
    torch.manual_seed(cfg.seed)
    net = FrozenNet(load_backbone(cfg.embed, "embed"))
    return net, preprocessing(net.backbone, cfg.embed.size)


def frozen(cfg, name: str = "embed") -> Embeddings:
    """The model's backbone, weights and preprocessing, with the cache they key."""
    return Embeddings(cfg, *_frozen_net(cfg), name)


def embeddings(model, images) -> Embeddings:
    """The model's embeddings of every image of `images` (a train.ImageSource), computed where missing."""
    found = frozen(model.cfg, model.name)
    found.fill(images.paths())
    return found


def preflight(cfg) -> None:
    """Weights that cannot be had, or an embed.size the backbone cannot take (a ViT built for 224 px), stop the
    run in one line before any data is touched: one forward pass of a grey image at the configured side."""
    net, prep = _frozen_net(cfg)  # not the cache's identity: hashing every weight is the store's work, once
    side = prep["side"]
    try:
        with torch.no_grad():
            net.eval().embed(torch.full((1, 3, side, side), 128, dtype=torch.uint8))
    except Exception as err:  # timm's own checks: an assertion, a shape error
        raise UserError(f"embed.model={cfg.embed.model} cannot embed {side} px images ({str(err).splitlines()[0]}); "
                        "pass embed.size=0 (its own size) or a backbone that takes any size") from None


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


SPEC = ModelSpec(kind="embed", run=run, infer=infer, store=embeddings, preflight=preflight)
