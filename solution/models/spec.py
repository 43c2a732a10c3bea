"""What every model kind's module declares: its code for the per-fold contract (models/__init__.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # a key of variants.KINDS
    run: Callable
    infer: Callable
    store: Callable = lambda model, images: None  # what its folds read, made once per run (from the Model and a
    # train.ImageSource): an image store at its side (image kinds), cached embeddings (embed), nothing (caption models)
    preflight: Callable = lambda cfg: None  # checks, before any data is touched, what it needs (weights), in one line
    together: bool = False  # in a DDP run it trains on every rank (the image networks); else on rank 0 alone
