"""Atomic writes and provenance-stamped arrays: the only hand-off between stages.

Each array file carries its row ImageIDs, a provenance dict (data fingerprint, folds hash, config
hash) and the hash of its own arrays, so a later stage can refuse artefacts that were made from other
data, folds or settings, and a stage that stacks on another can name exactly which arrays it read.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError, machine_error


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path next to `path`; rename it onto `path` only if the block succeeds.

    The block writes that one file, so an OSError in it (a full disk, a quota, a read-only file system) is
    the write failing: it becomes one line naming `path`, and the temp file is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as err:
        raise machine_error(path, err) from None


def remove_temps(folder: Path) -> None:
    """Delete what a killed writer left of atomic_path's temp files (.NAME.*.tmp) in `folder`. Only for a folder
    one job owns (a fold's staging folder): in a shared one, another process's live temp file looks the same."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def write_all(fd: int, data) -> int:
    """Write every byte of `data` to `fd` or raise the system's error: os.write may write only part (a disk
    filling up takes what fits), and a caller that trusts the count it asked for misplaces what follows."""
    view = memoryview(data).cast("B")
    size = len(view)
    while view:
        view = view[os.write(fd, view):]
    return size


class _WholeWrites(io.FileIO):
    """An unbuffered file whose write() writes all or raises, remembering the first error: libraries that
    wrap a failed write in their own exception (torch.save: a RuntimeError about zip positions) hide it."""

    error: OSError | None = None

    def write(self, data) -> int:
        try:
            return write_all(self.fileno(), data)
        except OSError as err:
            self.error = self.error or err
            raise


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file that becomes `path` only when the block succeeds and its bytes are on disk (fsync); a
    failed write ends in one line with the system's reason, whatever exception the writing library raised."""
    with atomic_path(path) as tmp, _WholeWrites(tmp, "w") as fh:
        try:
            yield fh
        except Exception:
            if fh.error is not None:
                raise fh.error from None
            raise
        os.fsync(fh.fileno())


def replace_dir(new: Path, old: Path) -> None:
    """Put folder `new` in the place of folder `old` (which may not exist) by two renames; the folder it
    replaces is deleted last. Only a kill between the renames leaves neither, and old.name + ".old" beside."""
    trash = old.with_name(old.name + ".old")
    shutil.rmtree(trash, ignore_errors=True)
    try:
        if old.exists():
            os.replace(old, trash)
        try:
            os.replace(new, old)
        except OSError:
            with contextlib.suppress(OSError):
                os.replace(trash, old)  # put the old folder back
            raise
    except OSError as err:
        raise machine_error(old, err, verb="cannot replace") from None
    shutil.rmtree(trash, ignore_errors=True)


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


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays' names, dtypes, shapes and bytes: the identity of what a file holds."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:16]


def save_arrays(path: Path, meta: dict, **arrays: np.ndarray) -> str:
    """Save arrays plus a JSON meta record (with the arrays' content hash) in one .npz, atomically; returns the hash."""
    content = content_hash(arrays)
    with atomic_file(path) as fh:
        np.savez(fh, __meta__=np.array(json.dumps({**meta, "content": content})), **arrays)
    return content


def _open_error(path: Path, err: Exception) -> UserError:
    if isinstance(err, FileNotFoundError):
        return UserError(f"{path}: missing; rerun the stage that writes it")
    return UserError(f"{path}: unreadable ({type(err).__name__}); delete it and rerun the stage that writes it")


def load_arrays(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a save_arrays file; a damaged file or one whose arrays no longer match their hash is refused."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except Exception as err:  # missing, a damaged zip, a wrong format: never use it
        raise _open_error(path, err) from None
    if "content" in meta and meta["content"] != content_hash(arrays):
        raise UserError(f"{path}: its arrays do not match the hash recorded when it was written (damaged or edited); "
                        "delete it and rerun the stage that writes it")
    return meta, arrays


def read_meta(path: Path) -> dict:
    """The meta record of a save_arrays file alone (the arrays stay on disk): cheap provenance checks."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["__meta__"]))
    except Exception as err:
        raise _open_error(path, err) from None


def check_provenance(path: Path, meta: dict, expected: dict, rerun: str) -> None:
    """Refuse an artefact whose recorded provenance differs from what the current run expects."""
    for key, want in expected.items():
        have = meta.get(key)
        if have != want:
            raise UserError(f"{path} is stale: its {key} is {have}, the current one is {want}; rerun {rerun}")
