"""`predict`: run the saved fold models on a data_dir's test.csv (no training) and blend them into a submission.

Every fold model is rebuilt from its checkpoint record (checkpoints/<model>/fold<k>/fold.json: the full
resolved config it was trained with, its provenance and the hashes of its OOF arrays and weight files),
and used only when the record matches what `tune` blended. So on the training run's own test.csv,
`predict` writes exactly the submission `submit` writes, and otherwise refuses in one line. Its file is its own,
submissions/predict-<data_dir's folder>-<test.csv's fingerprint>.csv, so the competition run's
submissions/submission.csv stays as `submit` wrote it.
Only data_dir, out_dir, device, num_workers and on_bad_image (and batch_size when given) come from this run.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from . import log
from .artefacts import load_arrays, read_json
from .config import Config, config_from_dict
from .context import FoldJob, checkpoint_dir
from .csvio import write_table
from .data import load_test_only
from .errors import UserError
from .models import REGISTRY, Model
from .oof import oof_path, read_record, weight_files
from .submit import labels_per_image, submission_rows
from .tune import combine, rank_transform
from .variants import BUILTINS

RUNTIME_KEYS = ("data_dir", "out_dir", "device", "num_workers", "on_bad_image")  # what to do with this test.csv


def _verified_record(cfg: Config, blend: dict, model: str, k: int) -> dict:
    """Fold k's record of `model`, refused unless its weights are unchanged and it is what the blend used."""
    record = read_record(cfg, model, k)
    rerun = f"./run.sh train models={model} fold={k}"
    for key in ("data", "folds"):
        if record["provenance"].get(key) != blend["provenance"][key]:
            raise UserError(f"{checkpoint_dir(cfg, model, k)} was trained on other {key} than oof/blend.json; "
                            f"rerun {rerun}, then ./run.sh tune")
    if weight_files(checkpoint_dir(cfg, model, k)) != record["files"]:
        raise UserError(f"{checkpoint_dir(cfg, model, k)}: its weight files changed after training finished; "
                        f"rerun {rerun} force=true")
    tuned_on = blend["provenance"]["oof"].get(model)
    if tuned_on is not None and tuned_on[k] != record["oof"]:
        raise UserError(f"{model} fold {k} was retrained after ./run.sh tune; rerun ./run.sh tune, then predict")
    return record


def _check_store(store, record: dict, name: str) -> None:
    """A frozen backbone must embed as it did for training: the same weights (by content) and preprocessing."""
    trained, now = record["provenance"].get("embeddings"), getattr(store, "identity", None)
    if trained and trained != now:
        raise UserError(f"{name} was trained on the embeddings {trained}, but its backbone now gives {now} (other "
                        f"weights or preprocessing); restore them, or rerun ./run.sh train models={name}, then "
                        "./run.sh tune")


def _tuned_oof(cfg: Config, blend: dict, model: str, k: int) -> np.ndarray:
    meta, arrays = load_arrays(oof_path(cfg, model, k))
    if meta["content"] != blend["provenance"]["oof"][model][k]:
        raise UserError(f"{oof_path(cfg, model, k)} changed after ./run.sh tune; rerun ./run.sh tune, then predict")
    return arrays["val_probs"]


def recorded_model(cfg: Config, record: dict) -> Model:
    """The model a fold record describes, rebuilt from the record alone (its kind and the config it trained
    with, with this run's runtime keys and its batch_size when given), whatever today's defaults or variants
    file say."""
    kind = record.get("kind", BUILTINS.get(record["model"]))  # records of earlier versions name built-ins only
    runtime = {key: getattr(cfg, key) for key in RUNTIME_KEYS}
    if cfg.batch_size is not None:  # a smaller batch gets past a GPU out of memory; predictions move in the last bits at most
        runtime["batch_size"] = cfg.batch_size
    return Model(record["model"], kind, REGISTRY[kind], dataclasses.replace(config_from_dict(record["config"]), **runtime))


def _fold_models(cfg: Config, blend: dict, k: int) -> dict[str, tuple[dict, Model]]:
    """(record, model) of the blended models of fold k and of every model they stack on, inputs first."""
    found: dict[str, tuple[dict, Model]] = {}

    def visit(name: str) -> None:
        if name in found:
            return
        record = _verified_record(cfg, blend, name, k)
        model = recorded_model(cfg, record)
        for upstream in model.upstream:
            visit(upstream)
            if found[upstream][0]["features"] != record["provenance"]["upstream"][upstream]:
                raise UserError(f"{name} fold {k} stacks on {upstream} features that were retrained since; "
                                f"rerun ./run.sh train models={name} fold={k}, then ./run.sh tune")
        found[name] = (record, model)

    for name in blend["models"]:
        visit(name)
    return found


def predict(cfg: Config) -> None:
    blend_path = cfg.out / "oof" / "blend.json"
    if not blend_path.exists():
        raise UserError(f"{blend_path} is missing; predict needs a finished ./run.sh train and ./run.sh tune in "
                        f"out_dir={cfg.out_dir}")
    blend = read_json(blend_path)
    if "oof" not in blend.get("provenance", {}):
        raise UserError(f"{blend_path} was written by an older version; rerun ./run.sh tune")
    comp = load_test_only(cfg.data_dir)
    n_folds = blend["n_folds"]
    folds = [_fold_models(cfg, blend, k) for k in range(n_folds)]  # every check before any inference
    from .train import ImageSource

    images = ImageSource(cfg, comp, (comp.test,))
    stores: dict[str, object] = {}
    probs: dict[str, list[np.ndarray]] = {}
    for k, models in enumerate(folds):
        outputs: dict[str, tuple] = {}
        for name, (record, model) in models.items():
            if name not in stores:
                stores[name] = model.spec.store(model, images)
                _check_store(stores[name], record, name)
            job = FoldJob(model.cfg, comp, np.zeros(0, int), k, name, record["provenance"], stores[name])
            outputs[name] = model.spec.infer(job, comp.test, outputs)
            probs.setdefault(name, []).append(np.asarray(outputs[name][0], dtype=np.float32))
        log.info(f"predict fold {k}: {', '.join(models)} applied to {len(comp.test)} rows")
    models = blend["models"]
    tests = {m: np.mean(probs[m], axis=0) for m in models}  # as oof.collect_oof averages the saved test predictions
    if blend["blend"] == "rank":  # the test probabilities on the scale of the OOF the blend was tuned on
        for model in models:
            oof = np.concatenate([_tuned_oof(cfg, blend, model, k) for k in range(n_folds)])
            tests[model] = rank_transform(oof, tests[model])[1]
    weights = np.array([blend["weights"][m] for m in models])
    rows = submission_rows(comp, comp.test["ImageID"].to_numpy(dtype=str),
                           combine(np.stack([tests[m] for m in models]), weights), blend)
    path = prediction_path(cfg, comp)
    write_table(path, ("ImageID", "Labels"), rows)
    log.info(f"predict: wrote {path} ({len(rows)} rows of {cfg.data / 'test.csv'}, {labels_per_image(rows):.2f} labels "
             f"per image); {cfg.out / 'submissions' / 'submission.csv'} is left as submit wrote it")


def prediction_path(cfg: Config, comp) -> Path:
    """submissions/predict-<data_dir's folder>-<the first 8 of test.csv's fingerprint>.csv: named after its input,
    one file per test.csv."""
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(cfg.data_dir).resolve().name) or "data"
    return cfg.out / "submissions" / f"predict-{folder}-{comp.fingerprint[:8]}.csv"
