"""The on-disk contract between training and everything after it: oof/<model>/fold<k>*.npz.

fold<k>.npz          val_ids, val_probs (fold k rows), test_ids, test_probs; meta: provenance, best F1/epoch
fold<k>.json         the same meta, readable: early-stopping F1 and epoch, OOF F1, per-epoch history
fold<k>_features.npz train_ids/train, val_ids/val, test_ids/test pooled features (networks only)
Every file carries its ImageIDs and provenance, and every reader checks both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artefacts import check_provenance, load_arrays, save_arrays, write_json
from .config import Config
from .errors import UserError
from .folds import folds_hash, read_folds
from .metric import samples_f1
from .models import REGISTRY, TRAINING_KEYS, FoldOutput


def provenance(cfg: Config, comp, model: str) -> dict:
    return {"data": comp.fingerprint, "folds": folds_hash(cfg),
            "config": cfg.section_hash(*TRAINING_KEYS, *REGISTRY[model].sections)}


def oof_path(cfg: Config, model: str, k: int) -> Path:
    return cfg.out / "oof" / model / f"fold{k}.npz"


def features_path(cfg: Config, model: str, k: int) -> Path:
    return cfg.out / "oof" / model / f"fold{k}_features.npz"


def save_fold(cfg: Config, comp, model: str, k: int, val_idx: np.ndarray, out: FoldOutput, prov: dict,
              train_idx: np.ndarray) -> None:
    ids = comp.train["ImageID"].to_numpy(dtype=str)
    test_ids = comp.test["ImageID"].to_numpy(dtype=str)
    if out.features is not None:  # written first: a fold counts as done only when its probabilities exist
        save_arrays(features_path(cfg, model, k), {**prov, "model": model, "fold": k},
                    train_ids=ids[train_idx], train=out.features["train"], val_ids=ids[val_idx],
                    val=out.features["val"], test_ids=test_ids, test=out.features["test"])
    meta = {**prov, "model": model, "fold": k, "best_f1": out.best_f1, "best_epoch": out.best_epoch,
            "oof_samples_f1_at_0.5": samples_f1(comp.y[val_idx], out.val_probs), "history": out.history}
    write_json(oof_path(cfg, model, k).with_suffix(".json"), meta)  # for people; stages read the .npz
    save_arrays(oof_path(cfg, model, k), meta, val_ids=ids[val_idx], val_probs=out.val_probs.astype(np.float32),
                test_ids=test_ids, test_probs=out.test_probs.astype(np.float32))


def _rerun(model: str, k: int) -> str:
    return f"./run.sh train models={model} fold={k}"


def load_fold(cfg: Config, comp, model: str, k: int, prov: dict, features: bool = False):
    """(meta, arrays) of one fold, refused with a one-line fix when missing, stale or misaligned."""
    path = features_path(cfg, model, k) if features else oof_path(cfg, model, k)
    if not path.exists():
        raise UserError(f"{path} is missing: fold {k} of {model} has not been trained; run {_rerun(model, k)}")
    meta, arrays = load_arrays(path)
    check_provenance(path, meta, prov, _rerun(model, k))
    fold_rows = comp.train["ImageID"].to_numpy(dtype=str)[read_folds(cfg, comp) == k]
    if not np.array_equal(arrays["val_ids"], fold_rows) or \
            not np.array_equal(arrays["test_ids"], comp.test["ImageID"].to_numpy(dtype=str)):
        raise UserError(f"{path}: its rows do not line up with fold {k} of folds.csv / test.csv; run {_rerun(model, k)}")
    return meta, arrays


def fold_done(cfg: Config, comp, model: str, k: int, prov: dict) -> bool:
    try:
        load_fold(cfg, comp, model, k, prov)
        return True
    except UserError:
        return False


def collect_oof(cfg: Config, comp, model: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Full OOF matrix in train.csv order, test probabilities averaged over folds, per-fold meta."""
    fold_of_row = read_folds(cfg, comp)
    prov = provenance(cfg, comp, model)
    oof = np.full((len(comp.train), comp.y.shape[1]), np.nan, dtype=np.float32)
    tests, metas = [], []
    for k in range(cfg.n_folds):
        meta, arrays = load_fold(cfg, comp, model, k, prov)
        oof[fold_of_row == k] = arrays["val_probs"]
        tests.append(arrays["test_probs"])
        metas.append(meta)
    if np.isnan(oof).any():
        raise UserError(f"oof/{model}: some train rows have no out-of-fold prediction; rerun ./run.sh train models={model}")
    return oof, np.mean(tests, axis=0), metas
