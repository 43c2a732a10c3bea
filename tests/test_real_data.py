"""The published competition files parse exactly (skipped where ../shared/data is not mounted)."""
from __future__ import annotations

from solution.csvio import TEST_COLUMNS, TRAIN_COLUMNS, read_table
from solution.data import load_competition

BROKEN_TRAIN = b'99999.jpg,1 13,"Stop sign with added war" annotation at an intersection."\r\n'


def test_real_files_parse_to_the_published_row_counts(real_data):
    comp = load_competition(real_data)
    assert len(comp.train) == 23_988 and len(comp.test) == 10_000
    assert comp.y.shape == (23_988, 18) and comp.y.sum(axis=1).min() >= 1
    assert comp.train["ImageID"].is_unique and comp.test["ImageID"].is_unique
    # bare carriage returns inside quoted captions stay inside their caption, rows are never merged
    assert comp.train["Caption"].str.contains("\r", regex=False).sum() >= 1
    assert comp.train["ImageID"].str.fullmatch(r"\d+\.jpg").all()
    assert comp.test["ImageID"].str.fullmatch(r"\d+\.jpg").all()


def test_real_test_csv_keeps_the_doubled_quote_caption(real_data):
    table = read_table(real_data / "test.csv", TEST_COLUMNS)
    captions = dict(table.rows)
    assert captions["36889.jpg"] == 'Stop sign with added war" annotation at an intersection."'


def test_real_train_with_a_broken_quote_row_inserted(real_data, tmp_path):
    lines = (real_data / "train.csv").read_bytes().split(b"\n")
    middle = len(lines) // 2
    copy = tmp_path / "train.csv"
    copy.write_bytes(b"\n".join(lines[:middle] + [BROKEN_TRAIN.rstrip(b"\n")] + lines[middle:]))
    original = read_table(real_data / "train.csv", TRAIN_COLUMNS)
    table = read_table(copy, TRAIN_COLUMNS)
    assert len(table.rows) == 23_989
    at = middle - 1  # row index of the inserted line (line 1 is the header)
    assert table.rows[at] == ("99999.jpg", "1 13", 'Stop sign with added war" annotation at an intersection.')
    assert table.rows[:at] == original.rows[:at]
    assert table.rows[at + 1:] == original.rows[at:]
    assert table.repaired == original.repaired + [middle + 1]
