"""Arrays by key in one append-only file plus an index, shared by any number of processes at once.

The resized-image cache (images.ImageStore) and the frozen-backbone embeddings (models/embed.py) both keep
one array per image, computed once and read by every later run, fold and process. Writers append batch by
batch under an exclusive lock on <stem>.lock: under the lock the index is read again (entries other processes
published meanwhile are kept, and their keys not written twice), offsets come from the real end of the file,
and the new entries are published (the index replaced atomically) only after their bytes are synced. So a
reader never sees an entry without its bytes, a killed writer costs only its unpublished batch, and a damaged
index is rebuilt by computing again, never misread.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from pathlib import Path

import numpy as np

from . import log
from .artefacts import write_all, write_json
from .errors import UserError, machine_error


class ArrayCache:
    """`stem`.bin (the arrays' bytes) and `stem`.json (key -> [offset, *shape, signature]) in `folder`.

    Every array has dtype `dtype` and a shape that ends in `tail` (an image: (h, w) + (3,)); an entry records
    the rest of its shape. `signature` says what the array was computed from (a source file's size and time):
    an entry whose signature differs is computed again, never served stale.
    """

    def __init__(self, folder: Path, stem: str, dtype, tail: tuple = (), fix: str = ""):
        """fix: what to pass when the folder's file system has no locks (one line, naming the lock file)."""
        self.folder, self.dtype, self.tail, self.fix = Path(folder), np.dtype(dtype), tuple(tail), fix
        self.bin_path = self.folder / f"{stem}.bin"
        self.index_path = self.folder / f"{stem}.json"
        self.lock_path = self.folder / f"{stem}.lock"
        self.index: dict[str, list] = self._read_index()
        self._mm = None

    def __getstate__(self):  # DataLoader workers reopen the memmap themselves
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    def _nbytes(self, entry: list) -> int:
        return math.prod(entry[1:-1]) * math.prod(self.tail) * self.dtype.itemsize

    def _read_index(self) -> dict[str, list]:
        """The published index, less entries whose bytes are not all in the data file (an interrupted write)."""
        try:
            index = json.loads(self.index_path.read_text())
            size = self.bin_path.stat().st_size  # read after the index: bytes are on disk before their entry
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):  # damaged by hand or by a disk: compute everything again
            log.warn(f"cache: {self.index_path} is unreadable; its arrays are computed again")
            return {}
        return {k: v for k, v in index.items() if v[0] + self._nbytes(v) <= size}

    def cached(self, key: str, signature: str) -> bool:
        entry = self.index.get(key)
        return entry is not None and entry[-1] == signature

    def append(self, batch: list[tuple[str, str, np.ndarray]]) -> None:
        """Append (key, signature, array) items and publish them under the lock; keys another process cached
        meanwhile are skipped. A failed write (a full disk) cuts the file back to where this batch began, giving
        the space back, publishes nothing, and ends in one line; the next run computes the batch again."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.lock_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
                except OSError as err:
                    raise UserError(f"cannot lock {self.lock_path} ({err.strerror}); put out_dir on a file system "
                                    f"with file locks{', or ' + self.fix if self.fix else ''}") from None
                self.index = self._read_index()
                index = dict(self.index)
                with open(self.bin_path, "ab", buffering=0) as fh:
                    start = end = fh.seek(0, os.SEEK_END)
                    try:
                        for key, signature, arr in batch:
                            if not self.cached(key, signature):
                                arr = np.ascontiguousarray(arr, dtype=self.dtype)
                                index[key] = [end, *arr.shape[:arr.ndim - len(self.tail)], signature]
                                end += write_all(fh.fileno(), arr)
                        os.fsync(fh.fileno())
                        write_json(self.index_path, index, indent=None)  # compact: 3x faster to write for 34k entries
                    except BaseException:
                        with contextlib.suppress(OSError):
                            fh.truncate(start)
                        raise
                self.index = index
        except OSError as err:
            raise machine_error(err.filename or self.bin_path, err) from None
        self._mm = None

    def get(self, key: str) -> np.ndarray | None:
        """The array of `key` (a view of the file), or None when it is not cached."""
        entry = self.index.get(key)
        if entry is None:
            return None
        if self._mm is None:
            self._mm = np.memmap(self.bin_path, dtype=np.uint8, mode="r")
        offset = entry[0]
        raw = np.asarray(self._mm[offset:offset + self._nbytes(entry)])
        return raw.view(self.dtype).reshape(*entry[1:-1], *self.tail)
