"""Losses for imbalanced multi-label targets: weighted BCE and the asymmetric loss (Ridnik et al., 2021)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import Config


def pos_weight(y_train: np.ndarray, formula: str, clip: float) -> torch.Tensor | None:
    """Per-label positive weight from training-fold frequencies: neg/pos, its square root, or none."""
    if formula == "none":
        return None
    pos = y_train.sum(axis=0).astype(np.float64)
    ratio = (len(y_train) - pos) / np.maximum(pos, 1.0)
    weight = np.sqrt(ratio) if formula == "sqrt" else ratio
    return torch.tensor(np.clip(weight, 1.0, clip), dtype=torch.float32)


class AsymmetricLoss(nn.Module):
    """Focuses on hard negatives: easy negatives are down-weighted (gamma_neg) and shifted (clip)."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        loss_pos = target * torch.log(p.clamp(min=1e-8)) * (1 - p) ** self.gamma_pos
        loss_neg = (1 - target) * torch.log((1 - p_neg).clamp(min=1e-8)) * p_neg ** self.gamma_neg
        return -(loss_pos + loss_neg).sum(dim=1).mean() / target.shape[1]


def make_loss(cfg: Config, y_train: np.ndarray) -> nn.Module:
    if cfg.loss == "asl":
        return AsymmetricLoss()
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_train, cfg.pos_weight, cfg.pos_weight_max))
