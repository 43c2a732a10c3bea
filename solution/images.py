"""Image decoding (any mode, EXIF orientation) and the resized uint8 cache that makes epochs cheap.

The cache holds every image once, shorter side = round(1.15 x image.size), as raw RGB bytes in one
append-only file plus an index keyed by the source path, size and mtime: a changed image or a new
size is decoded again, never served stale, and an interrupted build resumes where it stopped.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from . import log
from .artefacts import atomic_path
from .cache import ArrayCache
from .errors import UserError

CACHE_SCALE = 1.15
BATCH_BYTES = 128 << 20  # decoded bytes appended per lock: bounds memory, lets other writers in between
SAMPLE = 256  # image headers read to estimate the cache's size before filling it
INDEX_ENTRY_BYTES = 64  # an index entry beside its key: offset, height, width, "size-mtime" signature, JSON marks


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, CMYK, RGBA, LA, I;16, F) to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # A fixed scale (16-bit -> 8-bit), not the image's own maximum: a dark image must stay dark.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        hi = 255.0 if img.mode in ("I", "F") and arr.max() <= 255 else 65535.0
        hi = max(hi, float(arr.max()))  # wider-range I/F images: their maximum maps to white
        img = Image.fromarray((arr * (255.0 / hi)).round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_rgb(path: Path, shorter_side: int | None = None) -> np.ndarray:
    """Decode to an RGB uint8 array, optionally resized so the shorter side is `shorter_side`."""
    with Image.open(path) as img:
        if shorter_side and img.format == "JPEG":
            img.draft("RGB", (shorter_side, shorter_side))  # lets libjpeg decode big files at reduced scale
        img = to_rgb(img)
        img.load()
    if shorter_side:
        img = img.resize(resized(*img.size, shorter_side), Image.BILINEAR)
    return np.asarray(img)


def resized(w: int, h: int, shorter_side: int) -> tuple[int, int]:
    """(width, height) of a w x h image scaled so that its shorter side is `shorter_side`."""
    scale = shorter_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def signature(path: Path) -> str:
    """What a cached array of this file was computed from: its size and modification time ("missing" when it is
    not there), so a changed file is computed again, never served stale."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}-{st.st_mtime_ns}"


def _decode_job(args):
    path, side = args
    try:
        return load_rgb(Path(path), side), None
    except Exception as err:  # any decoder failure is reported by file, never raised in a worker
        return None, f"{type(err).__name__}: {err}"


@dataclass
class BadImage:
    path: Path
    reason: str


CACHE_PREFIX = "images_"  # the cache of image.size s is cache/images_<s>.json and .bin (solution/cache.py)


def cached_sides(cache_dir: Path) -> list[int]:
    """The image sizes that have a cache in cache_dir, smallest first (other files there are not caches)."""
    stems = (p.stem[len(CACHE_PREFIX):] for p in cache_dir.glob(f"{CACHE_PREFIX}*.json"))
    return sorted(int(stem) for stem in stems if stem.isdigit())


