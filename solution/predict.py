"""`predict`: run the saved fold models on a data_dir's test.csv (no training) and blend them into a submission.

The architecture settings come from the training run's oof/config.json; only data_dir, device,
num_workers and batch sizes may differ.
"""
from __future__ import annotations

import numpy as np

from . import log
from .artefacts import load_arrays, read_json
from .config import Config, config_from_dict
from .context import FoldJob
from .data import load_test_only
from .errors import UserError
from .models import REGISTRY, needs_images, training_order
from .submit import write_submission
from .train import prepare_images
from .tune import combine, rank_transform

RUNTIME_KEYS = ("data_dir", "out_dir", "device", "num_workers", "batch_size")


def training_config(cfg: Config) -> Config:
    """The config the models were trained with, with this run's runtime keys on top."""
    path = cfg.out / "oof" / "config.json"
    if not path.exists():
        raise UserError(f"{path} is missing; predict needs a finished ./run.sh train and ./run.sh tune in out_dir={cfg.out_dir}")
    merged = config_from_dict(read_json(path))
    for key in RUNTIME_KEYS:
        setattr(merged, key, getattr(cfg, key))
    return merged


def predict(cfg: Config) -> None:
    record_path = cfg.out / "oof" / "blend.json"
    if not record_path.exists():
        raise UserError(f"{record_path} is missing; run ./run.sh tune before predict")
    record = read_json(record_path)
    cfg = training_config(cfg)
    comp = load_test_only(cfg.data_dir)
    models = record["models"]
    order = training_order(cfg, models)
    store = prepare_images(cfg, comp, (comp.test,)) if needs_images(cfg, order) else None
    per_fold: dict[int, dict] = {k: {} for k in range(cfg.n_folds)}
    for model in order:
        for k in range(cfg.n_folds):
            job = FoldJob(cfg, comp, np.zeros(0, int), k, model, {}, store)
            if not job.ckpt_dir.exists():
                raise UserError(f"{job.ckpt_dir} is missing; run ./run.sh train models={model} fold={k}")
            per_fold[k][model] = REGISTRY[model].infer(job, comp.test, per_fold[k])
        log.info(f"predict {model}: {cfg.n_folds} fold models applied to {len(comp.test)} rows")
    tests = {m: np.mean([per_fold[k][m][0] for k in range(cfg.n_folds)], axis=0) for m in models}
    if record["blend"] == "rank":
        for model in models:
            oof = np.concatenate([load_arrays(cfg.out / "oof" / model / f"fold{k}.npz")[1]["val_probs"]
                                  for k in range(cfg.n_folds)])
            tests[model] = rank_transform(oof, tests[model])[1]
    weights = np.array([record["weights"][m] for m in models])
    probs = combine(np.stack([tests[m] for m in models]), weights)
    write_submission(cfg, comp, comp.test["ImageID"].to_numpy(dtype=str), probs, record)
