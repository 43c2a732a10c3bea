"""Atomic writes and provenance-stamped arrays: the only hand-off between stages.

Each array file carries its row ImageIDs and a provenance dict (data fingerprint, folds hash, config
hash), so a later stage can refuse artefacts that were made from other data, folds or settings.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}; choose a writable out_dir=") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err}); rerun the stage that writes it") from None


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def save_arrays(path: Path, meta: dict, **arrays: np.ndarray) -> None:
    """Save arrays plus a JSON meta record in one .npz, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)
            fh.flush()
            os.fsync(fh.fileno())


def load_arrays(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"{path}: missing; rerun the stage that writes it") from None
    except Exception as err:  # a damaged zip, a wrong format: never use it
        raise UserError(f"{path}: unreadable ({type(err).__name__}); delete it and rerun the stage that writes it") from None
    meta = json.loads(str(arrays.pop("__meta__")))
    return meta, arrays


def check_provenance(path: Path, meta: dict, expected: dict, rerun: str) -> None:
    """Refuse an artefact whose recorded provenance differs from what the current run expects."""
    for key, want in expected.items():
        have = meta.get(key)
        if have != want:
            raise UserError(f"{path} is stale: its {key} is {have}, the current one is {want}; rerun {rerun}")
