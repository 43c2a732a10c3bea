"""Multi-label mixup and cutmix (image.mixup, image.cutmix): each training batch is mixed with a shuffled copy of
itself, the images and their label vectors with one coefficient, so a target says how much of each photo is there."""
from __future__ import annotations

import numpy as np
import torch


class Mixer:
    """Mixup (Zhang et al., 2018): x = lam * x_i + (1 - lam) * x_j. Cutmix (Yun et al., 2019): a box of x_j pasted
    into x_i, lam = the share of x_i left. Both draw lam from Beta(alpha, alpha), the alpha of their key; with both
    keys on, each batch takes one of the two at random. Targets become lam * y_i + (1 - lam) * y_j, which BCE takes as
    soft targets. Its RNG is reseeded every epoch from (seed, fold, epoch, rank), so a resumed run mixes alike."""

    def __init__(self, mixup: float, cutmix: float):
        self.mixup, self.cutmix = mixup, cutmix
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: N x C x H x W on the device (uint8 or float); float images and targets out."""
        n = len(images)
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or self.rng.random() < 0.5)
        lam = float(self.rng.beta(*(2 * [self.cutmix if use_cutmix else self.mixup])))
        order = torch.from_numpy(self.rng.permutation(n)).to(images.device)
        images, other = images.float(), images[order].float()
        if use_cutmix:
            h, w = images.shape[-2:]
            cut_h, cut_w = round(h * np.sqrt(1 - lam)), round(w * np.sqrt(1 - lam))
            top, left = self.rng.integers(0, h - cut_h + 1), self.rng.integers(0, w - cut_w + 1)
            images = images.clone()
            images[..., top:top + cut_h, left:left + cut_w] = other[..., top:top + cut_h, left:left + cut_w]
            lam = 1 - cut_h * cut_w / (h * w)  # the share of each image that is still its own
        else:
            images = lam * images + (1 - lam) * other
        return images, lam * target + (1 - lam) * target[order]
