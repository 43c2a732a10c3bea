"""Image model: a timm backbone (image.model, ResNet50 by default) fine-tuned end to end with an 18-logit head."""
from __future__ import annotations

import functools
import socket

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import nn

from .. import log
from ..context import FoldJob, FoldOutput
from ..errors import UserError
from ..images import CACHE_SCALE, ImageStore
from ..labels import N_LABELS
from ..losses import make_loss
from ..pretrained import PACKAGED, check_architecture, load_packaged, offline_weights, pip_name
from ..device import resolve_device
from ..recipe import image_recipe
from ..recipe.layer_decay import backbone_groups
from ..recipe.probe import fit_linear_head
from ..trainer import BatchSetting, fit, make_loader, predict
from ..variants import own_settings
from .spec import ModelSpec

HEAD_PREFIXES = ("fc.", "classifier.", "head.", "head.fc.", "last_linear.")


def _offline_choices(key: str) -> str:
    """What to pass when timm's weights cannot be had."""
    return (f"pass {key}.model=tf_efficientnet_lite0 {key}.weights=efficientnet-lite0 (ImageNet weights from a pip "
            f"package), {key}.weights=PATH (a local state_dict) or {key}.pretrained=false")


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _load_local_weights(backbone: nn.Module, path: str, key: str) -> None:
    """Load a torchvision/timm state_dict; any shape mismatch outside the classifier head is an error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{key}.weights={path}: file not found") from None
    except Exception as err:
        raise UserError(f"{key}.weights={path}: not a loadable state_dict ({type(err).__name__})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    is_head = lambda k: k.startswith(HEAD_PREFIXES)  # noqa: E731
    for name, tensor in state.items():
        if name in own and own[name].shape != tensor.shape and not is_head(name):
            raise UserError(f"{key}.weights={path}: {name} has shape {tuple(tensor.shape)}, the model "
                            f"{tuple(own[name].shape)}; the checkpoint is for another architecture")
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    if not usable:
        raise UserError(f"{key}.weights={path}: no tensor name matches the model; is it a state_dict for this backbone?")
    backbone.load_state_dict(usable, strict=False)
    log.info(f"{key}.weights: loaded {len(usable)} tensors from {path}; missing {len(missing)}"
             f"{' (' + ', '.join(missing[:5]) + ')' if missing else ''}; unexpected {len(unexpected)}"
             f"{' (' + ', '.join(unexpected[:5]) + ')' if unexpected else ''}")


def build_backbone(cfg) -> nn.Module:
    """The image kind's backbone, as its image.* settings ask (with its stochastic depth for training)."""
    return load_backbone(cfg.image, "image", drop_path=cfg.image.drop_path)


def load_backbone(section, key: str, drop_path: float = 0.0) -> nn.Module:
    """timm backbone without classifier (num_classes=0 gives pooled features), with the asked-for weights: a
    weights package by name (weights=efficientnet-lite0), a local state_dict, timm's ImageNet weights (cache,
    then network) or, only when pretrained=false says so, random ones. `section` holds model, pretrained and
    weights (image.* or embed.*); `key` names that section in errors. drop_path > 0 builds the blocks with
    stochastic depth (timm's drop_path_rate), which only training uses."""
    import huggingface_hub.constants as hub
    import timm

    name = section.model
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise UserError(f"bad value for {key}.model: '{name}'; allowed: a timm model name (timm.list_models())")
    create = functools.partial(_create, name, key, drop_path)
    packaged = section.weights if section.weights in PACKAGED else \
        offline_weights(name) if section.pretrained and not section.weights else None
    if packaged:
        check_architecture(packaged, name, key)
        backbone = create(pretrained=False)
        load_packaged(backbone, packaged, key)
        log.info(f"{key}.model={name}: loaded the ImageNet weights of {pip_name(packaged)}")
        return backbone
    if section.weights:
        backbone = create(pretrained=False)
        _load_local_weights(backbone, section.weights, key)
        return backbone
    if not section.pretrained:
        log.info(f"{key}.pretrained=false: {name} starts from random weights")
        return create(pretrained=False)
    offline = hub.HF_HUB_OFFLINE
    try:
        hub.HF_HUB_OFFLINE = True  # the local cache first; the network only if it answers
        return create(pretrained=True)
    except UserError:
        raise
    except Exception:
        if not _hub_reachable():
            raise UserError(f"{key}.pretrained=true but the ImageNet weights of {name} are not cached and the "
                            f"network is unreachable; {_offline_choices(key)}") from None
    finally:
        hub.HF_HUB_OFFLINE = offline
    try:
        return create(pretrained=True)
    except Exception as err:
        raise UserError(f"{key}.pretrained=true but {name}'s weights could not be downloaded ({type(err).__name__}); "
                        f"{_offline_choices(key)}") from None


