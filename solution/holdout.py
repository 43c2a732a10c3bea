"""`holdout`: checks that the nested-CV estimate predicts an unseen test set's score.

It sets aside a stratified share of train.csv as a labelled test set, runs the whole pipeline on the
rest, scores the submission against the held-back labels and prints that beside the nested estimate.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from . import log
from .artefacts import read_json, write_json
from .config import Config
from .csvio import TEST_COLUMNS, TRAIN_COLUMNS, read_table, write_table
from .data import Competition, load_competition
from .labels import encode, parse_labels
from .metric import samples_f1_binary


def run_holdout(cfg: Config, comp: Competition, run_all) -> dict:
    folder = cfg.out / "holdout"
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=cfg.holdout_fraction, random_state=cfg.seed)
    keep, held = next(splitter.split(np.zeros(len(comp.y)), comp.y))
    keep, held = np.sort(keep), np.sort(held)
    table = [tuple(r) for r in comp.train.itertuples(index=False)]
    write_table(folder / "data" / "train.csv", TRAIN_COLUMNS, [table[i] for i in keep])
    write_table(folder / "data" / "test.csv", TEST_COLUMNS, [(table[i][0], table[i][2]) for i in held])
    if (comp.image_dir).is_dir():
        link = folder / "data" / "data"
        if not link.exists():
            link.symlink_to(comp.image_dir.resolve(), target_is_directory=True)
    inner = dataclasses.replace(cfg, data_dir=str(folder / "data"), out_dir=str(folder / "run"))
    log.info(f"holdout: {len(keep)} rows train, {len(held)} held-back rows scored as a test set; outputs in {folder}")
    run_all(inner, load_competition(inner.data_dir))
    sub = read_table(inner.out / "submissions" / "submission.csv", ("ImageID", "Labels"))
    pred = encode([parse_labels(labels) for _, labels in sub.rows]).astype(bool)
    truth = comp.y[held].astype(bool)
    score = samples_f1_binary(truth, pred)
    blend = read_json(inner.out / "oof" / "blend.json")["f1"]
    result = {"held_back_rows": int(len(held)), "held_back_samples_f1": score,
              "nested_estimate": blend["samples_f1_nested"], "in_sample_tuned": blend["samples_f1_tuned"],
              "gap_nested_minus_held_back": blend["samples_f1_nested"] - score}
    write_json(folder / "result.json", result)
    log.info(f"holdout: held-back samples-F1 {score:.4f}; nested estimate {blend['samples_f1_nested']:.4f} "
             f"(gap {result['gap_nested_minus_held_back']:+.4f}); in-sample tuned {blend['samples_f1_tuned']:.4f}")
    return result