class ImageStore:
    """Serves images by path: from the cache when enabled, else decoded from the source file.

    Any number of processes may fill one cache at once (folds split over runs sharing out_dir, DDP ranks):
    they decode in parallel and append batch by batch under an exclusive lock on images_<size>.lock.
    """

    def __init__(self, cache_dir: Path | None, side: int):
        self.side = side
        self.blank: set[str] = set()  # images skipped under on_bad_image=skip, served as mid-grey
        self._keys: dict[str, str] = {}  # path as given -> index key: resolve() once per spelling, not per read
        self._missed = False
        # resolved source path -> [offset, h, w, signature] of an RGB image, shorter side round(1.15 x side)
        self.cache = ArrayCache(cache_dir, f"{CACHE_PREFIX}{side}", np.uint8, tail=(3,), fix="pass image.cache=false") \
            if cache_dir is not None else None

    def _key(self, path: Path) -> str:
        spelling = str(path)
        key = self._keys.get(spelling)
        if key is None:  # two spellings of one file resolve to one key, so one cache entry
            key = self._keys[spelling] = str(Path(path).resolve())
        return key

    def prepare(self, paths: list[Path], workers: int, skip_bad: bool) -> list[BadImage]:
        """Pre-flight: check every image exists and decodes, filling the cache on the way."""
        bad, todo = [], {}
        for p in paths:
            if not p.is_file():
                bad.append(BadImage(p, "file not found"))
                continue
            key, sig = self._key(p), signature(p)  # taken before decoding: a later change is seen next run
            if key not in todo and (self.cache is None or not self.cache.cached(key, sig)):
                todo[key] = (p, sig)
        if todo and self.cache is not None:
            self._check_room([p for p, _ in todo.values()], list(todo))
        if todo:
            side = None if self.cache is None else round(CACHE_SCALE * self.side)
            label = "caching images" if self.cache is not None else "checking images"
            jobs = [(str(p), side) for p, _ in todo.values()]
            chunk = max(1, min(64, len(jobs) // (4 * max(workers, 1)) or 1))
            pool = ProcessPoolExecutor(workers) if workers > 1 else None
            results = (map(_decode_job, jobs) if pool is None else pool.map(_decode_job, jobs, chunksize=chunk))
            batch, batch_bytes = [], 0
            try:
                progress = tqdm(zip(todo.items(), results), total=len(jobs), desc=label, unit="img", dynamic_ncols=True,
                                disable=log.bars_off())
                for (key, (path, sig)), (arr, err) in progress:
                    if err is not None:
                        bad.append(BadImage(path, err))
                    elif self.cache is not None:
                        batch.append((key, sig, arr))
                        batch_bytes += arr.nbytes
                        if batch_bytes >= BATCH_BYTES:
                            full, batch, batch_bytes = batch, [], 0  # emptied first: a failed append is not retried
                            self.cache.append(full)
            finally:  # an interrupted build keeps what it decoded, and resumes there
                if batch:
                    self.cache.append(batch)
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
        if bad and not skip_bad:
            first = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"{first.path}: {first.reason}{more}; fix or remove it, or pass on_bad_image=skip")
        self.blank = {self._key(b.path) for b in bad}
        return bad

    def _check_room(self, paths: list[Path], keys: list[str]) -> None:
        """Refuse at once, not an hour into the fill, when the images to cache cannot fit on out_dir's disk."""
        needed = self.cache_bytes(paths, keys)
        folder = next(p for p in (self.cache.folder, *self.cache.folder.parents) if p.exists())
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise UserError(f"image cache: {len(paths)} images at image.size={self.side} need about {_size(needed)} in "
                            f"{self.cache.folder}, but only {_size(free)} is free there; pass image.cache=false (decode "
                            "every image every epoch: slower), a smaller image.size, or out_dir= on a disk with more room")

    def cache_bytes(self, paths: list[Path], keys: list[str]) -> int:
        """About how many bytes caching `paths` (index keys `keys`) adds to the disk at its fullest.

        Each image's cached shape comes from its header (PIL reads it without decoding) for up to SAMPLE
        images spread over the list, scaled to all of them (without any header, the images are taken as
        squares); the index counts twice, since the old one stays until the new one replaces it."""
        side = round(CACHE_SCALE * self.side)
        shapes, step = [], -(-len(paths) // SAMPLE)  # ceil: at most SAMPLE headers
        for path in paths[::step]:
            try:
                with Image.open(path) as img:
                    shapes.append(resized(*img.size, side))
            except Exception:  # an unreadable image is reported by the decode that follows
                continue
        pixels = np.mean([w * h for w, h in shapes]) if shapes else side * side
        entry = np.mean([len(k) for k in keys]) + INDEX_ENTRY_BYTES
        return int(len(paths) * (3 * pixels + 2 * entry) + len(self.cache.index) * entry)

    def get(self, path: Path) -> np.ndarray:
        key = self._key(path)
        if key in self.blank:
            side = round(CACHE_SCALE * self.side)
            return np.full((side, side, 3), 128, dtype=np.uint8)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is None:
            if self.cache is not None and not self._missed:
                self._missed = True
                log.warn(f"image cache: {path} is not in {self.cache.index_path}; decoding source files instead, the "
                         "slow path (later misses are not logged); rerun the train stage to fill the cache")
            return load_rgb(path, round(CACHE_SCALE * self.side))
        return cached


def report_skipped(bad: list[BadImage], log_path: Path) -> None:
    if not bad:
        return
    log.warn(f"on_bad_image=skip: {len(bad)} image(s) replaced by a blank image; listed in {log_path}")
    for b in bad[:10]:
        log.warn(f"  skipped {b.path}: {b.reason}")
    with atomic_path(log_path) as tmp:
        tmp.write_text("".join(f"{b.path}\t{b.reason}\n" for b in bad))