def _create(name: str, key: str, drop_path: float, pretrained: bool) -> nn.Module:
    """timm's backbone without its classifier (num_classes=0 gives pooled features)."""
    import timm

    if drop_path <= 0:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, drop_path_rate=drop_path)
    except TypeError:  # a family built without stochastic depth refuses the argument
        raise UserError(f"bad value for {key}.drop_path: {drop_path}; {name} has no stochastic depth, so only 0 is "
                        "allowed for it") from None


def check_image_weights(cfg) -> None:
    """Pre-flight of one model's image settings, before folds and the image cache: its backbone is built once
    with the weights it asks for, so a missing weights package, file or network, a checkpoint that does not
    fit or a mismatched image.model stops the run in one line, not when the first fold starts. It is the
    loader itself, so the check and the folds cannot disagree; it costs one model build."""
    build_backbone(cfg)


class ImageNet(nn.Module):
    """Backbone + 18-logit head. It takes uint8 images and normalises them itself, on the device, so
    loaders ship a quarter of the bytes and the CPU workers skip the float maths."""

    channels_last = True

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, N_LABELS)
        register_input_stats(self, backbone)

    def embed(self, x):
        return self.backbone(normalise(self, x))


def register_input_stats(net: nn.Module, backbone: nn.Module) -> None:
    """The backbone's own pretraining statistics (timm's data config: ImageNet's, CLIP's, Inception's 0.5...):
    mean and std on the 0..255 scale and the eval crop ratio, as saved buffers, so every checkpoint records
    how its inputs were scaled and cropped, and `infer` restores exactly that."""
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(backbone)
    net.register_buffer("mean", torch.tensor(data["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255)
    net.register_buffer("std", torch.tensor(data["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255)
    net.register_buffer("crop_pct", torch.tensor(float(data.get("crop_pct") or 1 / CACHE_SCALE)))


def normalise(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (x.float() - net.mean) / net.std


def transforms(cfg, train: bool, crop_pct: float = 1 / CACHE_SCALE) -> A.Compose:
    """uint8 CHW tensors out; normalisation happens in the network (ImageNet.embed). Eval resizes the shorter
    side to size / crop_pct (the backbone's eval crop ratio) and takes the centre."""
    size = cfg.image.size
    if train:
        flips = [A.HorizontalFlip(p=0.5)] + ([A.VerticalFlip(p=0.5)] if cfg.image.vflip else [])
        return A.Compose([A.RandomResizedCrop(size=(size, size), scale=(0.35, 1.0)), *flips, ToTensorV2()])
    return A.Compose([A.SmallestMaxSize(max_size=max(size, round(size / crop_pct))), A.CenterCrop(size, size), ToTensorV2()])


class ImageRows(torch.utils.data.Dataset):
    """Rows of (image,) or, with `tokens`, (image, caption token ids), and the 18 targets.

    A training loader asks for row i of epoch seed s as the index s * len + i (trainer.SeededRows), and the
    augmentation of that row is seeded from the index alone (albumentations keeps an RNG of its own,
    unseeded unless told): the same with any number of workers or ranks, and after a resume."""

    def __init__(self, paths, y, store: ImageStore, transform, tokens: np.ndarray | None = None,
                 square: int | None = None):
        """transform: albumentations, CHW uint8 out; or transform=None and square=side (image.gpu_aug): a random
        side x side HWC uint8 crop of the cached image (whose shorter side is that), augmented on the device."""
        self.paths, self.y, self.store, self.transform, self.tokens = list(paths), y, store, transform, tokens
        self.square = square

    def __len__(self):
        return len(self.paths)

    def _square(self, image: np.ndarray, seed: int) -> torch.Tensor:
        side, (h, w) = self.square, image.shape[:2]
        rng = np.random.default_rng(seed)
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        return torch.from_numpy(np.ascontiguousarray(image[top:top + side, left:left + side]))

    def __getitem__(self, index):
        epoch_seed, i = divmod(index, len(self.paths))
        if self.square:
            image = self._square(self.store.get(self.paths[i]), index)
        else:
            if epoch_seed:  # evaluation rows come as plain indices: their transform draws nothing
                self.transform.set_random_seed(index)
            image = self.transform(image=self.store.get(self.paths[i]))["image"]
        inputs = (image,) if self.tokens is None else (image, torch.from_numpy(self.tokens[i]))
        target = self.y[i] if self.y is not None else np.zeros(N_LABELS, np.uint8)
        return inputs, torch.from_numpy(np.asarray(target, dtype=np.float32))


class GpuAugment:
    """image.gpu_aug: RandomResizedCrop (scale 0.35-1, aspect 3/4-4/3, as the CPU path) and flips of a batch
    of uint8 HWC squares, in one affine_grid + grid_sample on the batch's device; float CHW 0..255 out, which
    the network normalises. Its RNG is reseeded every epoch from (seed, fold, epoch, rank)."""

    def __init__(self, size: int, vflip: bool, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.vflip, self.scale, self.log_ratio = size, vflip, scale, (np.log(ratio[0]), np.log(ratio[1]))
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n = len(batch)
        draw = torch.rand(n, 6, generator=self.generator)  # on the CPU: the same numbers on every device
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * draw[:, 0]
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * draw[:, 1])
        width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # of the square
        cx, cy = (2 * draw[:, 2] - 1) * (1 - width), (2 * draw[:, 3] - 1) * (1 - height)
        flip_x = torch.where(draw[:, 4] < 0.5, -1.0, 1.0)
        flip_y = torch.where(draw[:, 5] < 0.5, -1.0, 1.0) if self.vflip else torch.ones(n)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width * flip_x, cx, height * flip_y, cy
        images = batch.permute(0, 3, 1, 2).float()  # HWC -> CHW as a view: channels_last in memory
        grid = nn.functional.affine_grid(theta.to(batch.device), [n, 3, self.size, self.size], align_corners=False)
        return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def training_rows(cfg, paths, y, store: ImageStore, tokens: np.ndarray | None = None) -> ImageRows:
    """The training rows: augmented by albumentations in the loader, or (image.gpu_aug) cut into squares
    for device_augment."""
    if cfg.image.gpu_aug:
        return ImageRows(paths, y, store, None, tokens, square=round(CACHE_SCALE * cfg.image.size))
    return ImageRows(paths, y, store, transforms(cfg, True), tokens)


def device_augment(cfg) -> GpuAugment | None:
    return GpuAugment(cfg.image.size, cfg.image.vflip) if cfg.image.gpu_aug else None


def image_paths(job: FoldJob, frame):
    return [job.comp.image_dir / image_id for image_id in frame["ImageID"]]


def eval_loader(job: FoldJob, net: nn.Module, frame, y=None, tokens: np.ndarray | None = None):
    """`frame`'s rows under the backbone's eval crop, shared out over the ranks of a DDP run."""
    cfg = job.cfg
    rows = ImageRows(image_paths(job, frame), y, job.store, transforms(cfg, False, float(net.crop_pct)), tokens)
    return make_loader(rows, cfg.network_batch(cfg.image.batch_size) * 2, cfg, shuffle=False, split=True)[0]


def eval_probs(job: FoldJob, net: nn.Module, frame, device, tokens: np.ndarray | None = None):
    """Probabilities and pooled features of `frame`'s rows (tokens: their caption ids, for two-input nets)."""
    return predict(net, eval_loader(job, net, frame, None, tokens), device, tta_flip=job.cfg.image.tta,
                   desc=f"{job.label} predict", batch=batch_setting(job))


def batch_setting(job: FoldJob) -> BatchSetting:
    """What sizes an image network's batches, for the line a CUDA out-of-memory error ends in: image.batch_size
    in training (batch_size when that override is set), batch_size in predict (which takes it from the run)."""
    cfg = job.cfg
    key = "image.batch_size" if job.training and cfg.batch_size is None else "batch_size"
    declared = job.training and key in own_settings(job.base, job.model)
    return BatchSetting(key, cfg.network_batch(cfg.image.batch_size),
                        f"image.model={cfg.image.model}, image.size={cfg.image.size}", job.model if declared else "")


def backbone_param_groups(cfg, backbone: nn.Module) -> list[dict]:
    """The backbone's optimizer groups: lr x backbone_lr_mult for pretrained weights (a random backbone needs the full
    rate), decayed block by block from the top (image.layer_decay), held still for image.freeze_epochs."""
    pretrained = bool(cfg.image.weights) or cfg.image.pretrained
    lr = cfg.image.lr * (cfg.image.backbone_lr_mult if pretrained else 1.0)
    return backbone_groups(backbone, lr, cfg.image.layer_decay, cfg.image.freeze_epochs)


def fit_image_net(job: FoldJob, net: nn.Module, groups: list[dict], tokens: np.ndarray | None = None,
                  test_tokens: np.ndarray | None = None, features: bool = True) -> FoldOutput:
    """Fit a network whose first input is the image (and, with tokens, whose second is the caption),
    with image.* settings, then predict fold k and the test set; features adds the pooled features
    of every row for stacking."""
    cfg, comp = job.cfg, job.comp
    device = resolve_device(cfg.device)
    bs = cfg.network_batch(cfg.image.batch_size)
    rows = lambda idx: None if tokens is None else tokens[idx]  # noqa: E731
    train_loader, reseed = make_loader(training_rows(cfg, image_paths(job, comp.train.iloc[job.fit_idx]), comp.y[job.fit_idx],
                                                     job.store, rows(job.fit_idx)), bs, cfg, shuffle=True, split=True)
    stop_loader = eval_loader(job, net, comp.train.iloc[job.stop_idx], comp.y[job.stop_idx], rows(job.stop_idx))
    loss_fn = make_loss(cfg, comp.y[job.fit_idx])

    def probe(net: nn.Module, device) -> None:
        """image.head_init=probe: the head fitted on the frozen features of the fit rows (their eval crops)."""
        fit_rows = eval_loader(job, net, comp.train.iloc[job.fit_idx], None, rows(job.fit_idx))
        features = predict(net, fit_rows, device, desc=f"{job.label} probe features", batch=batch_setting(job))[1]
        stop_features = predict(net, stop_loader, device, desc=f"{job.label} probe features", batch=batch_setting(job))[1]
        fit_linear_head(net.head, features, comp.y[job.fit_idx], stop_features, comp.y[job.stop_idx], loss_fn, job.label)

    if tokens is not None and (cfg.image.mixup or cfg.image.cutmix):
        log.info(f"{job.label}: image.mixup and image.cutmix do not apply to a model that reads captions; off")
    result = fit(job, net, groups, train_loader, stop_loader, comp.y[job.stop_idx], loss_fn,
                 cfg.network_epochs(cfg.image.epochs), reseed, unit="img", augment=device_augment(cfg),
                 batch=batch_setting(job), recipe=image_recipe(cfg.image, probe, mixes=tokens is None))
    val_probs, val_feats = eval_probs(job, net, comp.train.iloc[job.val_idx], device, rows(job.val_idx))
    test_probs, test_feats = eval_probs(job, net, comp.test, device, test_tokens)
    feats = None
    if features:
        train_feats = eval_probs(job, net, comp.train.iloc[job.train_idx], device, rows(job.train_idx))[1]
        feats = {"train": train_feats, "val": val_feats, "test": test_feats}
    return FoldOutput(val_probs, test_probs, result.best_f1, result.best_epoch, feats, result.history)


def run(job: FoldJob) -> FoldOutput:
    net = ImageNet(build_backbone(job.cfg))
    groups = [*backbone_param_groups(job.cfg, net.backbone), {"params": list(net.head.parameters()), "lr": job.cfg.image.lr}]
    return fit_image_net(job, net, groups)


def infer(job: FoldJob, frame, upstream):
    """Probabilities and features of `frame`'s images from this fold's saved best weights."""
    import timm

    from ..trainer import load_checkpoint

    net = ImageNet(timm.create_model(job.cfg.image.model, pretrained=False, num_classes=0))
    net.load_state_dict(load_checkpoint(job.ckpt_dir / "best.pt")["model"])
    return eval_probs(job, net, frame, resolve_device(job.cfg.device))


SPEC = ModelSpec(kind="image", run=run, infer=infer, store=lambda model, images: images.at(model.cfg.image),
                 preflight=check_image_weights, together=True)
