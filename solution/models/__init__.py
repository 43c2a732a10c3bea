"""The model registry: the code of every model kind in one plain dict by kind, each following one per-fold contract.

`run(job)` trains on the folds other than k and returns fold k's and the test set's probabilities (and,
for models of a kind that saves features, pooled features); `infer(job, frame, upstream)` re-runs saved fold
weights on new rows. A model is a name (built-in or a declared variant) resolved to its kind and its config
(solution/variants.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..variants import kind_of, model_config, stacked_on
from . import bilstm, embed, fusion, image, joint, minilm, tfidf
from .spec import ModelSpec

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
        return stacked_on(self.cfg, self.name)


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
