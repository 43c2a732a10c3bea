"""`fusion`: the seed's combined network, an MLP on [image features, caption features] of the same fold.

For fold k the head is fitted on the other folds' rows, using the features of fold k's own image and
caption models, and scored on fold k, so no part of the stack has seen the rows it is scored on.
"""
from __future__ import annotations

import numpy as np

from ..context import FoldJob, FoldOutput
from ..errors import UserError
from ..oof import load_fold, provenance
from .spec import ModelSpec
from .mlp import load_head, predict_head, train_head


def _upstream(cfg):
    return (cfg.fusion.image_model, cfg.fusion.text_model)


def _fold_features(job: FoldJob) -> dict[str, np.ndarray]:
    parts = []
    for model in _upstream(job.cfg):
        meta, arrays = load_fold(job.base, job.comp, model, job.k, provenance(job.base, job.comp, model, job.k),
                                 features=True)
        if meta["content"] != job.provenance["upstream"][model]:  # another process retrained it meanwhile
            raise UserError(f"oof/{model}/fold{job.k}_features.npz changed while {job.label} started; "
                            f"run ./run.sh train models={job.model} fold={job.k}")
        ids = job.comp.train["ImageID"].to_numpy(dtype=str)
        if not np.array_equal(arrays["train_ids"], ids[job.train_idx]):
            raise UserError(f"oof/{model}/fold{job.k}_features.npz: train rows do not line up; "
                            f"run ./run.sh train models={model} fold={job.k} force=true")
        parts.append(arrays)
    return {part: np.concatenate([a[part] for a in parts], axis=1) for part in ("train", "val", "test")}


def _head_args(cfg):
    f = cfg.fusion
    return dict(hidden=f.hidden, dropout=f.dropout)


def run(job: FoldJob) -> FoldOutput:
    cfg, f = job.cfg, job.cfg.fusion
    x = _fold_features(job)
    return train_head(job, x["train"], x["val"], x["test"], **_head_args(cfg),
                      epochs=cfg.network_epochs(f.epochs), batch_size=cfg.network_batch(f.batch_size), lr=f.lr)


def infer(job: FoldJob, frame, upstream):
    """upstream: {model: (probs, features)} of the same fold for `frame`'s rows."""
    x = np.concatenate([upstream[m][1] for m in _upstream(job.cfg)], axis=1)
    return predict_head(job, load_head(job, x.shape[1], **_head_args(job.cfg)), x)


SPEC = ModelSpec(kind="fusion", run=run, infer=infer)
