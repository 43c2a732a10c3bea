"""Loading and checking the competition data: train/test tables, label matrix and data fingerprint."""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import labels as L
from .csvio import TEST_COLUMNS, TRAIN_COLUMNS, read_table
from .errors import UserError


@dataclass
class Competition:
    """Both tables of one data_dir, checked, with the label matrix and a fingerprint of the bytes."""

    data_dir: Path
    train: pd.DataFrame  # ImageID, Labels, Caption
    test: pd.DataFrame  # ImageID, Caption
    y: np.ndarray  # (n_train, 18) uint8
    fingerprint: str
    repaired: dict[str, list[int]]

    @property
    def image_dir(self) -> Path:
        return self.data_dir / "data"


def _is_plain_file_name(image_id: str) -> bool:
    """No folder, '.', '..' or control character: an image is read from data_dir/data/<ImageID> and nowhere else."""
    return image_id not in (".", "..") and not any(c in "/\\" or unicodedata.category(c) == "Cc" for c in image_id)


def _check_ids(table) -> None:
    """Every ImageID present, a plain file name and unique; both loaders call it."""
    seen: dict[str, int] = {}
    for row, line in zip(table.rows, table.line_numbers):
        if not row[0]:
            raise UserError(f"{table.path} line {line}: empty ImageID")
        if not _is_plain_file_name(row[0]):
            raise UserError(f"{table.path} line {line}: ImageID {row[0]!r} is not a plain file name (no folders, '..' "
                            f"or control characters); fix the row to name a file directly in {table.path.parent / 'data'}")
        first = seen.setdefault(row[0], line)
        if first != line:
            raise UserError(f"{table.path} line {line}: duplicate ImageID {row[0]} (first at line {first})")


def load_test_only(data_dir: str | Path) -> Competition:
    """A data_dir's test.csv alone, for scoring a new test set with saved models."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data_dir {data_dir} does not exist; pass data_dir=<folder with test.csv>")
    table = read_table(data_dir / "test.csv", TEST_COLUMNS)
    if not table.rows:
        raise UserError(f"{table.path}: has a header but no rows")
    _check_ids(table)
    test = pd.DataFrame(table.rows, columns=list(TEST_COLUMNS))
    empty = pd.DataFrame(columns=list(TRAIN_COLUMNS))
    return Competition(data_dir, empty, test, np.zeros((0, L.N_LABELS), np.uint8),
                       hashlib.sha256(table.path.read_bytes()).hexdigest()[:16], {"test.csv": table.repaired})


def load_competition(data_dir: str | Path, limit: int = 0) -> Competition:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data_dir {data_dir} does not exist; pass data_dir=<folder with train.csv and test.csv>")
    train_t = read_table(data_dir / "train.csv", TRAIN_COLUMNS)
    test_t = read_table(data_dir / "test.csv", TEST_COLUMNS)
    for table in (train_t, test_t):
        if not table.rows:
            raise UserError(f"{table.path}: has a header but no rows")
        _check_ids(table)
    label_rows = []
    for row, line in zip(train_t.rows, train_t.line_numbers):
        try:
            label_rows.append(L.parse_labels(row[1]))
        except ValueError as err:
            raise UserError(f"{train_t.path} line {line}: {err}") from None
    train_lines = dict(zip((r[0] for r in train_t.rows), train_t.line_numbers))
    for row, line in zip(test_t.rows, test_t.line_numbers):
        if row[0] in train_lines:
            raise UserError(f"{test_t.path} line {line}: ImageID {row[0]} is also in train.csv "
                            f"(line {train_lines[row[0]]}); an image cannot be in both")
    train = pd.DataFrame(train_t.rows, columns=list(TRAIN_COLUMNS))
    test = pd.DataFrame(test_t.rows, columns=list(TEST_COLUMNS))
    y = L.encode(label_rows)
    digest = hashlib.sha256()
    for path in (train_t.path, test_t.path):
        digest.update(path.read_bytes())
    if limit:
        train, y, test = train.iloc[:limit].reset_index(drop=True), y[:limit], test.iloc[:limit].reset_index(drop=True)
        digest.update(f"limit={limit}".encode())
    return Competition(data_dir, train, test, y, digest.hexdigest()[:16],
                       {"train.csv": train_t.repaired, "test.csv": test_t.repaired})
