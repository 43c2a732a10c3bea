"""The label codec: the 18 competition classes in one fixed order, used by every stage."""
from __future__ import annotations

import numpy as np

# COCO category ids used by the competition; 12 ("street sign") does not exist in it.
LABELS: tuple[int, ...] = tuple(i for i in range(1, 20) if i != 12)
N_LABELS = len(LABELS)
NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse",
}
_INDEX = {label: i for i, label in enumerate(LABELS)}


def parse_labels(field: str) -> list[int]:
    """'1 3  8' -> [1, 3, 8]; raises ValueError naming the first bad token."""
    tokens = field.split()
    if not tokens:
        raise ValueError("empty label field")
    out = []
    for tok in tokens:
        if not (tok.isascii() and tok.isdigit()) or int(tok) not in _INDEX:  # '²'.isdigit() but int('²') fails
            raise ValueError(f"label '{tok}' is not one of {' '.join(map(str, LABELS))}")
        out.append(int(tok))
    return out


def encode(rows: list[list[int]]) -> np.ndarray:
    """Lists of label ids -> (N, 18) uint8 indicator matrix."""
    y = np.zeros((len(rows), N_LABELS), dtype=np.uint8)
    for r, labels in enumerate(rows):
        y[r, [_INDEX[label] for label in labels]] = 1
    return y


def decode(y: np.ndarray) -> list[str]:
    """(N, 18) indicator matrix -> 'space separated label ids' per row, in label order."""
    ids = np.asarray(LABELS)
    return [" ".join(map(str, ids[row.astype(bool)])) for row in np.asarray(y)]
