"""The label codec: the 18 competition ids in one order, parse/encode/decode."""
from __future__ import annotations

import numpy as np
import pytest

from solution.labels import LABELS, N_LABELS, NAMES, decode, encode, parse_labels


def test_the_18_labels_in_order():
    assert LABELS == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19)
    assert N_LABELS == 18 and 12 not in LABELS
    assert set(NAMES) == set(LABELS) and NAMES[1] == "person" and NAMES[13] == "stop sign"


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    rows = [sorted(rng.choice(LABELS, size=int(rng.integers(1, 6)), replace=False).tolist()) for _ in range(200)]
    rows += [[19], [1], list(LABELS)]
    y = encode(rows)
    assert y.shape == (len(rows), 18) and y.dtype == np.uint8
    assert decode(y) == [" ".join(map(str, r)) for r in rows]
    assert [parse_labels(t) for t in decode(y)] == rows


def test_encode_puts_each_label_in_its_column():
    y = encode([[13], [1, 19]])
    assert np.flatnonzero(y[0]).tolist() == [LABELS.index(13)] == [11]
    assert np.flatnonzero(y[1]).tolist() == [0, 17]


def test_decode_is_in_label_order_and_empty_for_an_all_zero_row():
    y = np.zeros((2, 18), np.uint8)
    y[0, [17, 0, 11]] = 1
    assert decode(y) == ["1 13 19", ""]
    assert decode(y.astype(bool)) == ["1 13 19", ""]


@pytest.mark.parametrize("text,want", [("1  3", [1, 3]), (" 19 ", [19]), ("8 3 11 13", [8, 3, 11, 13]),
                                       ("1\t2", [1, 2])])
def test_parse_labels_accepts(text, want):
    assert parse_labels(text) == want


@pytest.mark.parametrize("text", ["", "   ", "12", "20", "0", "-1", "1.0", "a", "1 12", "²"])
def test_parse_labels_refuses(text):
    with pytest.raises(ValueError, match="empty label field" if not text.strip() else "is not one of 1 2 3"):
        parse_labels(text)
