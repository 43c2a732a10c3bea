"""The on-disk contract between training and everything after it: oof/<model>/fold<k>*.npz.

fold<k>.npz          val_ids, val_probs (fold k rows), test_ids, test_probs; meta: provenance, best F1/epoch
fold<k>.json         the same meta, readable: early-stopping F1 and epoch, OOF F1, per-epoch history
fold<k>_features.npz train_ids/train, val_ids/val, test_ids/test pooled features (image, embed, bilstm kinds)
config.json          the model's kind, its variant settings and the full config it trains with
checkpoints/<model>/fold<k>/fold.json  the fold's record: full resolved config, provenance, the content
                     hashes of its OOF and feature arrays and of its weight files (what `predict` rebuilds from)
Every file carries its ImageIDs, provenance and content hash, and every reader checks them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .artefacts import (check_provenance, file_hash, load_arrays, read_json, read_meta, replace_dir, save_arrays,
                        write_json)
from .config import Config
from .context import FoldOutput, checkpoint_dir, staging_dir
from .errors import UserError
from .folds import folds_hash, read_folds
from .metric import samples_f1
from .text import pipeline_identity
from .variants import KINDS, kind_of, model_config, settings_identity, stacked_on


def provenance(cfg: Config, comp, model: str, k: int, store=None) -> dict:
    """What fold k of `model` is made from: data, folds, its settings, for caption models the text pipeline
    (stop list, normaliser, vectors: the same settings on another machine must give the same tokens), for a
    stack the content hashes of the upstream feature arrays it reads (so retraining an upstream fold makes the
    stack's fold stale), and, given the store the model reads, that store's identity (embed: the frozen
    backbone's weights by content and its preprocessing; only `train` and `predict` build it, and a reader
    that does not checks the rest). `cfg` is the run's config; the model's own settings are resolved here."""
    prov = {"data": comp.fingerprint, "folds": folds_hash(cfg), "config": settings_hash(cfg, model)}
    if getattr(store, "identity", None):
        prov["embeddings"] = store.identity
    if "text" in KINDS[kind_of(cfg, model)].sections:
        prov["text"] = pipeline_identity(model_config(cfg, model))
    upstream = stacked_on(cfg, model)
    if upstream:
        prov["upstream"] = {m: _content_or_none(features_path(cfg, m, k)) for m in upstream}
    return prov


def settings_hash(cfg: Config, model: str) -> str:
    """Hash of every setting `model` depends on (the same for all its folds): a variant's own, the run's
    for what it does not set."""
    return hashlib.sha256(json.dumps(settings_identity(cfg, model), sort_keys=True).encode()).hexdigest()[:12]


def oof_contents(cfg: Config, model: str) -> list[str | None]:
    """The content hash of each fold's OOF file (None where missing): what a blend was tuned on."""
    return [_content_or_none(oof_path(cfg, model, k)) for k in range(cfg.n_folds)]


def changed_folds(tuned: dict[str, list], now: dict[str, list]) -> list[str]:
    """'model fold k' for each OOF file whose content hash in `now` differs from the one a blend was tuned on
    (`tuned`: the blend's provenance["oof"]; a fold it lacks counts as None, a missing file)."""
    changed = []
    for model, hashes in now.items():
        before = tuned.get(model) or []
        changed += [f"{model} fold {k}" for k, content in enumerate(hashes)
                    if (before[k] if k < len(before) else None) != content]
    return changed


def _content_or_none(path: Path) -> str | None:
    try:
        return read_meta(path).get("content")
    except UserError:
        return None


RECORD = "fold.json"


def record_path(cfg: Config, model: str, k: int) -> Path:
    return checkpoint_dir(cfg, model, k) / RECORD


RECORD_SKIPS = ("last.pt", RECORD)  # resume state and the record itself: not what predict loads


def weight_files(ckpt_dir: Path) -> dict[str, str]:
    """Hash of every file `infer` may load from a fold's checkpoint folder (best.pt, vocab.json, model.pkl)."""
    return {p.name: file_hash(p) for p in sorted(ckpt_dir.iterdir())
            if p.is_file() and p.name not in RECORD_SKIPS and not p.name.startswith(".")}


def oof_path(cfg: Config, model: str, k: int) -> Path:
    return cfg.out / "oof" / model / f"fold{k}.npz"


def features_path(cfg: Config, model: str, k: int) -> Path:
    return cfg.out / "oof" / model / f"fold{k}_features.npz"


def save_fold(cfg: Config, comp, model: str, k: int, val_idx: np.ndarray, out: FoldOutput, prov: dict,
              train_idx: np.ndarray) -> None:
    """Features, then OOF + test probabilities, then the checkpoint record in the staging folder, which then
    replaces the fold's checkpoint folder: a fold counts as done only when its record names its probabilities,
    and until then predict keeps using the fold trained before."""
    ids = comp.train["ImageID"].to_numpy(dtype=str)
    test_ids = comp.test["ImageID"].to_numpy(dtype=str)
    features = None
    if out.features is not None:
        features = save_arrays(features_path(cfg, model, k), {**prov, "model": model, "fold": k},
                               train_ids=ids[train_idx], train=out.features["train"], val_ids=ids[val_idx],
                               val=out.features["val"], test_ids=test_ids, test=out.features["test"])
    meta = {**prov, "model": model, "fold": k, "best_f1": out.best_f1, "best_epoch": out.best_epoch,
            "oof_samples_f1_at_0.5": samples_f1(comp.y[val_idx], out.val_probs), "history": out.history}
    content = save_arrays(oof_path(cfg, model, k), meta, val_ids=ids[val_idx], val_probs=out.val_probs.astype(np.float32),
                          test_ids=test_ids, test_probs=out.test_probs.astype(np.float32))
    write_json(oof_path(cfg, model, k).with_suffix(".json"), {**meta, "content": content})  # for people
    kind, config = kind_of(cfg, model), model_config(cfg, model).to_dict()
    # oof/<model>/config.json: what the model is (its kind, its variant settings) and the full config it trains with
    write_json(cfg.out / "oof" / model / "config.json",
               {"model": model, "kind": kind, "variant": cfg.variant.get(model, {}), "config": config})
    staged = staging_dir(cfg, model, k)
    write_json(staged / RECORD, {"model": model, "kind": kind, "fold": k, "config": config, "provenance": prov,
                                 "oof": content, "features": features, "files": weight_files(staged)})
    replace_dir(staged, checkpoint_dir(cfg, model, k))  # the finished fold, whole, in place of the one before


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
    """Fold k's probabilities are there, current, and its checkpoint record names exactly them."""
    try:
        meta, _ = load_fold(cfg, comp, model, k, prov)
        return read_record(cfg, model, k).get("oof") == meta["content"]
    except (UserError, KeyError):
        return False


def read_record(cfg: Config, model: str, k: int) -> dict:
    """Fold k's checkpoint record, refused in one line when training of that fold did not finish."""
    path = record_path(cfg, model, k)
    if not path.exists():
        raise UserError(f"{path} is missing: fold {k} of {model} has not finished training; run {_rerun(model, k)}")
    return read_json(path)


def collect_oof(cfg: Config, comp, model: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Full OOF matrix in train.csv order, test probabilities averaged over folds, per-fold meta."""
    fold_of_row = read_folds(cfg, comp)
    oof = np.full((len(comp.train), comp.y.shape[1]), np.nan, dtype=np.float32)
    tests, metas = [], []
    for k in range(cfg.n_folds):
        meta, arrays = load_fold(cfg, comp, model, k, provenance(cfg, comp, model, k))
        oof[fold_of_row == k] = arrays["val_probs"]
        tests.append(arrays["test_probs"])
        metas.append(meta)
    if np.isnan(oof).any():
        raise UserError(f"oof/{model}: some train rows have no out-of-fold prediction; rerun ./run.sh train models={model}")
    return oof, np.mean(tests, axis=0), metas
