"""Learning-rate schedules. Fine-tuning steps its rate at every optimizer update (linear warm-up, then cosine to
zero), so a run of 80 photos and one of 40,000 follow the same curve in epochs; the other networks keep the run's
`scheduler`, stepped once per epoch."""
from __future__ import annotations

import math

import torch


class UpdateSchedule:
    """Warm-up then cosine, per optimizer update, for every parameter group.

    A group's rate at update u (0-based, counted from the group's own start) is its base rate times
        (u + 1) / (W + 1)                            for u < W  (W warm-up updates: never a zero-rate update),
        (1 + cos(pi * (u - W) / (T - W))) / 2        for W <= u < T (T: the group's last update + 1),
    so it reaches the base rate as warm-up ends and would reach zero one update after the last. A group whose dict
    holds `frozen_epochs` (a pretrained backbone trained after its head: image.freeze_epochs) starts that many
    epochs of updates late: rate 0 until then, then its own warm-up and cosine over the updates that remain.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup: int, per_epoch: int):
        self.optimizer, self.total, self.warmup = optimizer, max(total, 1), warmup
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.starts = [min(group.get("frozen_epochs", 0) * per_epoch, self.total) for group in optimizer.param_groups]
        self.updates = 0
        self._apply()

    def factor(self, update: int, start: int = 0) -> float:
        """The share of a group's base rate at `update` for a group that starts at update `start`."""
        u, span = update - start, self.total - start
        if u < 0 or span <= 0:
            return 0.0
        warmup = min(self.warmup, span - 1)
        if u < warmup:
            return (u + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(u - warmup, span - warmup) / max(span - warmup, 1)))

    def _apply(self) -> None:
        for group, base, start in zip(self.optimizer.param_groups, self.base, self.starts):
            group["lr"] = base * self.factor(self.updates, start)

    def after_update(self) -> None:
        self.updates += 1
        self._apply()

    def after_epoch(self, val_f1: float) -> None:
        """Nothing: the rate moves with the updates."""

    def state_dict(self) -> dict:
        return {"updates": self.updates, "base": self.base}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.base = state["updates"], state["base"]
        self._apply()


class EpochSchedule:
    """The run's `scheduler` (cosine, step, or plateau on the stop set's F1), stepped once per epoch: what the caption
    networks and the heads on frozen features train with. Its state is torch's, as checkpoints of earlier versions hold."""

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, epochs: int):
        lr = torch.optim.lr_scheduler
        if name == "cosine":
            self.torch = lr.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=0.0)
        elif name == "step":
            self.torch = lr.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.3)
        else:
            self.torch = lr.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=1)

    def after_update(self) -> None:
        """Nothing: the rate moves once per epoch."""

    def after_epoch(self, val_f1: float) -> None:
        if isinstance(self.torch, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.torch.step(val_f1)
        else:
            self.torch.step()

    def state_dict(self) -> dict:
        return self.torch.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.torch.load_state_dict(state)
