"""The one CSV reader and writer for the competition files.

The published files are CRLF with quoted captions, doubled quotes and bare carriage returns inside
quotes, and the Kaggle download has a caption with an unescaped quote. A generic CSV parser merges
rows on that quote, so here each physical line (ended by LF or CRLF, never a bare CR) is one record,
split only at its first one (test) or two (train) commas; the rest of the line is the caption.
The one exception is valid CSV with a line break inside a quoted caption (as pandas writes it): a
caption whose quote is still open at the end of its line takes the following lines up to the one
that closes the quote at its very end, unless a line before that cannot be inside a caption.
"""
from __future__ import annotations

import re
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
    line_numbers: list[int]  # 1-based (first) line of each row in the file, for error messages
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


def _closing_quote(text: str, start: int = 0) -> int:
    """Index of the quote that ends a quoted field read from `start` inside it ('""' is a quote character,
    not the end), or -1 when the field goes on past the end of `text`."""
    at = text.find('"', start)
    while at >= 0 and text.startswith('""', at):
        at = text.find('"', at + 2)
    return at


def _record_span(lines: list[str], start: int, n_split: int) -> int:
    """How many physical lines the record starting at lines[start] spans (lines still end in their CR)."""
    parts = lines[start].removesuffix("\r").split(",", n_split)
    if len(parts) <= n_split or not parts[-1].startswith('"') or _closing_quote(parts[-1], 1) >= 0:
        return 1
    for end in range(start + 1, len(lines)):
        line = lines[end].removesuffix("\r")
        close = _closing_quote(line)
        if 0 <= close == len(line) - 1:
            return end - start + 1
        first = line.split(",", n_split)
        if close >= 0 or (len(first) > n_split and re.fullmatch(r'[^\s"]+', first[0])):
            break  # a quote closed mid-line, or the next record's ImageID: not a caption's line break
    return 1  # never closed: the broken-quote rule, one line is one record (repaired)


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
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{path} line {number}: byte 0x{line[err.start]:02x} at column {err.start + 1} is not UTF-8; "
                            "re-save the file as UTF-8") from None
    first_line = decoded[0].removesuffix("\r")
    header = tuple(h.strip().strip('"') for h in first_line.split(","))
    if header != columns:
        raise UserError(f"{path} line 1: header is '{first_line[:60]}'; expected '{','.join(columns)}'")
    n_split = len(columns) - 1
    rows, numbers, repaired = [], [], []
    start = 1
    while start < len(decoded):
        span = _record_span(decoded, start, n_split)
        record = "\n".join(decoded[start:start + span]).removesuffix("\r")  # a CRLF inside quotes stays CRLF
        number, start = start + 1, start + span
        if not record.strip():
            continue  # a blank line is not a record
        parts = record.split(",", n_split)
        if len(parts) != len(columns):
            raise UserError(f"{path} line {number}: expected {len(columns)} fields ({','.join(columns)}), "
                            f"found {len(parts)}: '{record[:60]}'")
        caption, fixed = _unquote(parts[-1])
        if fixed:
            repaired.append(number)
        rows.append(tuple(p.strip() for p in parts[:-1]) + (caption,))
        numbers.append(number)
    return CsvTable(path, columns, rows, numbers, repaired)


def _quote(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_table(path: Path, columns: tuple[str, ...], rows: list[tuple[str, ...]], line_end: str = "\n") -> None:
    """Write a CSV atomically (temp file then rename), quoting only fields that need it."""
    from .artefacts import atomic_file

    text = line_end.join([",".join(columns)] + [",".join(_quote(str(v)) for v in row) for row in rows]) + line_end
    with atomic_file(path) as fh:
        fh.write(text.encode("utf-8"))
