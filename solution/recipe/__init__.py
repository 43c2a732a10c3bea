"""The training recipe: how fit() turns batches into weights beyond the optimizer itself, one part per module:
the learning-rate schedule (schedule.py), gradient accumulation with AMP and DDP (updates.py), the EMA of the
weights (ema.py), mixup / cutmix (mixing.py), layer-wise rate decay (layer_decay.py) and the head fitted first
(probe.py). The plain recipe is what the caption networks and the heads on frozen features train with; image
networks (the image and joint kinds) take theirs from image.*."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .ema import EmaWeights
from .mixing import Mixer
from .schedule import EpochSchedule, UpdateSchedule


@dataclass(frozen=True)
class Recipe:
    per_update: bool = False  # warm-up + cosine at every update (else the run's `scheduler`, once per epoch)
    warmup: float = 0.0  # epochs of linear warm-up (per_update only)
    accum_steps: int = 1  # micro-batches per optimizer update
    ema: float = 0.0  # EMA decay of the weights that are evaluated and kept (0 = off)
    mixup: float = 0.0  # Beta alpha of mixup (0 = off)
    cutmix: float = 0.0  # Beta alpha of cutmix (0 = off)
    head_init: Callable | None = None  # head_init(net, device): fit the head before the first update

    def schedule(self, scheduler: str, optimizer, epochs: int, updates_per_epoch: int):
        if not self.per_update:
            return EpochSchedule(scheduler, optimizer, epochs)
        return UpdateSchedule(optimizer, epochs * updates_per_epoch, round(self.warmup * updates_per_epoch),
                              updates_per_epoch)

    def averaged(self, net) -> EmaWeights | None:
        return EmaWeights(net, self.ema) if self.ema > 0 else None

    def mixer(self) -> Mixer | None:
        return Mixer(self.mixup, self.cutmix) if self.mixup > 0 or self.cutmix > 0 else None


def image_recipe(image, head_init: Callable | None, mixes: bool = True) -> Recipe:
    """The fine-tuning recipe of an image network from its image.* settings; head_init fits its head on frozen
    features (image.head_init=probe), and mixes=False leaves mixup and cutmix out (a caption cannot be mixed)."""
    return Recipe(per_update=True, warmup=image.warmup, accum_steps=image.accum_steps, ema=image.ema,
                  mixup=image.mixup if mixes else 0.0, cutmix=image.cutmix if mixes else 0.0,
                  head_init=head_init if image.head_init == "probe" else None)
