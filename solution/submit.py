"""Stage 4: submissions/submission.csv from the tuned blend, validated before it is written."""
from __future__ import annotations

import time

import numpy as np

from . import log
from .artefacts import check_provenance, load_arrays, read_json
from .config import Config
from .csvio import write_table
from .data import Competition
from .errors import UserError
from .labels import LABELS, decode
from .oof import collect_oof
from .tune import Tuned, blend_models, check_blend_fresh


def load_blend(cfg: Config, comp: Competition) -> tuple[dict, dict]:
    path = cfg.out / "oof" / "blend.json"
    if not path.exists():
        raise UserError(f"{path} is missing; run ./run.sh tune first")
    for model in blend_models(cfg):  # names the first missing or stale fold, if any
        collect_oof(cfg, comp, model)
    record = read_json(path)
    if record["models"] != blend_models(cfg):
        raise UserError(f"{path} blends {','.join(record['models'])}, this run selects "
                        f"{','.join(blend_models(cfg))}; rerun ./run.sh tune with the same models=")
    check_blend_fresh(cfg, comp, record)
    meta, arrays = load_arrays(cfg.out / "oof" / "blend.npz")
    check_provenance(cfg.out / "oof" / "blend.npz", meta, record["provenance"], "./run.sh tune")
    return record, arrays


def submission_rows(comp: Competition, test_ids: np.ndarray, probs: np.ndarray, record: dict) -> list[tuple[str, str]]:
    """(ImageID, labels) in test.csv's order, validated: the same rows, at least one known label each."""
    expected = comp.test["ImageID"].to_numpy(dtype=str)
    if len(test_ids) != len(expected) or not np.array_equal(test_ids, expected):
        raise UserError("test predictions do not match test.csv row for row; rerun ./run.sh tune")
    labels = decode(Tuned.from_record(record).label_sets(probs, record["decision"]))
    allowed = set(map(str, LABELS))
    for image_id, text in zip(expected, labels):
        if not text or not set(text.split()) <= allowed:
            raise UserError(f"submission row {image_id} has labels '{text}'; refusing to write it")
    return list(zip(expected, labels))


def labels_per_image(rows: list[tuple[str, str]]) -> float:
    return float(np.mean([len(labels.split()) for _, labels in rows]))


def write_submission(cfg: Config, comp: Competition, test_ids: np.ndarray, probs: np.ndarray, record: dict) -> None:
    """Validate and write submission.csv plus a stamped copy."""
    rows = submission_rows(comp, test_ids, probs, record)
    out = cfg.out / "submissions"
    write_table(out / "submission.csv", ("ImageID", "Labels"), rows)
    stamp = f"submission-{time.strftime('%Y%m%d-%H%M%S')}-{cfg.full_hash()}.csv"
    write_table(out / stamp, ("ImageID", "Labels"), rows)
    log.info(f"submit: wrote {out / 'submission.csv'} ({len(rows)} rows, {labels_per_image(rows):.2f} labels per image; "
             f"copy {stamp}); expected leaderboard samples-F1 (nested CV) {record['f1']['samples_f1_nested']:.4f}")


def submit(cfg: Config, comp: Competition) -> None:
    record, arrays = load_blend(cfg, comp)
    write_submission(cfg, comp, arrays["test_ids"], arrays["test"], record)
