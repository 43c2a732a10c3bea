"""What one (model, fold) job is given (the config, the data, its row split, where to put checkpoints) and what
it gives back."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from .config import Config
from .data import Competition


def checkpoint_dir(cfg: Config, model: str, k: int) -> Path:
    """Fold k's finished checkpoints and record: what predict loads."""
    return cfg.out / "checkpoints" / model / f"fold{k}"


def staging_dir(cfg: Config, model: str, k: int) -> Path:
    """Where fold k trains until it is finished and replaces checkpoint_dir: a retrain (force=true, changed
    settings) leaves the finished fold usable until then, and a killed one resumes from its last.pt here."""
    return checkpoint_dir(cfg, model, k).with_name(f"fold{k}.partial")


@dataclass
class FoldOutput:
    val_probs: np.ndarray  # (n_val, 18), rows of fold k in train.csv order
    test_probs: np.ndarray  # (n_test, 18), test.csv order
    best_f1: float  # early-stopping set samples-F1 at 0.5 (NaN for models without early stopping)
    best_epoch: int
    features: dict[str, np.ndarray] | None = None  # "train", "val", "test" pooled features, for stacking
    history: list = field(default_factory=list)


@dataclass
class FoldJob:
    cfg: Config  # the model's own config (the run's with its variant settings on top)
    comp: Competition
    fold_of_row: np.ndarray
    k: int
    model: str
    provenance: dict  # data / folds / config hashes stamped on everything this job writes
    store: object = None  # what the model's folds read: an ImageStore, embeddings (ModelSpec.store)
    run_cfg: Config | None = None  # the run's config, which every other model is resolved from (stacks need it)
    training: bool = False  # checkpoints go to the staging folder; else they are read from the finished one

    @property
    def base(self) -> Config:
        return self.run_cfg if self.run_cfg is not None else self.cfg

    @property
    def ckpt_dir(self) -> Path:
        return (staging_dir if self.training else checkpoint_dir)(self.cfg, self.model, self.k)

    @property
    def label(self) -> str:
        return f"{self.model} fold {self.k}"

    @cached_property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(self.fold_of_row != self.k)

    @cached_property
    def val_idx(self) -> np.ndarray:
        return np.flatnonzero(self.fold_of_row == self.k)

    @cached_property
    def _inner_split(self) -> tuple[np.ndarray, np.ndarray]:
        """Fit rows and early-stopping rows, both inside the training folds, so fold k stays unseen.

        With stop_fraction=0 early stopping watches fold k itself (the seed's way), which makes the
        OOF score slightly optimistic; the report says which was used.
        """
        frac = self.cfg.stop_fraction
        if frac <= 0:
            return self.train_idx, self.val_idx
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=frac, random_state=self.cfg.seed + self.k)
        fit, stop = next(splitter.split(np.zeros(len(self.train_idx)), self.comp.y[self.train_idx]))
        return self.train_idx[np.sort(fit)], self.train_idx[np.sort(stop)]

    @property
    def fit_idx(self) -> np.ndarray:
        return self._inner_split[0]

    @property
    def stop_idx(self) -> np.ndarray:
        return self._inner_split[1]
