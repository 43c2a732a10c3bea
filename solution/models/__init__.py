"""The model registry: the code of every model kind in one plain dict by kind, each following one per-fold contract.

`run(job)` trains on the folds other than k and returns fold k's and the test set's probabilities (and,
for models of a kind that saves features, pooled features); `infer(job, frame, upstream)` re-runs saved fold
weights on new rows. A model is a name (built-in or a declared variant) resolved to its kind and its config
(solution/variants.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..variants import kind_of, model_config, upstream_names


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
    kind: str  # a key of variants.KINDS
    run: Callable
    infer: Callable
    store: Callable = lambda model, images: None  # what its folds read, made once per run (from the Model and a
    # train.ImageSource): an image store at its side (image kinds), cached embeddings (embed), nothing (caption models)
    preflight: Callable = lambda cfg: None  # checks, before any data is touched, what it needs (weights), in one line
    stacks: bool = False  # it reads the fold features of the models named by variants.upstream_names
    together: bool = False  # in a DDP run it trains on every rank (the image networks); else on rank 0 alone


from . import bilstm, embed, fusion, image, joint, minilm, tfidf  # noqa: E402  (they import the types above)

REGISTRY: dict[str, ModelSpec] = {s.kind: s for s in (image.SPEC, embed.SPEC, bilstm.SPEC, tfidf.SPEC, minilm.SPEC,
                                                     fusion.SPEC, joint.SPEC)}


@dataclass(frozen=True)
class Model:
    """A model of this run: its name (its folder under oof/ and checkpoints/), kind, code and resolved config."""
    name: str
    kind: str
    spec: ModelSpec
    cfg: object

    @property
    def upstream(self) -> list[str]:
        """The models whose fold features it stacks on."""
        return list(upstream_names(self.cfg, self.name).values()) if self.spec.stacks else []


def resolve(cfg, name: str) -> Model:
    kind = kind_of(cfg, name)
    return Model(name, kind, REGISTRY[kind], model_config(cfg, name))


def training_order(cfg, names) -> list[Model]:
    """The selected models plus what they stack on, each after its inputs."""
    order: dict[str, Model] = {}

    def visit(name):
        if name in order:
            return
        model = resolve(cfg, name)
        for dep in model.upstream:
            visit(dep)
        order[name] = model

    for name in names:
        visit(name)
    return list(order.values())
