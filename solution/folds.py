"""Stage 1: one MultilabelStratifiedKFold split, written once to folds/folds.csv and shared by every model."""
from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from . import log
from .artefacts import file_hash, read_json, write_json
from .config import Config
from .csvio import write_table
from .data import Competition
from .errors import UserError
from .labels import LABELS


def folds_path(cfg: Config):
    return cfg.out / "folds" / "folds.csv"


def make_folds(cfg: Config, comp: Competition) -> np.ndarray:
    """Return the fold of every train row, rebuilding folds.csv only when data, n_folds or seed changed."""
    path, meta_path = folds_path(cfg), cfg.out / "folds" / "folds.json"
    want = {"data": comp.fingerprint, "n_folds": cfg.n_folds, "seed": cfg.seed}
    if path.exists() and meta_path.exists():
        meta = read_json(meta_path)
        if {k: meta.get(k) for k in want} == want and meta.get("hash") == file_hash(path):
            table = pd.read_csv(path, dtype={"ImageID": str})
            if table["ImageID"].tolist() == comp.train["ImageID"].tolist():
                log.info(f"folds: reusing {path} ({cfg.n_folds} folds, seed {cfg.seed})")
                return table["fold"].to_numpy()
        log.info(f"folds: {path} was made from other data or settings; rebuilding it")
    if len(comp.train) < cfg.n_folds:
        raise UserError(f"train.csv has {len(comp.train)} rows, fewer than n_folds={cfg.n_folds}")
    fold = np.full(len(comp.train), -1, dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=cfg.n_folds, shuffle=True, random_state=cfg.seed)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(comp.y)), comp.y)):
        fold[val_idx] = k
    write_table(path, ("ImageID", "fold"), list(zip(comp.train["ImageID"], map(str, fold))))
    write_json(meta_path, {**want, "hash": file_hash(path)})
    log.info(f"folds: wrote {path}")
    counts = pd.DataFrame([comp.y[fold == k].sum(axis=0) for k in range(cfg.n_folds)],
                          columns=[str(label) for label in LABELS], index=[f"fold{k}" for k in range(cfg.n_folds)])
    counts.insert(0, "rows", np.bincount(fold, minlength=cfg.n_folds))
    log.info("per-fold label counts:\n" + counts.to_string())
    return fold


def folds_hash(cfg: Config) -> str:
    path = folds_path(cfg)
    if not path.exists():
        raise UserError(f"{path} is missing; run ./run.sh train (it writes the folds first)")
    return file_hash(path)


def read_folds(cfg: Config, comp: Competition) -> np.ndarray:
    """The fold of every train row from folds.csv, refused when it was made from other data."""
    path = folds_path(cfg)
    meta_path = path.with_name("folds.json")
    if not path.exists() or not meta_path.exists():
        raise UserError(f"{path} is missing; run ./run.sh train (it writes the folds first)")
    meta = read_json(meta_path)
    if meta.get("data") != comp.fingerprint or meta.get("n_folds") != cfg.n_folds:
        raise UserError(f"{path} was made from other data or n_folds; rerun ./run.sh train to rebuild it and the models")
    table = pd.read_csv(path, dtype={"ImageID": str})
    if table["ImageID"].tolist() != comp.train["ImageID"].tolist():
        raise UserError(f"{path}: its ImageIDs differ from train.csv; rerun ./run.sh train")
    return table["fold"].to_numpy()
