"""Micro-batches into optimizer updates (image.accum_steps): a large backbone's batch of B rows that does not fit on
a 16 GB card is taken as accum_steps micro-batches of B / accum_steps, and the update equals the one-batch update."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..device import autocast_dtype, to_device, uses_channels_last


def updates_per_epoch(batches: int, accum_steps: int) -> int:
    """Optimizer updates in an epoch of `batches` micro-batches: groups of accum_steps, the last one maybe short."""
    return -(-batches // max(1, accum_steps))


class Updater:
    """Each batch of the loader is a micro-batch; every `accum_steps` of them (fewer for an epoch's last group) make
    one update. Each micro-batch's mean loss is divided by its group's size before backward, so the summed gradients
    are those of the group's mean loss: one batch of accum_steps x the loader's batch (x ranks), as the batches are
    equal (the loader drops a ragged last one). In a DDP run the inner micro-batches skip the gradient all-reduce
    (no_sync) and the group's last one averages the sum over the ranks. Under fp16 autocast the scaled gradients add
    up and are unscaled once, before clipping. After each update the schedule steps and the EMA follows.

    No group spans two epochs, so a checkpoint written at an epoch's end holds no half-accumulated gradient: resuming
    from it takes the same updates as the uninterrupted run."""

    def __init__(self, net: nn.Module, optimizer, scaler, loss_fn: nn.Module, device: torch.device, *,
                 batches: int, accum_steps: int = 1, grad_clip: float = 0.0, schedule=None, ema=None,
                 forward: nn.Module | None = None, augment=None, mixer=None):
        """batches: micro-batches per epoch; forward: the DDP wrapper of trainer.Logits(net), when there is one;
        augment: image.gpu_aug's device augmentation of the first input; mixer: mixup / cutmix."""
        self.net, self.optimizer, self.scaler, self.loss_fn, self.device = net, optimizer, scaler, loss_fn, device
        self.batches, self.accum, self.grad_clip = batches, max(1, accum_steps), grad_clip
        self.schedule, self.ema, self.forward, self.augment, self.mixer = schedule, ema, forward, augment, mixer

    def updates_per_epoch(self) -> int:
        return updates_per_epoch(self.batches, self.accum)

    def reseed(self, seed: int) -> None:
        for part in (self.augment, self.mixer):
            if part is not None:
                part.reseed(seed)

    def _group(self, index: int) -> tuple[int, bool]:
        """The size of micro-batch `index`'s group (0-based within the epoch) and whether `index` ends it."""
        first = index - index % self.accum
        size = min(self.accum, max(self.batches - first, 1))
        return size, index - first == size - 1 or index >= self.batches - 1

    def step(self, index: int, inputs, target) -> torch.Tensor:
        """Forward and backward of micro-batch `index`, and the update when it ends its group; returns its loss (still
        on the device: reading it would wait for the GPU)."""
        size, last = self._group(index)
        if index % self.accum == 0:
            self.optimizer.zero_grad(set_to_none=True)
        sync = contextlib.nullcontext() if last or self.forward is None else self.forward.no_sync()
        with sync:
            loss = self._backward(inputs, target, size, self.forward)
        if last:
            self._update()
        return loss

    def trial(self, inputs, target) -> None:
        """One whole update on this batch alone: what a CUDA out-of-memory probe runs at ever smaller batches (never
        in a DDP run; it spoils the weights in memory, and the run stops after it)."""
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(inputs, target, 1, None)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _backward(self, inputs, target, size: int, forward: nn.Module | None) -> torch.Tensor:
        inputs, target = self._batch(inputs, target)
        dtype = autocast_dtype(self.device)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(*inputs) if forward is not None else self.net.head(self.net.embed(*inputs))
        loss = self.loss_fn(logits.float(), target)
        self.scaler.scale(loss / size).backward()
        return loss.detach()

    def _batch(self, inputs, target):
        """The micro-batch on the device, augmented there (image.gpu_aug) and mixed (mixup / cutmix) when asked."""
        if self.augment is not None:  # the first input is a batch of uint8 HWC squares: crop and flip it on the device
            inputs = [self.augment(inputs[0].to(self.device, non_blocking=True)), *inputs[1:]]
        inputs = to_device(inputs, self.device, uses_channels_last(self.net, self.device))
        target = target.to(self.device, non_blocking=True).float()
        if self.mixer is not None:
            image, target = self.mixer(inputs[0], target)
            inputs = [image, *inputs[1:]]
        return inputs, target

    def _update(self) -> None:
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule is not None:
            self.schedule.after_update()
        if self.ema is not None:
            self.ema.update(self.net)
