"""A small MLP head on fixed feature vectors, trained per fold: used by `fusion`, `embed` and frozen `minilm`."""
from __future__ import annotations

import numpy as np
from torch import nn

from ..context import FoldJob, FoldOutput
from ..labels import N_LABELS
from ..losses import make_loss
from ..device import resolve_device
from ..trainer import ArrayRows, fit, load_checkpoint, make_loader, predict


class MLP(nn.Module):
    """Standardise (BatchNorm without affine), Linear -> ReLU -> Dropout, then the 18-logit head."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, N_LABELS)

    def embed(self, x):
        return self.body(x)


def train_head(job: FoldJob, x_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray, *, hidden: int,
               dropout: float, epochs: int, batch_size: int, lr: float, loss_fn: nn.Module | None = None,
               features: bool = False) -> FoldOutput:
    """x_train is aligned with job.train_idx; early stopping uses the job's stop rows inside it.

    loss_fn defaults to the configured loss on the fit rows (make_loss); features=True returns the hidden
    layer of every row (train, val, test) for a stack to read.
    """
    cfg, y = job.cfg, job.comp.y
    fit_pos = np.searchsorted(job.train_idx, job.fit_idx)
    stop_pos = np.searchsorted(job.train_idx, job.stop_idx)
    if job.cfg.stop_fraction <= 0:  # early stopping on fold k itself
        x_stop = x_val
    else:
        x_stop = x_train[stop_pos]
    train_loader, reseed = make_loader(ArrayRows([x_train[fit_pos]], y[job.fit_idx]), batch_size, cfg, shuffle=True)
    stop_loader, _ = make_loader(ArrayRows([x_stop], y[job.stop_idx]), batch_size * 4, cfg, shuffle=False)
    net = MLP(x_train.shape[1], hidden, dropout)
    result = fit(job, net, [{"params": net.parameters(), "lr": lr}], train_loader, stop_loader, y[job.stop_idx],
                 make_loss(cfg, y[job.fit_idx]) if loss_fn is None else loss_fn, epochs, reseed)
    val_probs, val_feats = predict_head(job, net, x_val)
    test_probs, test_feats = predict_head(job, net, x_test)
    feats = {"train": predict_head(job, net, x_train)[1], "val": val_feats, "test": test_feats} if features else None
    return FoldOutput(val_probs, test_probs, result.best_f1, result.best_epoch, feats, result.history)


def predict_head(job: FoldJob, net: MLP, x: np.ndarray):
    loader, _ = make_loader(ArrayRows([x], None), 4096, job.cfg, shuffle=False)
    return predict(net, loader, resolve_device(job.cfg.device), desc=f"{job.label} predict")


def load_head(job: FoldJob, dim: int, hidden: int, dropout: float) -> MLP:
    net = MLP(dim, hidden, dropout)
    net.load_state_dict(load_checkpoint(job.ckpt_dir / "best.pt")["model"])
    return net
