"""The model registry: every model by name in one plain dict, each following the same per-fold contract.

`run(job)` trains on the folds other than k and returns fold k's and the test set's probabilities (and,
for networks, pooled features); `infer(job, frame, upstream)` re-runs saved fold weights on new rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# Top-level settings every trained model depends on (its artefacts are stale when one changes).
TRAINING_KEYS = ("seed", "n_folds", "limit", "epochs", "batch_size", "patience", "stop_fraction", "optimizer",
                 "scheduler", "weight_decay", "grad_clip", "loss", "pos_weight", "pos_weight_max", "on_bad_image")


@dataclass
class FoldOutput:
    val_probs: np.ndarray  # (n_val, 18), rows of fold k in train.csv order
    test_probs: np.ndarray  # (n_test, 18), test.csv order
    best_f1: float  # early-stopping set samples-F1 at 0.5 (NaN for models without early stopping)
    best_epoch: int
    features: dict[str, np.ndarray] | None = None  # "train", "val", "test" pooled features, for stacking
    history: list = field(default_factory=list)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "image", "caption" or "stack"
    sections: tuple[str, ...]  # config sections (besides TRAINING_KEYS) the model depends on
    run: Callable
    infer: Callable
    needs: Callable = lambda cfg: ()  # models whose features this one consumes


from . import bilstm, fusion, image, joint, minilm, tfidf  # noqa: E402  (they import the types above)

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in (image.SPEC, bilstm.SPEC, tfidf.SPEC, minilm.SPEC, fusion.SPEC,
                                                     joint.SPEC)}


def needs_images(cfg, names) -> bool:
    """True when any selected model, directly or through the features it stacks on, reads images."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = REGISTRY[name]
        if spec.kind == "image":
            return True
        todo.extend(spec.needs(cfg))
    return False


def training_order(cfg, names) -> list[str]:
    """Selected models plus what they stack on, each after its inputs."""
    order: list[str] = []

    def visit(name):
        if name in order:
            return
        for dep in REGISTRY[name].needs(cfg):
            visit(dep)
        order.append(name)

    for name in names:
        visit(name)
    return order
