"""Layer-wise learning-rate decay (image.layer_decay): the deeper a backbone block, the smaller its rate, so the
general features of the first layers move least while the task-specific top adapts (BEiT, Bao et al., 2022; the
Swin and ConvNeXt fine-tuning recipes)."""
from __future__ import annotations

from torch import nn

from .. import log


def block_depths(backbone: nn.Module) -> dict[str, int]:
    """Each parameter's depth from the top: 1 for the last block, the block count for the stem. Blocks are timm's
    own fine-grained groups (group_matcher: ResNet stages' blocks, EfficientNet's, ConvNeXt's, Swin's, ViT's with
    its patch embedding as the stem), so one rule fits every timm family."""
    from timm.models import group_parameters

    if not hasattr(backbone, "group_matcher"):
        log.warn(f"image.layer_decay: {type(backbone).__name__} has no timm group_matcher; its layers share one rate")
        return {name: 1 for name, _ in backbone.named_parameters()}
    ids = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    top = max(ids.values())
    return {name: top + 1 - ids[name] for name, _ in backbone.named_parameters()}


def backbone_groups(backbone: nn.Module, lr: float, decay: float, frozen_epochs: int = 0) -> list[dict]:
    """Optimizer groups of the backbone: lr * decay ** depth per block (lr for all with decay 1), each marked with
    the epochs it waits before it trains (the schedule reads frozen_epochs)."""
    if decay == 1:
        return [{"params": list(backbone.parameters()), "lr": lr, "frozen_epochs": frozen_epochs}]
    depths = block_depths(backbone)
    groups: dict[int, dict] = {}
    for name, param in backbone.named_parameters():
        depth = depths[name]
        groups.setdefault(depth, {"params": [], "lr": lr * decay ** depth, "frozen_epochs": frozen_epochs})
        groups[depth]["params"].append(param)
    return [groups[d] for d in sorted(groups, reverse=True)]  # the stem first
