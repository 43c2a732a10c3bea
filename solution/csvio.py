"""The one CSV reader and writer for the competition files.

The published files are CRLF with quoted captions, doubled quotes and bare carriage returns inside
quotes, and the Kaggle download has a caption with an unescaped quote. A generic CSV parser merges
rows on that quote, so here each physical line (ended by LF or CRLF, never a bare CR) is one record,
split only at its first one (test) or two (train) commas; the rest of the line is the caption.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

TRAIN_COLUMNS = ("ImageID", "Labels", "Caption")
TEST_COLUMNS = ("ImageID", "Caption")


@dataclass
class CsvTable:
    path: Path
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    line_numbers: list[int]  # 1-based line of each row in the file, for error messages
    repaired: list[int] = field(default_factory=list)  # lines whose caption quoting was not valid CSV


def _unquote(text: str) -> tuple[str, bool]:
    """Decode a caption field; returns (caption, needed_repair)."""
    if not text.startswith('"'):
        return text, False
    if len(text) >= 2 and text.endswith('"'):
        inner = text[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"'), False
        return inner.replace('""', '"'), True  # a lone quote inside: keep it as written
    return text[1:].replace('""', '"'), True  # opened but never closed


def read_table(path: Path, columns: tuple[str, ...]) -> CsvTable:
    """Read one competition CSV with the given header; every problem is a UserError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; data_dir must hold train.csv and test.csv")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file's final line end
    if not lines:
        raise UserError(f"{path}: file is empty; expected a header {','.join(columns)}")
    decoded = []
    for number, line in enumerate(lines, start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{path} line {number}: byte 0x{line[err.start]:02x} at column {err.start + 1} is not UTF-8; "
                            "re-save the file as UTF-8") from None
    header = tuple(h.strip().strip('"') for h in decoded[0].split(","))
    if header != columns:
        raise UserError(f"{path} line 1: header is '{decoded[0][:60]}'; expected '{','.join(columns)}'")
    n_split = len(columns) - 1
    rows, numbers, repaired = [], [], []
    for number, line in enumerate(decoded[1:], start=2):
        if not line.strip():
            continue  # a blank line is not a record
        parts = line.split(",", n_split)
        if len(parts) != len(columns):
            raise UserError(f"{path} line {number}: expected {len(columns)} fields ({','.join(columns)}), "
                            f"found {len(parts)}: '{line[:60]}'")
        caption, fixed = _unquote(parts[-1])
        if fixed:
            repaired.append(number)
        rows.append(tuple(p.strip() for p in parts[:-1]) + (caption,))
        numbers.append(number)
    records = sum(1 for line in decoded[1:] if line.strip())
    if len(rows) != records:  # guards the one-line-one-record contract against future edits
        raise UserError(f"{path}: parsed {len(rows)} rows from {records} records")
    return CsvTable(path, columns, rows, numbers, repaired)


def _quote(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_table(path: Path, columns: tuple[str, ...], rows: list[tuple[str, ...]], line_end: str = "\n") -> None:
    """Write a CSV atomically (temp file then rename), quoting only fields that need it."""
    from .artefacts import atomic_path

    text = line_end.join([",".join(columns)] + [",".join(_quote(str(v)) for v in row) for row in rows]) + line_end
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
